"""The one place where errors become RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flask import Flask, Response, current_app, json, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import HTTPException

from shared.errors import RateLimited, ServiceError, ServiceUnavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A problem+json response; ``body`` holds at least status, code and title."""
    body = {"type": f"https://errors.payment-service/{body['code']}", **body}
    body.setdefault("detail", body["title"])
    body.setdefault("instance", request.path)
    response = Response(json.dumps(body), status=body["status"], mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    if body["status"] == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="payment"'
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
        return problem_response(error.to_dict(), headers)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(error: RateLimitExceeded) -> Response:
        # Flask-Limiter's own exception, raised before the view: one of the
        # per-user limits of web.limits is spent until its window moves on.
        limiter: Limiter | None = current_app.extensions.get("rate_limiter")
        breached = limiter.current_limit if limiter is not None else None
        wait = max(1, math.ceil(breached.window.reset_time - time.time())) if breached is not None else 1
        limited = RateLimited(
            f"At most {error.limit.limit} of these requests per user; retry after {wait} s.",
            extra={"retryAfter": wait},
            retry_after=wait,
        )
        return _service_error(limited)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        # Werkzeug's own answers (unknown route, 405, 413, ...): keep the
        # status and headers such as Allow, speak problem+json.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return problem_response(
            {
                "status": error.code or 500,
                "code": error.name.lower().replace(" ", "_"),
                "title": error.name,
                "detail": error.description,
            },
            headers,
        )

    @app.errorhandler(ConnectionFailure)
    def _database_away(_error: ConnectionFailure) -> Response:
        log.warning("MongoDB did not answer: %s", _error)
        return problem_response(ServiceUnavailable("The database did not answer; try again.").to_dict())

    @app.errorhandler(Exception)
    def _unexpected(_error: Exception) -> Response:
        log.exception("unhandled error")
        return problem_response(ServiceError("An unexpected error occurred; it has been logged.").to_dict())
