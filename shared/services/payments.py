"""Payments: charging a checkout to a card exactly once, reading and deleting payments.

The charge is a small state machine stored in the database, so that a retry
(after a timeout, a crash between any two steps, a redelivered message, or a
second worker) resumes where the last attempt stopped:

1. **claim**: insert the payment in state ``pending``; ``checkoutId`` is
   unique, so one job per checkout gets past this point.
2. **debit**: one conditional update of the card takes the money and records
   the payment id in ``card.debits``, only if the balance suffices and the id
   is not there yet: a debit is applied once, never lost, never overdraws.
3. **record**: the ledger entry ``debit:<paymentId>`` (written once).
4. **charged**: the payment becomes visible; its accepted event is left in
   the outbox (``acceptedEventPublished = false``) for the publisher.
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
    CardExpired,
    CardNotFound,
    CheckoutNotFound,
    Forbidden,
    InsufficientFunds,
    PaymentNotFound,
    ServiceError,
)
from shared.failpoints import failpoint
from shared.models import Card, Job, LedgerEntry, Payment, PaymentProduct, PaymentState
from shared.models.base import utcnow
from shared.money import money
from shared.pan import mask
from shared.principal import Principal
from shared.services import outbox
from shared.services.cards import is_expired
from shared.services.checkout import Checkout, fetch_checkout
from shared.services.views import BASE, payment_view
from shared.settings import Settings


def _already_paid(payment: Payment) -> AlreadyPaid:
    """409 with where to look: the payment once charged, the job charging it until then."""
    if payment.state == PaymentState.CHARGED:
        extra = {"paymentId": str(payment.id), "links": {"payment": f"{BASE}/find/{payment.id}"}}
        return AlreadyPaid("This checkout is already paid.", extra=extra)
    links = {"job": f"{BASE}/jobs/{payment.jobId}"}
    return AlreadyPaid("Another request is paying this checkout.", extra={"links": links})


def charge(settings: Settings, job: Job) -> dict[str, Any]:
    """Run (or resume) the charge of ``job``; return the payment as reads show it."""
    checkout_id, card_id, owner = job.params["checkoutId"], job.params["cardId"], job.ownerId
    payment = Payment.objects(checkoutId=checkout_id, jobId=str(job.id)).first()
    if payment is None:
        payment = _claim(settings, job, checkout_id, card_id, owner)
        failpoint(settings, "charge.after_claim", str(job.id))
    elif payment.state == PaymentState.FAILED:
        # An earlier attempt failed the charge and died before ending the job.
        raise _no_debit_reason(payment)
    if payment.state == PaymentState.PENDING:
        _debit(payment)
        failpoint(settings, "charge.after_debit", str(job.id))
        _record_and_mark_charged(payment)
        failpoint(settings, "charge.after_charged", str(job.id))
    payment.reload()
    if not payment.acceptedEventPublished:
        outbox.try_publish_accepted(settings, payment)
    return payment_view(payment)


def _claim(settings: Settings, job: Job, checkout_id: str, card_id: str, owner: str) -> Payment:
    existing = Payment.objects(checkoutId=checkout_id).first()
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
    card = Card.objects(id=card_id, cardUserId=owner, deletedAt=None).first()
    if card is None:
        raise CardNotFound(f"No card {card_id}.")
    if is_expired(card.expireDate, datetime.now(UTC).date()):
        raise CardExpired(f"The card expired at the end of {card.expireDate}.")
    fields = _payment_fields(checkout, card, owner, str(job.id))
    payment = Payment(id=ObjectId(), **fields)
    try:
        payment.save(force_insert=True)
        return payment
    except NotUniqueError:
        pass
    # Another job holds the checkout, unless its charge failed: then take it over.
    taken = Payment.objects(checkoutId=checkout_id, state=PaymentState.FAILED).update_one(
        **{f"set__{k}": v for k, v in fields.items() if k != "checkoutId"}, set__updatedAt=utcnow()
    )
    current = Payment.objects(checkoutId=checkout_id).first()
    if taken and current is not None and current.jobId == str(job.id):
        return current
    if current is None:  # pragma: no cover - a payment is never removed
        raise CheckoutNotFound(f"No checkout {checkout_id}.")
    raise _already_paid(current)


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


def _debit(payment: Payment) -> None:
    """Take the total off the card once: balance check, change and marker in one update."""
    payment_id = str(payment.id)
    total = money(payment.totalPrice)
    applied = Card.objects(
        id=payment.creditCardId, deletedAt=None, money__gte=total, debits__ne=payment_id
    ).update_one(inc__money=-total, push__debits=payment_id, set__updatedAt=utcnow())
    if applied:
        return
    card = Card.objects(id=payment.creditCardId).first()
    if card is not None and payment_id in card.debits:
        return  # an earlier attempt debited it
    # No money moved: release the checkout so a new request may pay it.
    Payment.objects(id=payment.id, state=PaymentState.PENDING).update_one(
        set__state=PaymentState.FAILED, set__updatedAt=utcnow()
    )
    raise _no_debit_reason(payment)


def _no_debit_reason(payment: Payment) -> ServiceError:
    card = Card.objects(id=payment.creditCardId).first()
    if card is None or card.deletedAt is not None:
        return CardNotFound(f"No card {payment.creditCardId}.")
    return InsufficientFunds(f"The card holds less than {money(payment.totalPrice)}.")


def _record_and_mark_charged(payment: Payment) -> None:
    with contextlib.suppress(NotUniqueError):  # recorded by an earlier attempt
        LedgerEntry(
            id=f"debit:{payment.id}",
            cardId=payment.creditCardId,
            kind="debit",
            amount=money(payment.totalPrice),
            paymentId=str(payment.id),
        ).save(force_insert=True)
    Payment.objects(id=payment.id, state=PaymentState.PENDING).update_one(
        set__state=PaymentState.CHARGED, set__paymentStatus=True, set__updatedAt=utcnow()
    )


def visible_payment(principal: Principal, payment_id: str) -> Payment:
    """A charged, live payment the caller may see; anything else is not found."""
    payment = Payment.objects(id=payment_id, state=PaymentState.CHARGED, deletedAt=None).first()
    if payment is None or not (principal.reads_all_payments or principal.owns(payment.userId)):
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
        Job.objects(id=payment.jobId, status="failed").update_one(
            set__status="queued", set__error=None, set__updatedAt=utcnow(), unset__expiresAt=True
        )
        reopened.append(payment.jobId)
    return reopened


def get_payment(principal: Principal, payment_id: str) -> dict[str, Any]:
    return payment_view(visible_payment(principal, payment_id))


def delete_payment(job: Job) -> dict[str, Any]:
    """Hide the payment from reads; the debit and ledger stay on record."""
    payment_id = job.resourceId
    if Payment.objects(id=payment_id).only("id").first() is None:
        raise PaymentNotFound(f"No payment {payment_id}.")
    Payment.objects(id=payment_id, deletedAt=None).update_one(
        set__deletedAt=utcnow(), set__updatedAt=utcnow()
    )
    return {"deleted": payment_id}
