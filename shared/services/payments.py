"""Payments: charging a checkout to a card exactly once, reading and deleting payments.

The charge is a small state machine stored in the database, so that a retry
(after a timeout, a crash between any two steps, a redelivered message, or a
second worker) resumes where the last attempt stopped:

1. **claim**: insert the payment in state ``pending``; ``checkoutId`` is
   unique, so one job per checkout gets past this point.
2. **decide** the debit on the card (shared/services/card_ops.py): one
   conditional update either takes the money, if the balance suffices, or
   refuses it, and leaves ``debit:`` or ``nodebit:<paymentId>:<jobId>`` in
   ``card.inflight``; the card's version in the filter makes that decision
   once per job, so a payment is never both failed and debited.
3. **record**: the ledger entry ``debit:<paymentId>`` (written once), then
   the payment becomes ``charged`` (visible; its accepted event is left in
   the outbox for the publisher), or ``failed`` if the debit was refused.
4. **settle**: the card forgets the operation.

Every conditional update of the payment (marking it charged or failed,
taking over a failed checkout) is computed from the payment's concurrency
token and filters on that token alone (shared/services/payment_tokens.py).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bson import ObjectId
from mongoengine.errors import NotUniqueError

from shared.errors import (
    AlreadyPaid,
    CardContended,
    CardExpired,
    CardNotFound,
    CheckoutNotFound,
    Forbidden,
    InsufficientFunds,
    PaymentNotFound,
    ServiceError,
)
from shared.failpoints import failpoint
from shared.models import (
    Card,
    Job,
    JobStatus,
    LedgerEntry,
    Payment,
    PaymentProduct,
    PaymentState,
    PaymentToken,
)
from shared.models.base import find_one, utcnow
from shared.money import money
from shared.pan import mask
from shared.principal import Principal
from shared.services import card_ops, jobs, outbox, payment_tokens, views
from shared.services.cards import is_expired
from shared.services.checkout import Checkout, fetch_checkout
from shared.services.views import BASE
from shared.settings import Settings


def _already_paid(payment: Payment) -> AlreadyPaid:
    """409 with where to look: the payment once charged, the job charging it until then."""
    if payment.state == PaymentState.CHARGED:
        extra = {"paymentId": str(payment.id), "links": {"payment": f"{BASE}/find/{payment.id}"}}
        return AlreadyPaid("This checkout is already paid.", extra=extra)
    links = {"job": f"{BASE}/jobs/{payment.jobId}"}
    return AlreadyPaid("Another request is paying this checkout.", extra={"links": links})


def charge(settings: Settings, job: Job) -> views.Payment:
    """Run (or resume) the charge of ``job``; return the payment as reads show it."""
    checkout_id, card_id, owner = job.params["checkoutId"], job.params["cardId"], job.ownerId
    job_id = str(job.id)
    # By the unique checkoutId alone: the local MongoDB-protocol server uses an
    # index only for a filter on exactly its fields (the job is checked here).
    # A job's first attempt goes straight to the claim, whose insert finds any
    # payment of the checkout anyway (a later attempt usually resumes one).
    found: Payment | None = Payment.objects(checkoutId=checkout_id).first() if job.attempts != 1 else None
    card: Card | None = None
    if found is None or found.jobId != job_id:
        payment, card = _claim(settings, job, checkout_id, card_id, owner, existing=found)
        failpoint(settings, "charge.after_claim", job_id)
    else:
        payment = found
    # Whether the payment in hand is as stored: each write below that matched
    # is applied to it too, so it is read again only when one did not.
    known = True
    if payment.state == PaymentState.PENDING:
        failpoint(settings, "charge.before_debit", job_id)
        if _decide_debit(payment, job_id, card):
            failpoint(settings, "charge.after_debit", job_id)
            known = _record_and_mark_charged(payment, job_id)
            failpoint(settings, "charge.after_charged", job_id)
        else:
            known = False  # the reason is read from the card when the payment says failed
            _end_pending(payment, job_id, PaymentState.FAILED)
    debited_card = payment.creditCardId  # this job's card (a later job may pay with another)
    if not known:
        payment.reload()
    if payment.jobId == job_id and payment.state == PaymentState.PENDING:  # pragma: no cover - decided above
        raise CardContended(f"The debit of payment {payment.id} is not recorded yet.")
    # The outcome is on the payment now (or the payment went on to another job
    # after this one's charge failed): the card may forget the operation.
    card_ops.settle(debited_card, *_debit_names(str(payment.id), job_id))
    if payment.jobId != job_id or payment.state == PaymentState.FAILED:
        raise _no_debit_reason(payment)
    if not payment.acceptedEventPublished:
        outbox.publish_soon(settings, payment)
    return views.Payment.of(payment)


#: What the claim reads of the card: the payment's copy of it, and what a debit decision depends on.
_CLAIM_CARD_FIELDS = ("cardHolderName", "last4", "expireDate", *card_ops.DECISION_FIELDS)


def _claim(
    settings: Settings, job: Job, checkout_id: str, card_id: str, owner: str, *, existing: Payment | None
) -> tuple[Payment, Card | None]:
    """Claim the checkout for ``job``; the payment, and the card as read before a new payment existed.

    ``existing`` is the checkout's payment as the caller read it (another
    job's).  The card is returned only with a payment inserted here: read
    before that payment existed, nothing can have decided on the card for it
    since without moving the card's version, so the debit decision can start
    from this read (one read of the card and one of the payment fewer).
    """
    if existing is not None and existing.state != PaymentState.FAILED:
        if existing.userId != owner:
            raise CheckoutNotFound(f"No checkout {checkout_id}.")
        raise _already_paid(existing)
    checkout = fetch_checkout(settings, checkout_id)
    if checkout.userId != owner:
        # Someone else's checkout is, to this caller, a checkout that does not exist.
        raise CheckoutNotFound(f"No checkout {checkout_id}.")
    if not checkout.isActive:
        raise AlreadyPaid("This checkout is no longer active: it was already paid.")
    # By _id alone (an index), the owner and the deletion checked here.
    card = find_one(Card, {"id": card_id}, "cardUserId", *_CLAIM_CARD_FIELDS)
    if card is None or card.cardUserId != owner or card.deletedAt is not None:
        raise CardNotFound(f"No card {card_id}.")
    if is_expired(card.expireDate, datetime.now(UTC).date()):
        raise CardExpired(f"The card expired at the end of {card.expireDate}.")
    fields = _payment_fields(checkout, card, owner, str(job.id))
    payment = Payment(id=ObjectId(), **fields)
    payment.token = PaymentToken.of(payment).dump()
    try:
        payment.save(force_insert=True)
        return payment, card
    except NotUniqueError:
        pass
    # Another job holds the checkout, unless its charge failed: then take it over.
    # Never this job's own failed charge: its refusal was decided once, for good.
    _take_over_failed(checkout_id, fields)
    current = Payment.objects(checkoutId=checkout_id).first()
    if current is not None and current.jobId == str(job.id):
        # Taken over just now, or claimed by another run of this job (a duplicate message): resume it.
        return current, None
    if current is None:  # pragma: no cover - a payment is never removed
        raise CheckoutNotFound(f"No checkout {checkout_id}.")
    raise _already_paid(current)


def _take_over_failed(checkout_id: str, fields: dict[str, Any]) -> bool:
    """Give the checkout's payment to this job if its charge failed; True if this update did.

    The decision is the token's (read by the unique checkoutId), the update
    filters on that token: a payment that left ``failed`` since is not taken.
    """
    for _ in range(payment_tokens.MAX_ATTEMPTS):
        existing = Payment.objects(checkoutId=checkout_id).only("id").first()
        got = None if existing is None else payment_tokens.read(existing.id, "id")
        if got is None:
            return False
        _, token = got
        if token.state != PaymentState.FAILED or token.job_id == fields["jobId"]:
            return False
        new = token.next(
            state=PaymentState.PENDING,
            job_id=fields["jobId"],
            refunded_amount=fields["refundedAmount"],
            refunded_quantities=tuple(0 for _ in fields["products"]),
        )
        changes = {f"set__{k}": v for k, v in fields.items() if k not in ("checkoutId", "state", "jobId")}
        if payment_tokens.write(
            token, new, set__state=PaymentState.PENDING, set__jobId=fields["jobId"], **changes
        ):
            return True
    raise CardContended(f"The payment of checkout {checkout_id} kept changing; the charge will be retried.")


def _end_pending(payment: Payment, job_id: str, state: PaymentState, **changes: Any) -> bool:
    """Move the payment from ``pending`` under ``job_id`` to ``state``; True if this update did.

    Decided from the token alone; nothing is written if the payment is not
    (any more) this job's pending payment.  The token in hand is tried first
    (the filter on it makes that safe however old it is), then the stored one.
    """
    token = PaymentToken.load(payment.token) if payment.token else None
    for _ in range(payment_tokens.MAX_ATTEMPTS):
        if token is None or token.state != PaymentState.PENDING or token.job_id != job_id:
            got = payment_tokens.read(payment.id, "id")
            if got is None:
                return False
            _, token = got
            if token.state != PaymentState.PENDING or token.job_id != job_id:
                return False
        new, now = token.next(state=state), utcnow()
        if payment_tokens.write(token, new, now=now, set__state=state, **changes):
            payment.token, payment.updatedAt = new.dump(), now
            return True
        token = None
    raise CardContended(f"Payment {payment.id} kept changing; the charge will be retried.")


def _payment_fields(checkout: Checkout, card: Card, owner: str, job_id: str) -> dict[str, Any]:
    return {
        "userId": owner,
        "checkoutId": checkout.id,
        "basketId": checkout.basketId,
        "creditCardId": str(card.id),
        "shipmentId": checkout.shipmentId,
        "products": [
            PaymentProduct(
                productId=p.productId,
                quantity=p.quantity,
                price=p.price,
                isRefunded=False,
                refundedQuantity=0,
                sellerId=p.sellerId,
            )
            for p in checkout.products
        ],
        "address": checkout.address,
        "isGift": checkout.isGift,
        "status": checkout.status,
        "totalPrice": money(checkout.totalPrice),
        "refunded": False,
        "refundedAmount": Decimal("0.00"),
        "cardHolderName": card.cardHolderName,
        "cardNumber": mask(card.last4),
        "expireDate": card.expireDate,
        "paymentStatus": False,
        "state": PaymentState.PENDING,
        "jobId": job_id,
    }


def _debit_names(payment_id: str, job_id: str) -> tuple[str, str]:
    """The card operation of one job's debit of a payment: applied, refused."""
    return f"debit:{payment_id}:{job_id}", f"nodebit:{payment_id}:{job_id}"


