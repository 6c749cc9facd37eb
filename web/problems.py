"""The one place where errors become RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from pymongo.errors import ConnectionFailure
from werkzeug.exceptions import HTTPException

from shared.errors import ServiceError, ServiceUnavailable

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
        return problem_response(error.to_dict())

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
