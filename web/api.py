"""The routes under /api/payment (api.md): parse, authorise, call a service, answer.

Writes become jobs: the answer is 202 with the job, its Location and a
Retry-After; ``Prefer: wait=N`` (N <= 30) answers when the job ends or N
seconds pass.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from flask import Blueprint, Response, current_app, jsonify, request

from shared import keys
from shared.errors import BadRequest, ValidationFailed
from shared.models import Job
from shared.principal import Principal
from shared.services import cards, jobs, payments
from shared.services.views import BASE, job_view
from shared.settings import Settings
from web.auth import authenticate, authenticate_or_trusted_network
from web.schemas import AddCardRequest, PayRequest, object_id, parse_json_body, validate

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
        return jsonify(job_view(job)), 200 if wait else 202, headers
    headers["Retry-After"] = "1"
    return jsonify(job_view(job)), 202, headers


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


# -- cards ---------------------------------------------------------------------


@bp.post("/add")
def add_card() -> tuple[Response, int, dict[str, str]]:
    principal = authenticate()
    body = validate(AddCardRequest, parse_json_body(request.get_data()))
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


@bp.get("/get/<card_id>")
def get_card(card_id: str) -> Response:
    principal = authenticate()
    return jsonify(cards.get_card(principal, object_id(card_id, "cardId")))


@bp.delete("/delete-card/<card_id>")
def delete_card(card_id: str) -> tuple[Response, int, dict[str, str]]:
    principal = authenticate()
    card_id = object_id(card_id, "cardId")
    # A replay of an Idempotency-Key answers with its job even once the card is gone.
    return _submit(
        principal,
        "card.delete",
        {},
        resource_id=card_id,
        precheck=lambda: cards.visible_card(principal, card_id),
    )


# -- payments ------------------------------------------------------------------


def _card_id_of_pay_request() -> str:
    from_query = request.args.get("cardId")
    raw = request.get_data()
    from_body = validate(PayRequest, parse_json_body(raw)).card_id if raw.strip() else None
    if from_query is not None:
        from_query = object_id(from_query, "cardId")
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
    return card_id


@bp.post("/pay/<checkout_id>")
def pay(checkout_id: str) -> tuple[Response, int, dict[str, str]]:
    principal = authenticate()
    params = {"checkoutId": object_id(checkout_id, "checkoutId"), "cardId": _card_id_of_pay_request()}
    return _submit(principal, "payment.pay", params, resource_id=None)


@bp.get("/find/<payment_id>")
def find_payment(payment_id: str) -> Response:
    principal = authenticate_or_trusted_network()
    return jsonify(payments.get_payment(principal, object_id(payment_id, "paymentId")))


@bp.delete("/delete-payment/<payment_id>")
def delete_payment(payment_id: str) -> tuple[Response, int, dict[str, str]]:
    principal = authenticate()
    payment_id = object_id(payment_id, "paymentId")
    return _submit(
        principal,
        "payment.delete",
        {},
        resource_id=payment_id,
        precheck=lambda: payments.deletable_payment(principal, payment_id),
    )


# -- jobs ----------------------------------------------------------------------


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> tuple[Response, int, dict[str, str]]:
    principal = authenticate()
    job = jobs.get_job(principal, object_id(job_id, "jobId"))
    response, _status, headers = _job_response(job)
    return response, 200, headers