def _decide_debit(payment: Payment, job_id: str, card_before_claim: Card | None = None) -> bool:
    """Take the total off the card, or refuse to, once per job; True if taken.

    The card is read first, the payment after it: a decision's name is pulled
    from the card only once the payment records the outcome, so a name that
    is gone is found there.  The conditional update repeats the card's
    version, so it cannot apply after another run decided.  A card read
    before this payment was inserted (``card_before_claim``) may stand for
    the first read: no decision on this payment can be older than the
    payment, and any newer one moved the version, so the first update then
    matches nothing and the loop reads both again.
    """
    payment_id = str(payment.id)
    applied, refused = _debit_names(payment_id, job_id)
    total = money(payment.totalPrice)
    legacy = {"debits__ne": payment_id}  # a debit marked by an earlier version of this code
    for attempt in range(card_ops.MAX_ATTEMPTS):
        card: Card | None
        if attempt == 0 and card_before_claim is not None:
            card = card_before_claim
        else:
            card = card_ops.read(payment.creditCardId)
            if card is None:  # pragma: no cover - a card is never removed, only marked deleted
                return False
            known = _debit_outcome(card, payment, job_id, check_legacy=attempt > 0)
            if known is not None:
                return known
        if card.deletedAt is None and money(card.money) >= total:
            if card_ops.decide(
                card,
                applied,
                excludes=(refused,),
                filters={"deletedAt": None, "money__gte": total, **legacy},
                changes={"inc__money": -total},
            ):
                return True
        else:
            why = {"deletedAt__ne": None} if card.deletedAt is not None else {"money__lt": total}
            if card_ops.decide(card, refused, excludes=(applied,), filters={**why, **legacy}):
                return False
    raise CardContended(f"Card {payment.creditCardId} kept changing; the charge will be retried.")


