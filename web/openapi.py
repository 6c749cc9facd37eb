"""The OpenAPI 3.1 document of the API, built from the routes' own declarations.

Every operation is declared on its view (``web.declare``): its request model,
its answers and their response models, its errors as classes of
``shared.errors`` (whose ``note`` says what each code means).  This module
only assembles them, with what is API-wide: the introduction, the shared
parameters and headers, the security schemes.  The document is served at
``GET /api/payment/openapi.json`` and rendered for people at
``GET /api/payment/docs`` (``web.docs``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from shared.errors import RateLimited, ServiceError
from shared.services.views import BASE
from shared.wire import OBJECT_ID_PATTERN
from web.api import MAX_WAIT_SECONDS
from web.declare import OPERATIONS, Operation, Reply, operation
from web.limits import LIMITED_BLUEPRINTS
from web.problems import METHOD_NOT_ALLOWED, PROBLEM_JSON, ErrorSource, Problem

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PATH = f"{BASE}/openapi.json"
REF = "#/components/schemas/{model}"

bp = Blueprint("openapi", __name__)

#: The schema of this document, as an answer.
OPENAPI_DOCUMENT = {
    "type": "object",
    "description": "An OpenAPI 3.1 document: this one.",
    "required": ["openapi", "info", "paths"],
}


@operation(
    bp,
    DOCUMENT_PATH,
    "GET",
    summary="This document",
    description="The OpenAPI 3.1 document of the API. No token needed.",
    tag="Operations",
    replies=(Reply(200, "The document.", OPENAPI_DOCUMENT),),
    auth=None,
)
def get_open_api_document() -> Response:
    return jsonify(_document())


def errors_of(op: Operation) -> tuple[ErrorSource, ...]:
    """What an operation can answer with: its declaration, and the rate limits of its blueprint."""
    limited = (RateLimited,) if op.blueprint in {bp.name for bp in LIMITED_BLUEPRINTS} else ()
    return tuple(dict.fromkeys((*op.errors, *limited)))


def _all_operations() -> Iterator[Operation]:
    # Every blueprint of the app registers its routes on import (web.create_app imports them all).
    yield from OPERATIONS


INFO_DESCRIPTION = f"""\
Cards, payments and jobs of the shop's payment service. JSON in, JSON out.

## Authentication and who may see what

Every operation under `{BASE}` needs a token of the user service (an HS256 JWT with `userId` and
`userType`), sent as `Authorization: Bearer <token>` or in the `token` cookie; the probes and this
document need none. A missing, malformed, badly signed, `alg: none` or expired token is a 401.
A POST authenticated by the cookie alone must be sent with `Content-Type: application/json`
(which a foreign page cannot send cross-site without a CORS preflight; the service enables no
CORS), otherwise 403 `csrf_rejected`: the user service issues no CSRF token, so none is asked.

A user sees and changes only their own cards, payments and jobs: anyone else's answers 404,
exactly as if it did not exist. Admins (`"admin"` in `userType`) may read and delete any; service
tokens (`"service"` in `userType`) may read any payment. `GET /find/{{paymentId}}` can be allowed
without a token from networks an operator lists (off by default; see that operation).

## Jobs

Every write (`POST /add`, `DELETE /delete-card/{{cardId}}`, `POST /pay/{{checkoutId}}`,
`DELETE /delete-payment/{{paymentId}}`) is validated first (bad input is refused before anything
is stored or queued), then recorded as a job and queued for a worker. The answer is 202 with the
job, `Location: {BASE}/jobs/{{jobId}}` and `Retry-After`. A client that prefers to wait
sends `Prefer: wait=N` (seconds; at most {MAX_WAIT_SECONDS}, larger values are capped): the answer
then comes when the job ends (200 with the ended job) or when N seconds pass (202 with the job as
it is). A job that ends `failed` carries the reason in `error` (the problem details of the
failure, with its `status` and `code`): outcomes only the worker can know, such as
`insufficient_funds`, are reported there, not as the status of the write.

## Idempotency

Each write takes an optional `Idempotency-Key` header (1 to 255 visible ASCII characters). The
same key from the same user with the same request answers with the same job, however often and
however concurrently it is sent; the same key with another request is refused with 422
`idempotency_key_reused`. Keys are remembered for at least 24 hours (48 in this implementation).
Without a key, every request is a new job.

## Errors

