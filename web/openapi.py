"""The OpenAPI 3.1 document of the API, served at ``GET /api/payment/openapi.json``.

The document is built from a small declarative description of each operation
(:data:`OPERATIONS`): its path and method, who may call it, its request body
(the request models of ``web.schemas``, never copied), its parameters, its
success answers, and the errors it can answer with, named by their classes in
``shared.errors`` so that statuses and codes come from one place.  Response
shapes are the models of ``web.responses``.  ``tests/web/test_openapi.py``
keeps the description true: every route is documented, every error a route
can raise is listed, and the served document is valid OpenAPI 3.1.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from shared import errors as errors_module
from shared.errors import (
    AlreadyPaid,
    BadRequest,
    CardExpired,
    CardNotFound,
    CheckoutNotFound,
    CheckoutUnavailable,
    CsrfRejected,
    DuplicateCard,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientFunds,
    JobNotFound,
    NotFound,
    PaymentNotFound,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    TooManyOpenJobs,
    Unauthorized,
    ValidationFailed,
)
from shared.services.checkout import CheckoutInvalid
from shared.services.views import BASE
from web import responses
from web.api import MAX_WAIT_SECONDS
from web.schemas import AddCardRequest, PayRequest

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PATH = f"{BASE}/openapi.json"
REF = "#/components/schemas/{model}"
PROBLEM_JSON = "application/problem+json"

bp = Blueprint("openapi", __name__)


# -- errors ---------------------------------------------------------------------


@dataclass(frozen=True)
class HttpError:
    """An error answered by Flask/Werkzeug itself, with the code ``web.problems`` gives it."""

    status: int
    code: str
    title: str


#: A URL that matches no route: for a path with an id, an id holding a "/".
ROUTE_NOT_FOUND = HttpError(404, "not_found", "Not Found")
#: A body over MAX_CONTENT_LENGTH (64 KiB), refused when a route reads it.
BODY_TOO_LARGE = HttpError(413, "request_entity_too_large", "Request Entity Too Large")
#: A method the path does not have (not listed per operation: OpenAPI lists what exists).
METHOD_NOT_ALLOWED = HttpError(405, "method_not_allowed", "Method Not Allowed")
#: An unexpected fault, logged; never the answer to any input (api.md).
INTERNAL_ERROR = HttpError(500, ServiceError.code, ServiceError.title)

ErrorSource = type[ServiceError] | HttpError

#: What each code means, for the descriptions.  Every code the service can
#: answer with or end a job with is here (the test checks it).
CODE_NOTES: dict[str, str] = {
    BadRequest.code: "the body is not a JSON object (not JSON, not UTF-8, NaN, duplicate keys, too deep) "
    "or a field has the wrong JSON type; or the Idempotency-Key header is malformed",
    ValidationFailed.code: "well-formed input with invalid values, a missing field, or an id that is not "
    "24 hexadecimal digits; `errors` names every bad field",
    Unauthorized.code: "no token, or a malformed, badly signed, `alg: none` or expired one",
    Forbidden.code: "a service token (`userType` with `service`) may read payments but not delete them",
    CsrfRejected.code: "a POST authenticated by the `token` cookie alone without "
    "`Content-Type: application/json`",
    NotFound.code: "the URL matches no operation (for example an id holding a `/`)",
    ServiceUnavailable.code: "a dependency did not answer; nothing was accepted, so retrying is safe",
    RateLimited.code: "the caller (the token's user) spent its budget of writes (`RATE_LIMIT_WRITES`) or "
    "reads (`RATE_LIMIT_READS`); nothing was done; `Retry-After` and `retryAfter` say when to retry",
    TooManyOpenJobs.code: "the caller already has `OPEN_JOBS_PER_USER` jobs queued or running; nothing "
    "was accepted; retry once one has ended (`Retry-After`)",
    CardNotFound.code: "no such card, a deleted one, or someone else's (answered exactly alike)",
    PaymentNotFound.code: "no such payment, a deleted one, or one the caller may not see",
    JobNotFound.code: "no such job, or someone else's",
    CheckoutNotFound.code: "no such checkout, or someone else's",
    DuplicateCard.code: "this card number is already registered (by anyone)",
    AlreadyPaid.code: "the checkout is already paid or no longer active; `paymentId` and `links.payment` "
    "name the existing payment when there is one, `links.job` the job still charging it otherwise",
    InsufficientFunds.code: "the card holds less than the checkout's total; no money moved",
    CardExpired.code: "the card expired before it could be charged",
    IdempotencyKeyReused.code: "this Idempotency-Key was sent before, by the same user, with another request",
    CheckoutUnavailable.code: "the checkout service did not answer, after retries",
    CheckoutInvalid.code: "the checkout service answered something that is not a usable checkout",
    BODY_TOO_LARGE.code: "the body is larger than 64 KiB",
    METHOD_NOT_ALLOWED.code: "the path has no such method; `Allow` lists those it has",
    INTERNAL_ERROR.code: "an unexpected fault, logged; never caused by input",
}

#: Which codes end a failed job of each type (the job's `error`); `service_unavailable`
#: and `checkout_unavailable` when a transient failure outlasts the retries.
JOB_ERRORS: dict[str, tuple[type[ServiceError], ...]] = {
    "card.add": (DuplicateCard, ServiceUnavailable),
    "card.delete": (CardNotFound, ServiceUnavailable),
    "payment.pay": (
        CheckoutNotFound,
        CardNotFound,
        AlreadyPaid,
        CardExpired,
        InsufficientFunds,
        CheckoutUnavailable,
        CheckoutInvalid,
        ServiceUnavailable,
    ),
    "payment.delete": (PaymentNotFound, ServiceUnavailable),
}


def _note(source: ErrorSource) -> str:
    return CODE_NOTES[source.code]


# -- operations -----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A success answer: status, description, body schema (component name) and headers."""

    status: int
    description: str
    schema: str
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One operation of the document, declared."""

    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    tag: str
    replies: tuple[Reply, ...]
    errors: tuple[ErrorSource, ...] = ()
    authenticated: bool = True
    body: type[BaseModel] | None = None
    body_required: bool = True
    body_description: str = ""
    parameters: tuple[dict[str, Any], ...] = field(default_factory=tuple)


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id: 24 hexadecimal digits (either case). Anything else is a 422 "
        "`validation_error`, never a 500.",
        "schema": {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{24}$",
            "examples": ["65a1f0c2e4b0a1b2c3d4e5f6"],
        },
    }


IDEMPOTENCY_KEY = {"$ref": "#/components/parameters/IdempotencyKey"}
PREFER = {"$ref": "#/components/parameters/Prefer"}

_JOB_ENDED = Reply(
    200,
    "The job ended while the request waited (`Prefer: wait=N`): `status` is `succeeded` with `result`, "
    "or `failed` with `error`.",
    "Job",
    ("Location",),
)
_JOB_ACCEPTED = Reply(
    202,
    "Accepted: the job is recorded and queued; poll `Location`. Without `Prefer: wait`, or when the wait "
    "ran out, the job may be in any state: a repeated Idempotency-Key answers with the job the first "
    "request made, which may have ended. `Retry-After` comes with a job that has not ended.",
    "Job",
    ("Location", "Retry-After"),
)
_WRITE_ERRORS: tuple[ErrorSource, ...] = (
    BadRequest,
    Unauthorized,
    ValidationFailed,
    IdempotencyKeyReused,
    RateLimited,
    TooManyOpenJobs,
    ServiceUnavailable,
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        f"{BASE}/add",
        "addCard",
        "Add a card of the caller",
        "Validates the card, then queues a `card.add` job; the job's `result` is the card as "
        "`GET /get/{cardId}` returns it. The owner is the token's `userId`, never a field of the body "
        "(an old client's `cardUserId` is ignored). A card number already registered, by anyone, is "
        "refused at once (409 `duplicate_card`); two adds of one number racing each other end with "
        "one card and one job failed with `duplicate_card`. Neither the full number nor the CVV is "
        "stored in clear or ever returned.",
        "Cards",
        (_JOB_ENDED, _JOB_ACCEPTED),
        (*_WRITE_ERRORS, CsrfRejected, DuplicateCard, BODY_TOO_LARGE),
        body=AddCardRequest,
        body_description="The new card. Unknown keys are ignored.",
        parameters=(IDEMPOTENCY_KEY, PREFER),
    ),
    Operation(
        "get",
        f"{BASE}/get/{{cardId}}",
        "getCard",
        "Read a card",
        "The caller's own card; admins (`userType` with `admin`) read any. Someone else's card, a "
        "deleted one and one that never existed all answer 404 alike.",
        "Cards",
        (Reply(200, "The card.", "Card"),),
        (Unauthorized, CardNotFound, ROUTE_NOT_FOUND, ValidationFailed, RateLimited),
        parameters=(_path_id("cardId", "card"),),
    ),
    Operation(
        "delete",
        f"{BASE}/delete-card/{{cardId}}",
        "deleteCard",
        "Delete a card",
        "Checks that the caller may see the card (its owner, or an admin), then queues a `card.delete` "
        'job whose `result` is `{"deleted": cardId}`. Afterwards the card reads as 404 and its number '
        "may be added again; the money movements of the card stay on record.",
        "Cards",
        (_JOB_ENDED, _JOB_ACCEPTED),
        (*_WRITE_ERRORS, CardNotFound, ROUTE_NOT_FOUND),
        parameters=(_path_id("cardId", "card"), IDEMPOTENCY_KEY, PREFER),
    ),
    Operation(
        "post",
        f"{BASE}/pay/{{checkoutId}}",
        "pay",
        "Pay a checkout with a card",
        "Validates the ids, then queues a `payment.pay` job. The card comes as `?cardId=` (as the old "
        "clients send it) or in the JSON body; both may be given if they name the same card. The job "
        "fetches the checkout from the checkout service and checks that the checkout and the card "
        "belong to the caller, that the checkout is active and not paid yet, that the card has not "
        "expired and holds the checkout's `totalPrice`; it then takes the money off the card and "
        "stores the payment (the job's `result`, as `GET /find/{paymentId}` returns it). These "
        "outcomes are known only to the job, so they end it `failed` with `error.code` "
        "`checkout_not_found` (404), `card_not_found` (404), `already_paid` (409), `card_expired` "
        "(422) or `insufficient_funds` (402), never as the status of this answer. A checkout is paid "
        "at most once, whatever the number of requests, retries or workers; a card is never "
        "overdrawn.",
        "Payments",
        (_JOB_ENDED, _JOB_ACCEPTED),
        (*_WRITE_ERRORS, CsrfRejected, ROUTE_NOT_FOUND, BODY_TOO_LARGE),
        body=PayRequest,
        body_required=False,
        body_description="Optional: the card, if not given as `?cardId=`.",
        parameters=(
            _path_id("checkoutId", "checkout"),
            {
                "name": "cardId",
                "in": "query",
                "required": False,
                "description": "The card to pay with (24 hexadecimal digits), as old clients send it; "
                "or give `cardId` in the body. One of the two is required (422 otherwise).",
                "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"},
            },
            IDEMPOTENCY_KEY,
            PREFER,
        ),
    ),
    Operation(
        "get",
        f"{BASE}/find/{{paymentId}}",
        "findPayment",
        "Read a payment",
        "The caller's own payment; admins and service tokens (`userType` with `admin` or `service`: "
        "the order service reads payments) read any. Others' payments, deleted ones and ids that "
        "never existed answer 404 alike.\n\n"
        "**Token-less reads.** The order service of the existing system calls this route without a "
        "token. An operator can allow that from listed networks with the setting "
        "`FIND_TOKENLESS_NETWORKS` (CIDRs; empty, hence off, by default): a call that carries no "
        "token at all from such an address reads any payment. A call that carries a token is always "
        "judged by it, and no other route is ever token-less.",
        "Payments",
        (Reply(200, "The payment.", "Payment"),),
        (Unauthorized, PaymentNotFound, ROUTE_NOT_FOUND, ValidationFailed, RateLimited),
        parameters=(_path_id("paymentId", "payment"),),
    ),
    Operation(
        "delete",
        f"{BASE}/delete-payment/{{paymentId}}",
        "deletePayment",
        "Delete a payment",
        "The payment's owner or an admin may delete it: queues a `payment.delete` job whose "
        '`result` is `{"deleted": paymentId}`; afterwards `GET /find` answers 404. The money '
        "movements behind it stay on record. A service token may read payments but not delete them "
        "(403 `forbidden`); anyone else gets 404, as if the payment did not exist.",
        "Payments",
        (_JOB_ENDED, _JOB_ACCEPTED),
        (*_WRITE_ERRORS, Forbidden, PaymentNotFound, ROUTE_NOT_FOUND),
        parameters=(_path_id("paymentId", "payment"), IDEMPOTENCY_KEY, PREFER),
    ),
    Operation(
        "get",
        f"{BASE}/jobs/{{jobId}}",
        "getJob",
        "Read a job",
        "The caller's own job (admins read any); an unknown id or someone else's job is 404, never a "
        "made-up pending job. With `Prefer: wait=N` the answer comes when the job ends or N seconds "
        "pass, whichever is first.",
        "Jobs",
        (
            Reply(
                200,
                "The job. `Retry-After` comes with a job that has not ended.",
                "Job",
                ("Location", "Retry-After"),
            ),
        ),
        (Unauthorized, JobNotFound, ROUTE_NOT_FOUND, ValidationFailed, RateLimited),
        parameters=(_path_id("jobId", "job"), PREFER),
    ),
    Operation(
        "get",
        DOCUMENT_PATH,
        "getOpenApiDocument",
        "This document",
        "The OpenAPI 3.1 document of the API. No token needed.",
        "Operations",
        (Reply(200, "The document.", "OpenApiDocument"),),
        authenticated=False,
    ),
    Operation(
        "get",
        "/healthz",
        "healthz",
        "Liveness probe",
        "The process is up and serving requests. No token needed; outside the base path.",
        "Operations",
        (Reply(200, "Up.", "Health"),),
        authenticated=False,
    ),
    Operation(
        "get",
        "/readyz",
        "readyz",
        "Readiness probe",
        "MongoDB, Redis and Kafka answer, from a result at most `READYZ_CACHE_SECONDS` old. No token "
        "needed; outside the base path. Why a check failed is shown only to a caller with a valid token.",
        "Operations",
        (
            Reply(200, "Ready: every dependency answers.", "Readiness"),
            Reply(
                503,
                "Not ready: `checks` names the dependency that does not answer (`failed`; "
                "the reason only with a token).",
                "Readiness",
            ),
        ),
        authenticated=False,
    ),
)


# -- the document ---------------------------------------------------------------

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
    lines = "\n".join(f"- `{source.code}`: {_note(source)}" for source in sources)
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


def _operation(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for reply in op.replies:
        responses[str(reply.status)] = {
            "description": reply.description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=reply.schema)}}},
        }
        if reply.headers:
            responses[str(reply.status)]["headers"] = {
                name: {"$ref": f"#/components/headers/{name}"} for name in reply.headers
            }
    by_status: dict[int, list[ErrorSource]] = {}
    for source in op.errors:
        by_status.setdefault(source.status, []).append(source)
    for status in sorted(by_status):
        responses[str(status)] = _error_response(status, by_status[status])
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": [op.tag],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}] if op.authenticated else [],
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


def _job_error_codes(job_schema: dict[str, Any]) -> None:
    error = job_schema["properties"]["error"]
    error["description"] = (
        "Why the job failed (only a `failed` job has one). Codes by job type:\n"
        + "\n".join(
            f"- `{job_type}`: " + ", ".join(f"`{cls.code}` ({cls.status})" for cls in classes)
            for job_type, classes in JOB_ERRORS.items()
        )
    )
    error["x-error-codes"] = {
        job_type: [cls.code for cls in classes] for job_type, classes in JOB_ERRORS.items()
    }


#: Every code an HTTP answer or a job's `error` can carry, for `Problem.code`.
PROBLEM_SOURCES: tuple[ErrorSource, ...] = (
    BadRequest,
    Unauthorized,
    CsrfRejected,
    Forbidden,
    NotFound,
    CardNotFound,
    PaymentNotFound,
    JobNotFound,
    CheckoutNotFound,
    METHOD_NOT_ALLOWED,
    DuplicateCard,
    AlreadyPaid,
    InsufficientFunds,
    BODY_TOO_LARGE,
    ValidationFailed,
    CardExpired,
    IdempotencyKeyReused,
    RateLimited,
    TooManyOpenJobs,
    INTERNAL_ERROR,
    CheckoutInvalid,
    ServiceUnavailable,
    CheckoutUnavailable,
)


def _problem_codes(problem_schema: dict[str, Any]) -> None:
    code = problem_schema["properties"]["code"]
    notes: dict[str, list[str]] = {}
    statuses: dict[str, int] = {}
    for source in sorted(PROBLEM_SOURCES, key=lambda source: source.status):
        notes.setdefault(source.code, []).append(_note(source))
        statuses[source.code] = source.status
    code["description"] = "Stable, machine-readable reason. The codes, with their status:\n\n" + "\n".join(
        f"- `{name}` ({statuses[name]}): {'; or '.join(dict.fromkeys(texts))}"
        for name, texts in notes.items()
    )
    code["x-codes"] = {name: statuses[name] for name in notes}


def _codes_outside_http() -> dict[str, dict[str, Any]]:
    """The typed errors of `shared.errors` that no answer or job carries (refund events, outbox).

    Listed from the module rather than by hand: they are the workers' and the
    Kafka bridge's business, named here only so that a reader of a code finds it.
    """
    answered = {(source.code, source.status) for source in PROBLEM_SOURCES}
    found: dict[str, dict[str, Any]] = {}
    for value in vars(errors_module).values():
        is_error = inspect.isclass(value) and issubclass(value, ServiceError)
        if is_error and (value.code, value.status) not in answered:
            found[value.code] = {"status": value.status, "title": value.title}
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
    schemas: dict[str, Any] = {}
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "serialization") for model in responses.RESPONSE_MODELS),
        # Requests: what the wire accepts (the validators' json_schema_input_type).
        (AddCardRequest, "validation"),
        (PayRequest, "validation"),
    ]
    for model, mode in models:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, definition in schema.pop("$defs", {}).items():
            _add_schema(schemas, name, definition)
        _add_schema(schemas, model.__name__, schema)
    schemas["OpenApiDocument"] = {
        "type": "object",
        "description": "An OpenAPI 3.1 document: this one.",
        "required": ["openapi", "info", "paths"],
    }
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
                "schema": {"type": "string", "pattern": f"^{BASE}/jobs/[0-9a-f]{{24}}$"},
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
    for op in OPERATIONS:
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
            {"name": "Operations", "description": "Probes and this document; no token."},
        ],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
        "paths": paths,
        "components": _components(),
        "x-codes-outside-http": _codes_outside_http(),
    }


def build_document() -> dict[str, Any]:
    """The OpenAPI document (a copy: callers may change it)."""
    return copy.deepcopy(_document())


@bp.get(DOCUMENT_PATH)
def openapi_document() -> Response:
    """The document; no token needed."""
    return jsonify(_document())
