"""The one place where errors become RFC 9457 problem+json responses, and their model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, json, request
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import ConnectionFailure
from werkzeug import exceptions as http
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from shared.errors import ServiceError, ServiceUnavailable
from shared.services.views import FieldError, optional, wire_title

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "https://errors.payment-service/{code}"


def _http_code(status: int) -> str:
    """The code of an answer Werkzeug makes: its reason phrase in snake case (``not_found``)."""
    return HTTP_STATUS_CODES.get(status, "Unknown Error").lower().replace(" ", "_")


@dataclass(frozen=True)
class HttpError:
    """An error Flask/Werkzeug answers itself, with the code :func:`register_error_handlers` gives it."""

    status: int
    code: str
    title: str
    note: str

    @classmethod
    def of(cls, error: type[HTTPException], note: str) -> HttpError:
        status = error.code or 500
        return cls(status, _http_code(status), HTTP_STATUS_CODES[status], note)


#: A URL that matches no route: for a path with an id, an id holding a "/".
ROUTE_NOT_FOUND = HttpError.of(
    http.NotFound, "the URL matches no operation (for example an id holding a `/`)"
)
#: A body over MAX_CONTENT_LENGTH (64 KiB), refused when a route reads it.
BODY_TOO_LARGE = HttpError.of(http.RequestEntityTooLarge, "the body is larger than 64 KiB")
#: A method the path does not have (not listed per operation: OpenAPI lists what exists).
METHOD_NOT_ALLOWED = HttpError.of(
    http.MethodNotAllowed, "the path has no such method; `Allow` lists those it has"
)

#: What an operation can answer with: a class of ``shared.errors`` or a Werkzeug answer.
ErrorSource = type[ServiceError] | HttpError


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (`application/problem+json`).

    `code` is the stable, machine-readable reason; `errors` names every bad
    field of a refused request.  Other keys may follow (`already_paid` adds
    `paymentId` and `links`).
    """

    model_config = ConfigDict(extra="allow", frozen=True, field_title_generator=wire_title)

    type: str = Field(
        description="A URI naming the kind of problem: `https://errors.payment-service/{code}`.",
        examples=["https://errors.payment-service/validation_error"],
    )
    title: str = Field(description="Short summary of the kind of problem; the same for every `code`.")
    status: int = Field(ge=400, le=599, description="The HTTP status of the answer.")
    detail: str = Field(description="What went wrong with this request; never contains card data.")
    code: str = Field(examples=["validation_error"])
    errors: list[FieldError] | None = optional(description="For bad input: every bad field.")
    instance: str = Field(description="The path of the request.", examples=["/api/payment/add"])


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A problem+json response; ``body`` holds at least status, code and title."""
    body = {"type": PROBLEM_TYPE.format(code=body["code"]), **body}
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

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        # Werkzeug's own answers (unknown route, 405, 413, ...): keep the
        # status and headers such as Allow, speak problem+json.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return problem_response(
            {
                "status": error.code or 500,
                "code": _http_code(error.code or 500),
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