Errors are RFC 9457 problem details (`application/problem+json`) with `type`, `title`, `status`,
`detail`, `code` and `instance`, and for bad input `errors`, naming every bad field. `code` is
stable and machine-readable; each response lists its codes in `x-problem-codes`, and the
`Problem` schema lists them all. 400 means a body that is not a JSON object or has values of the
wrong JSON type; 422 means well-formed values that are invalid. No input yields a 500.

## Money

Amounts are JSON numbers with at most 2 decimal places, kept as exact decimals inside the service
(never binary floats): a balance of 0.1 + 0.2 is 0.3.
"""


def _error_response(status: int, sources: Sequence[ErrorSource]) -> dict[str, Any]:
    codes = list(dict.fromkeys(source.code for source in sources))
    heading = f"Problem: {sources[0].title}." if len(codes) == 1 else "Problem, one of:"
    lines = "\n".join(f"- `{source.code}`: {source.note}" for source in sources)
    response: dict[str, Any] = {
        "description": f"{heading}\n\n{lines}",
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}},
        "x-problem-codes": codes,
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}}
    if status == 429:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response


def _reply(reply: Reply) -> dict[str, Any]:
    schema = {"$ref": REF.format(model=reply.body.__name__)} if isinstance(reply.body, type) else reply.body
    answer: dict[str, Any] = {
        "description": reply.description,
        "content": {reply.media_type: {"schema": schema}},
    }
    if reply.headers:
        answer["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in reply.headers}
    return answer


def _operation(op: Operation) -> dict[str, Any]:
    responses = {str(reply.status): _reply(reply) for reply in op.replies}
    by_status: dict[int, list[ErrorSource]] = {}
    for source in errors_of(op):
        by_status.setdefault(source.status, []).append(source)
    for status in sorted(by_status):
        responses[str(status)] = _error_response(status, by_status[status])
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": [op.tag],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}] if op.auth is not None else [],
    }
    if op.parameters:
        document["parameters"] = list(op.parameters)
    if op.body is not None:
        document["requestBody"] = {
            "description": op.body_description,
            "required": op.body_required,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=op.body.__name__)}}},
        }
    document["responses"] = dict(sorted(responses.items()))
    return document


def _add_schema(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    if schemas.setdefault(name, schema) != schema:
        raise ValueError(f"two different schemas are named {name}")


def _job_errors() -> dict[str, tuple[type[ServiceError], ...]]:
    return {op.job_type: op.job_errors for op in _all_operations() if op.job_type is not None}


def _job_error_codes(job_schema: dict[str, Any]) -> None:
    error = job_schema["properties"]["error"]
    job_errors = _job_errors()
    error["description"] = (
        "Why the job failed (only a `failed` job has one). Codes by job type:\n"
        + "\n".join(
            f"- `{job_type}`: " + ", ".join(f"`{cls.code}` ({cls.status})" for cls in classes)
            for job_type, classes in job_errors.items()
        )
    )
    error["x-error-codes"] = {
        job_type: [cls.code for cls in classes] for job_type, classes in job_errors.items()
    }


def problem_sources() -> tuple[ErrorSource, ...]:
    """Every error an HTTP answer or a job's `error` can carry, for `Problem.code`."""
    sources: list[ErrorSource] = [METHOD_NOT_ALLOWED, ServiceError]
    for op in _all_operations():
        sources += [*errors_of(op), *op.job_errors]
    return tuple(sorted(dict.fromkeys(sources), key=lambda source: source.status))


def _problem_codes(problem_schema: dict[str, Any]) -> None:
    code = problem_schema["properties"]["code"]
    notes: dict[str, list[str]] = {}
    statuses: dict[str, int] = {}
    for source in problem_sources():
        notes.setdefault(source.code, []).append(source.note)
        statuses[source.code] = source.status
    code["description"] = "Stable, machine-readable reason. The codes, with their status:\n\n" + "\n".join(
        f"- `{name}` ({statuses[name]}): {'; or '.join(dict.fromkeys(texts))}"
        for name, texts in notes.items()
    )
    code["x-codes"] = {name: statuses[name] for name in notes}