def _debit_outcome(card: Card, payment: Payment, job_id: str, *, check_legacy: bool) -> bool | None:
    """Whether this job's debit was applied (True) or refused (False); None if not decided."""
    payment_id = str(payment.id)
    applied, refused = _debit_names(payment_id, job_id)
    if applied in card.inflight or refused in card.inflight:
        return applied in card.inflight
    # Read after the card: a name is pulled only once the payment records its
    # outcome.  State and job from the token: one field, read atomically.
    got = payment_tokens.read(payment.id, "id")
    if got is None or got[1].job_id != job_id or got[1].state == PaymentState.FAILED:
        return False  # refused (another job may have taken the checkout since)
    if got[1].state == PaymentState.CHARGED:
        return True
    if check_legacy and Card.objects(id=card.id, debits=payment_id).only("id").first() is not None:
        return True
    return None


def _no_debit_reason(payment: Payment) -> ServiceError:
    card = Card.objects(id=payment.creditCardId).only("deletedAt").first()
    if card is None or card.deletedAt is not None:
        return CardNotFound(f"No card {payment.creditCardId}.")
    return InsufficientFunds(f"The card holds less than {money(payment.totalPrice)}.")


def _record_and_mark_charged(payment: Payment, job_id: str) -> bool:
    """Write the ledger entry and mark the payment charged; True if this call marked it (and ``payment``)."""
    with contextlib.suppress(NotUniqueError):  # recorded by an earlier attempt
        LedgerEntry(
            id=f"debit:{payment.id}",
            cardId=payment.creditCardId,
            kind="debit",
            amount=money(payment.totalPrice),
            paymentId=str(payment.id),
        ).save(force_insert=True)
    marked = _end_pending(payment, job_id, PaymentState.CHARGED, set__paymentStatus=True)
    if marked:
        payment.state, payment.paymentStatus = PaymentState.CHARGED, True
    return marked


