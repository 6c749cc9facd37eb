"""The routes under /api/payment (api.md): parse, authorise, call a service, answer.

Each route is declared where it is defined (``web.declare``): its request
model, its answers and its errors; the OpenAPI document is built from these
declarations.  Writes become jobs: the answer is 202 with the job, its
Location and a Retry-After; ``Prefer: wait=N`` (N <= 30) answers when the
job ends or N seconds pass.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from flask import Blueprint, Response, current_app, jsonify, request

from shared import keys
from shared.errors import (
    AlreadyPaid,
    BadRequest,
    CardExpired,
    CardNotFound,
    CheckoutNotFound,
    CheckoutUnavailable,
    DuplicateCard,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientFunds,
    JobNotFound,
    PaymentNotFound,
    ServiceUnavailable,
    TooManyOpenJobs,
    ValidationFailed,
)
from shared.models import Job
from shared.principal import Principal
from shared.services import cards, jobs, payments, views
from shared.services.checkout import CheckoutInvalid
from shared.services.views import BASE
from shared.settings import Settings
from web.declare import Auth, Reply, id_parameter, operation
from web.schemas import AddCardRequest, PayRequest, object_id

bp = Blueprint("payment", __name__, url_prefix=BASE)

MAX_WAIT_SECONDS = 30
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters.",
            errors=[{"field": "Idempotency-Key", "message": "must be 1 to 255 visible ASCII characters"}],
        )
    return key


def _prefer_wait() -> int:
    match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    return min(int(match.group(1)), MAX_WAIT_SECONDS) if match else 0


def _job_response(job: Job) -> tuple[Response, int, dict[str, str]]:
    wait = _prefer_wait()
    if wait and not job.ended:
        # Waiting holds a server thread: at most half of them wait at once, so
        # waiting clients can never starve the others; the rest answer at once.
        waiters: threading.BoundedSemaphore = current_app.extensions["job_waiters"]
        if waiters.acquire(blocking=False):
            try:
                job = jobs.wait_for_end(job, wait)
            finally:
                waiters.release()
    headers = {"Location": f"{BASE}/jobs/{job.id}"}
    if job.ended:
        return jsonify(views.Job.of(job).wire()), 200 if wait else 202, headers
    headers["Retry-After"] = "1"
    return jsonify(views.Job.of(job).wire()), 202, headers


def _submit(
    principal: Principal,
    job_type: str,
    params: dict[str, Any],
    resource_id: str | None,
    *,
    precheck: Callable[[], object] | None = None,
) -> tuple[Response, int, dict[str, str]]:
    assert principal.user_id is not None  # writes always come with a token
    # The request as the client sent it: path (with its ids), query, and the
    # validated parameters; not ids we generate, which differ on every call.
    req_hash = jobs.request_hash(
        keys.request_hash_key(_settings()),
        {"type": job_type, "path": request.path, **params},
    )
    job, _created = jobs.submit(
        current_app.extensions["celery"],
        job_type=job_type,
        owner=principal.user_id,
        params=params,
        resource_id=resource_id,
        req_hash=req_hash,
        idempotency_key=_idempotency_key(),
        precheck=precheck,
        open_limit=_settings().open_jobs_per_user,
    )
    return _job_response(job)


#: The parameters of every write (components of the document).
IDEMPOTENCY_KEY = {"$ref": "#/components/parameters/IdempotencyKey"}
PREFER = {"$ref": "#/components/parameters/Prefer"}

JOB_ENDED = Reply(
    200,
    "The job ended while the request waited (`Prefer: wait=N`): `status` is `succeeded` with `result`, "
    "or `failed` with `error`.",
    views.Job,
    ("Location",),
)
JOB_ACCEPTED = Reply(
    202,
    "Accepted: the job is recorded and queued; poll `Location`. Without `Prefer: wait`, or when the wait "
    "ran out, the job may be in any state: a repeated Idempotency-Key answers with the job the first "
    "request made, which may have ended. `Retry-After` comes with a job that has not ended.",
    views.Job,
    ("Location", "Retry-After"),
)
#: What every write can answer besides its own errors (_submit's and jobs.submit's).
WRITE_ERRORS = (BadRequest, IdempotencyKeyReused, TooManyOpenJobs, ServiceUnavailable)


# -- cards ---------------------------------------------------------------------


@operation(
    bp,
    "/add",
    "POST",
    summary="Add a card of the caller",
    description="Validates the card, then queues a `card.add` job; the job's `result` is the card as "
    "`GET /get/{cardId}` returns it. The owner is the token's `userId`, never a field of the body "
    "(an old client's `cardUserId` is ignored). A card number already registered, by anyone, is "
    "refused at once (409 `duplicate_card`); two adds of one number racing each other end with "
    "one card and one job failed with `duplicate_card`. Neither the full number nor the CVV is "
    "stored in clear or ever returned.",
    tag="Cards",
    replies=(JOB_ENDED, JOB_ACCEPTED),
    errors=(*WRITE_ERRORS, DuplicateCard),
    body=AddCardRequest,
    body_description="The new card. Unknown keys are ignored.",
    parameters=(IDEMPOTENCY_KEY, PREFER),
    job_type="card.add",
    job_errors=(DuplicateCard, ServiceUnavailable),
)
def add_card(principal: Principal, body: AddCardRequest) -> tuple[Response, int, dict[str, str]]:
    params = cards.new_card_params(
        fingerprint_key=keys.fingerprint_key(_settings()),
        holder_name=body.card_holder_name,
        number=body.card_number,
        expire_date=body.expire_date,
        money=body.money,
    )
    return _submit(
        principal,
        "card.add",
        params,
        resource_id=str(ObjectId()),
        # The CVV is checked and dropped: it is in no stored digest either, so
        # a retry with another CVV is the same request (PCI DSS 3.3.1.2).
        precheck=lambda: cards.ensure_number_is_new(params["fingerprint"]),
    )


@operation(
    bp,
    "/get/<card_id>",
    "GET",
    summary="Read a card",
    description="The caller's own card; admins (`userType` with `admin`) read any. Someone else's card, a "
    "deleted one and one that never existed all answer 404 alike.",
    tag="Cards",
    replies=(Reply(200, "The card.", views.Card),),
    errors=(CardNotFound,),
)
def get_card(principal: Principal, card_id: str) -> Response:
    return jsonify(cards.get_card(principal, card_id).wire())


@operation(
    bp,
    "/delete-card/<card_id>",
    "DELETE",
    summary="Delete a card",
    description="Checks that the caller may see the card (its owner, or an admin), then queues a "
    '`card.delete` job whose `result` is `{"deleted": cardId}`. Afterwards the card reads as 404 and its '
    "number may be added again; the money movements of the card stay on record.",
    tag="Cards",
    replies=(JOB_ENDED, JOB_ACCEPTED),
    errors=(*WRITE_ERRORS, CardNotFound),
    parameters=(IDEMPOTENCY_KEY, PREFER),
    job_type="card.delete",
    job_errors=(CardNotFound, ServiceUnavailable),
)
def delete_card(principal: Principal, card_id: str) -> tuple[Response, int, dict[str, str]]:
    # A replay of an Idempotency-Key answers with its job even once the card is gone.
    return _submit(
        principal,
        "card.delete",
        {},
        resource_id=card_id,
        precheck=lambda: cards.visible_card(principal, card_id),
    )


# -- payments ------------------------------------------------------------------


@operation(
    bp,
    "/pay/<checkout_id>",
    "POST",
    summary="Pay a checkout with a card",
    description="Validates the ids, then queues a `payment.pay` job. The card comes as `?cardId=` (as the "
    "old clients send it) or in the JSON body; both may be given if they name the same card. The job "
    "fetches the checkout from the checkout service and checks that the checkout and the card "
    "belong to the caller, that the checkout is active and not paid yet, that the card has not "
    "expired and holds the checkout's `totalPrice`; it then takes the money off the card and "
    "stores the payment (the job's `result`, as `GET /find/{paymentId}` returns it). These "
    "outcomes are known only to the job, so they end it `failed` with `error.code` "
    "`checkout_not_found` (404), `card_not_found` (404), `already_paid` (409), `card_expired` "
    "(422) or `insufficient_funds` (402), never as the status of this answer. A checkout is paid "
    "at most once, whatever the number of requests, retries or workers; a card is never "
    "overdrawn.",
    tag="Payments",
    replies=(JOB_ENDED, JOB_ACCEPTED),
    errors=WRITE_ERRORS,
    body=PayRequest,
    body_required=False,
    body_description="Optional: the card, if not given as `?cardId=`.",
    parameters=(
        {
            **id_parameter("cardId", "query"),
            "description": "The card to pay with (24 hexadecimal digits), as old clients send it; "
            "or give `cardId` in the body. One of the two is required (422 otherwise).",
        },
        IDEMPOTENCY_KEY,
        PREFER,
    ),
    job_type="payment.pay",
    job_errors=(
        CheckoutNotFound,
        CardNotFound,
        AlreadyPaid,
        CardExpired,
        InsufficientFunds,
        CheckoutUnavailable,
        CheckoutInvalid,
        ServiceUnavailable,
    ),
)
def pay(
    principal: Principal, checkout_id: str, body: PayRequest | None
) -> tuple[Response, int, dict[str, str]]:
    from_query = request.args.get("cardId")
    if from_query is not None:
        from_query = object_id(from_query, "cardId")
    from_body = body.card_id if body is not None else None
    if from_query and from_body and from_query != from_body:
        raise ValidationFailed(
            "cardId is given twice, with different values.",
            errors=[{"field": "cardId", "message": "the query and the body name different cards"}],
        )
    card_id = from_query or from_body
    if card_id is None:
        raise ValidationFailed(
            "cardId is required, as ?cardId= or in the JSON body.",
            errors=[{"field": "cardId", "message": "is required"}],
        )
    params = {"checkoutId": checkout_id, "cardId": card_id}
    return _submit(principal, "payment.pay", params, resource_id=None)


@operation(
    bp,
    "/find/<payment_id>",
    "GET",
    summary="Read a payment",
    description="The caller's own payment; admins and service tokens (`userType` with `admin` or "
    "`service`: the order service reads payments) read any. Others' payments, deleted ones and ids "
    "that never existed answer 404 alike.\n\n"
    "**Token-less reads.** The order service of the existing system calls this route without a "
    "token. An operator can allow that from listed networks with the setting "
    "`FIND_TOKENLESS_NETWORKS` (CIDRs; empty, hence off, by default): a call that carries no "
    "token at all from such an address reads any payment. A call that carries a token is always "
    "judged by it, and no other route is ever token-less.",
    tag="Payments",
    replies=(Reply(200, "The payment.", views.Payment),),
    errors=(PaymentNotFound,),
    auth=Auth.USER_OR_NETWORK,
)
def find_payment(principal: Principal, payment_id: str) -> Response:
    return jsonify(payments.get_payment(principal, payment_id).wire())


@operation(
    bp,
    "/delete-payment/<payment_id>",
    "DELETE",
    summary="Delete a payment",
    description="The payment's owner or an admin may delete it: queues a `payment.delete` job whose "
    '`result` is `{"deleted": paymentId}`; afterwards `GET /find` answers 404. The money '
    "movements behind it stay on record. A service token may read payments but not delete them "
    "(403 `forbidden`); anyone else gets 404, as if the payment did not exist.",
    tag="Payments",
    replies=(JOB_ENDED, JOB_ACCEPTED),
    errors=(*WRITE_ERRORS, Forbidden, PaymentNotFound),
    parameters=(IDEMPOTENCY_KEY, PREFER),
    job_type="payment.delete",
    job_errors=(PaymentNotFound, ServiceUnavailable),
)
def delete_payment(principal: Principal, payment_id: str) -> tuple[Response, int, dict[str, str]]:
    return _submit(
        principal,
        "payment.delete",
        {},
        resource_id=payment_id,
        precheck=lambda: payments.deletable_payment(principal, payment_id),
    )


# -- jobs ----------------------------------------------------------------------


@operation(
    bp,
    "/jobs/<job_id>",
    "GET",
    summary="Read a job",
    description="The caller's own job (admins read any); an unknown id or someone else's job is 404, never "
    "a made-up pending job. With `Prefer: wait=N` the answer comes when the job ends or N seconds "
    "pass, whichever is first.",
    tag="Jobs",
    replies=(
        Reply(
            200,
            "The job. `Retry-After` comes with a job that has not ended.",
            views.Job,
            ("Location", "Retry-After"),
        ),
    ),
    errors=(JobNotFound,),
    parameters=(PREFER,),
)
def get_job(principal: Principal, job_id: str) -> tuple[Response, int, dict[str, str]]:
    job = jobs.get_job(principal, job_id)
    response, _status, headers = _job_response(job)
    return response, 200, headers