def _subclasses(cls: type[ServiceError]) -> Iterator[type[ServiceError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _codes_outside_http() -> dict[str, dict[str, Any]]:
    """The typed errors that no answer or job carries (refund events, outbox).

    Found among the subclasses of ServiceError rather than listed by hand:
    they are the workers' and the Kafka bridge's business, named here only
    so that a reader of a code finds it.
    """
    answered = {(source.code, source.status) for source in problem_sources()}
    found: dict[str, dict[str, Any]] = {}
    for cls in _subclasses(ServiceError):
        if (cls.code, cls.status) not in answered:
            found[cls.code] = {"status": cls.status, "title": cls.title}
    return found


def _info_description() -> str:
    outside = _codes_outside_http()
    if not outside:
        return INFO_DESCRIPTION
    lines = "\n".join(f"- `{code}` ({entry['status']}): {entry['title']}" for code, entry in outside.items())
    return (
        f"{INFO_DESCRIPTION}\n## Codes that no HTTP answer carries\n\n"
        "The workers and the Kafka refund bridge use the same typed errors. These codes never reach "
        "an HTTP client: they are the reasons of refund events set aside (dead-lettered) because "
        "they can never be applied, or of an event Kafka did not acknowledge, and appear in the "
        "dead-letter topic and the logs. They are listed, with the status their class carries, in "
        f"`x-codes-outside-http`:\n\n{lines}\n"
    )


def _components() -> dict[str, Any]:
    """The schemas (every model an operation declares), and the API-wide parameters and headers."""
    schemas: dict[str, Any] = {}
    models: dict[type[BaseModel], JsonSchemaMode] = {Problem: "serialization"}
    for op in OPERATIONS:
        for reply in op.replies:
            if isinstance(reply.body, type):
                models[reply.body] = "serialization"
        if op.body is not None:
            # Requests: what the wire accepts (the validators' json_schema_input_type).
            models[op.body] = "validation"
    for model, mode in models.items():
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            _add_schema(schemas, name, definition)
        _add_schema(schemas, model.__name__, schema)
    _job_error_codes(schemas["Job"])
    _problem_codes(schemas["Problem"])
    return {
        "schemas": dict(sorted(schemas.items())),
        "parameters": {
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes the write safe to repeat: the same key from the same user with the "
                "same request answers with the same job (even sent concurrently); the same key with "
                "another request is a 422 `idempotency_key_reused`. Remembered for at least 24 hours. "
                "1 to 255 visible ASCII characters, else 400 `bad_request`.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]{1,255}$"},
            },
            "Prefer": {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": f"`wait=N` (RFC 7240): answer when the job ends or after N seconds, "
                f"whichever is first; N above {MAX_WAIT_SECONDS} counts as {MAX_WAIT_SECONDS}. Other "
                "preferences, and a header without `wait`, are ignored.",
                "schema": {"type": "string", "examples": ["wait=5"]},
            },
        },
        "headers": {
            "Location": {
                "description": "Where to poll the job.",
                "required": True,
                "schema": {"type": "string", "pattern": f"^{BASE}/jobs/{OBJECT_ID_PATTERN.strip('^$')}$"},
            },
            "Retry-After": {
                "description": "Seconds to wait before polling again; only while the job has not ended.",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
            },
            "WWW-Authenticate": {
                "description": "The Bearer challenge.",
                "required": True,
                "schema": {"type": "string", "examples": ['Bearer realm="payment"']},
            },
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "The user service's token (HS256, `userId` and `userType` claims).",
            },
            "cookieAuth": {
                "type": "apiKey",
                "in": "cookie",
                "name": "token",
                "description": "The same token in the `token` cookie. A POST authenticated by the cookie "
                "alone must be `Content-Type: application/json` (403 `csrf_rejected` otherwise).",
            },
        },
    }


@cache
def _document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in _all_operations():
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Payment service",
            "version": "1.0.0",
            "summary": "Cards, payments and the jobs that change them.",
            "description": _info_description(),
        },
        "tags": [
            {"name": "Cards", "description": "A customer's cards and their balances."},
            {
                "name": "Payments",
                "description": "Charging a checkout to a card; reading and deleting payments.",
            },
            {"name": "Jobs", "description": "The queued writes, to poll."},
            {"name": "Operations", "description": "Probes, this document and its page; no token."},
        ],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
        "paths": paths,
        "components": _components(),
        "x-codes-outside-http": _codes_outside_http(),
    }


def build_document() -> dict[str, Any]:
    """The OpenAPI document (a copy: callers may change it)."""
    return copy.deepcopy(_document())