def visible_payment(principal: Principal, payment_id: str) -> Payment:
    """A charged, live payment the caller may see; anything else is not found."""
    # By _id alone (an index); the state and the deletion are checked here.
    payment = find_one(Payment, {"id": payment_id})
    if payment is None or payment.state != PaymentState.CHARGED or payment.deletedAt is not None:
        raise PaymentNotFound(f"No payment {payment_id}.")
    if not (principal.reads_all_payments or principal.owns(payment.userId)):
        raise PaymentNotFound(f"No payment {payment_id}.")
    return payment


def deletable_payment(principal: Principal, payment_id: str) -> Payment:
    """A payment the caller may delete: its owner's or any, for an admin.

    A service token may read payments but not delete them (403); anyone else
    learns nothing (404).
    """
    payment = visible_payment(principal, payment_id)
    if principal.is_admin or principal.owns(payment.userId):
        return payment
    if principal.reads_all_payments:
        raise Forbidden("This token may read payments but not delete them.")
    raise PaymentNotFound(f"No payment {payment_id}.")


def resume_stale_charges(older_than: timedelta, limit: int) -> list[str]:
    """Jobs of at most ``limit`` charges left pending longer than ``older_than``, reopened to be run again.

    A charge whose retries ran out after it claimed its checkout (say, the
    database was away for minutes) must not stay half-done: the debit may have
    happened.  Its job is reopened (and no longer expires) and resumes the
    state machine; releasing the checkout instead could race a debit still in
    flight.  The oldest go first; the rest wait for the next run.
    """
    cutoff = utcnow() - older_than
    reopened = []
    pending = Payment.objects(state=PaymentState.PENDING, updatedAt__lt=cutoff).order_by("updatedAt")
    for payment in pending.only("jobId").limit(limit):
        jobs.move(
            payment.jobId,
            [JobStatus.FAILED],
            JobStatus.QUEUED,
            set__error=None,
            set__updatedAt=utcnow(),
            unset__expiresAt=True,
        )
        reopened.append(payment.jobId)
    return reopened


def get_payment(principal: Principal, payment_id: str) -> views.Payment:
    return views.Payment.of(visible_payment(principal, payment_id))


def delete_payment(job: Job) -> views.Deleted:
    """Hide the payment from reads; the debit and ledger stay on record."""
    payment_id = job.resourceId
    payment = Payment.objects(id=payment_id).only("deletedAt").first()
    if payment is None:
        raise PaymentNotFound(f"No payment {payment_id}.")
    if payment.deletedAt is None:
        # By _id alone; $min keeps the first deletion's time if another run won.
        now = utcnow()
        Payment.objects(id=payment_id).update_one(min__deletedAt=now, set__updatedAt=now)
    return views.Deleted(deleted=payment_id)
