"""Refunds from the order service's events: each event credits the card exactly once.

An event (identified by the Kafka coordinates of its message, the topic's id
included, so a topic deleted and created again starts new ids) is applied in
steps a retry can resume:

1. **record** on the payment, by compare-and-set on the payment's token
   (shared/services/payment_tokens.py): the refund entry, the products'
   refunded quantities and the refunded amount, checked against what was
   paid (never more than was paid for the payment or for the product).  The
   entry's presence makes the event applied once.
2. **credit** the card: one conditional update adds the amount and leaves
   ``credit:<eventId>`` in ``card.inflight`` (shared/services/card_ops.py);
   it is taken as applied only when that name or the ledger entry is seen,
   never because an update matched nothing.
3. **ledger** entry ``credit:<eventId>``, written once; the entry is marked
   credited; the card forgets the operation.
4. **publish** the refund-applied event; the entry is marked published.

Once step 1 is done the event is never dead-lettered: retries and the inbox
sweep finish it (workers/app.py).

Anything that can never be applied (unknown payment, product not in the
payment, an amount that is not whole units, over-refund, deleted card) is a
:class:`~shared.errors.RefundRejected` and changes nothing.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

from bson import ObjectId
from mongoengine.errors import NotUniqueError

from shared import events
from shared.errors import (
    CardContended,
    NothingToRefund,
    NotWholeUnits,
    OverRefund,
    ProductNotInPayment,
    RefundCardDeleted,
    RefundContended,
    RefundPaymentNotFound,
)
from shared.failpoints import failpoint
from shared.models import Card, LedgerEntry, Payment, PaymentState, PaymentToken, Refund
from shared.models.base import utcnow
from shared.money import money
from shared.services import card_ops, payment_tokens
from shared.settings import Settings

#: How often a refund is re-planned when a concurrent refund changed the payment.
MAX_CAS_ATTEMPTS = 50


def refund_order(settings: Settings, event_id: str, payment_id: str) -> dict[str, Any]:
    """Refund whatever of the payment is not refunded yet (a whole-order refund)."""
    return _apply(settings, event_id, payment_id, product_id=None, price=None)


def refund_product(
    settings: Settings, event_id: str, payment_id: str, *, product_id: str, price: Decimal
) -> dict[str, Any]:
    """Refund ``price`` of one product: ``price / unit price`` whole units of it."""
    return _apply(settings, event_id, payment_id, product_id=product_id, price=money(price))


def _apply(
    settings: Settings,
    event_id: str,
    payment_id: str,
    *,
    product_id: str | None,
    price: Decimal | None,
) -> dict[str, Any]:
    refund = _record(event_id, payment_id, product_id, price)
    failpoint(settings, "refund.after_record", event_id)
    payment = Payment.objects.get(id=payment_id)
    if not refund.credited:
        _credit(settings, payment, refund)
        failpoint(settings, "refund.after_credit", event_id)
    else:  # credited and recorded: the card may still name it after a crash
        card_ops.settle(payment.creditCardId, _credit_name(event_id))
    # The payment as read holds the refund's bookkeeping already (recorded in step 1).
    applied = _applied_event(payment, refund)
    if not refund.published:
        events.publish(settings, settings.topic_refund_applied, applied, key=payment_id)
        _flag(payment_id, event_id, "published")
    return applied


def _record(event_id: str, payment_id: str, product_id: str | None, price: Decimal | None) -> Refund:
    """Record the refund on the payment once (compare-and-set); return its entry.

    A refund already recorded is returned first, whatever the payment's state
    now: a retry must finish what its first delivery started.  Deleting a
    payment only hides it, so its refunds still apply.
    """
    if not ObjectId.is_valid(payment_id):
        raise RefundPaymentNotFound(f"No charged payment {payment_id}.")
    for _ in range(MAX_CAS_ATTEMPTS):
        got = payment_tokens.read(payment_id)
        if got is None:
            raise RefundPaymentNotFound(f"No charged payment {payment_id}.")
        payment, token = got
        done = next((r for r in payment.refunds if r.eventId == event_id), None)
        if done is not None:
            return done  # recorded by an earlier delivery of this event
        if len(payment.refunds) < token.refunds or len(payment.products) != len(token.refunded_quantities):
            continue  # a read is not a snapshot: these fields are older than the token; read again
        if token.state != PaymentState.CHARGED:
            raise RefundPaymentNotFound(f"No charged payment {payment_id}.")
        card = Card.objects(id=payment.creditCardId).only("deletedAt").first()
        if card is None or card.deletedAt is not None:
            raise RefundCardDeleted(f"The card {payment.creditCardId} of payment {payment_id} was deleted.")
        refund, changes, new = _plan(payment, token, event_id, product_id, price)
        # The plan's changing inputs (refunded amount and quantities, number
        # of refunds, state) are the token's, read atomically as one field;
        # the update applies only if the payment still holds that token.
        # The rest (products, prices, total) never changes once charged.
        if payment_tokens.write(token, new, push__refunds=refund, **changes):
            return refund
    raise RefundContended(f"Payment {payment_id} kept changing; refund {event_id} will be retried.")


def _plan(
    payment: Payment, token: PaymentToken, event_id: str, product_id: str | None, price: Decimal | None
) -> tuple[Refund, dict[str, Any], PaymentToken]:
    """The refund entry, the payment's changes, and the payment's next token.

    What refunds change is taken from ``token``, never from the payment's
    own fields (which a read may show from another write).
    """
    total = money(payment.totalPrice)
    refunded = token.refunded_amount
    remaining = total - refunded
    if product_id is None:
        if remaining <= 0:
            raise NothingToRefund(f"Payment {payment.id} is already refunded in full.")
        changes: dict[str, Any] = {"set__refunded": True, "set__refundedAmount": total}
        for i, item in enumerate(payment.products):
            changes[f"set__products__{i}__refundedQuantity"] = item.quantity
            changes[f"set__products__{i}__isRefunded"] = True
        refund = Refund(eventId=event_id, kind="order", amount=remaining, at=utcnow())
        new = token.next(
            refunds=token.refunds + 1,
            refunded_amount=total,
            refunded_quantities=tuple(item.quantity for item in payment.products),
        )
        return refund, changes, new
    if price is None:  # pragma: no cover - refund_product always passes one
        raise ValueError("a product refund needs a price")
    index = next((i for i, p in enumerate(payment.products) if p.productId == product_id), None)
    if index is None:
        raise ProductNotInPayment(f"Payment {payment.id} has no product {product_id}.")
    product = payment.products[index]
    unit = money(product.price)
    if unit <= 0:
        raise NotWholeUnits(f"Product {product_id} was free: there are no units to refund.")
    units = price / unit
    if units != units.to_integral_value() or units < 1:
        raise NotWholeUnits(f"{price} is not a whole number of units of {unit}.")
    quantity = int(units)
    already = token.refunded_quantities[index]
    left = product.quantity - already
    if quantity > left or price > remaining:
        raise OverRefund(f"{quantity} units of {product_id} asked, {left} not refunded yet.")
    new_refunded = refunded + price
    changes = {
        f"set__products__{index}__refundedQuantity": already + quantity,
        # A product is refunded once all its units are.
        f"set__products__{index}__isRefunded": already + quantity == product.quantity,
        "set__refundedAmount": new_refunded,
        "set__refunded": new_refunded == total,
    }
    quantities = list(token.refunded_quantities)
    quantities[index] = already + quantity
    new = token.next(
        refunds=token.refunds + 1, refunded_amount=new_refunded, refunded_quantities=tuple(quantities)
    )
    refund = Refund(
        eventId=event_id, kind="product", productId=product_id, quantity=quantity, amount=price, at=utcnow()
    )
    return refund, changes, new


def is_recorded(payment_id: str, event_id: str) -> bool:
    """The event's refund is on the payment: it must be finished, never set aside."""
    if not ObjectId.is_valid(payment_id):
        return False
    # By _id alone (an index); the entry is looked for here.
    payment = Payment.objects(id=payment_id).only("refunds").first()
    return payment is not None and any(r.eventId == event_id for r in payment.refunds)


def _credit_name(event_id: str) -> str:
    return f"credit:{event_id}"


def _credit(settings: Settings, payment: Payment, refund: Refund) -> None:
    amount = money(refund.amount)
    card_id, name = payment.creditCardId, _credit_name(refund.eventId)
    for attempt in range(card_ops.MAX_ATTEMPTS):
        card = card_ops.read(card_id)
        if card is None:  # pragma: no cover - a card is never removed, only marked deleted
            raise CardContended(f"Card {card_id} is missing; refund {refund.eventId} will be retried.")
        if name in card.inflight:
            break  # credited; its bookkeeping is not finished
        # Read after the card: the name is pulled only once the entry is written.
        if LedgerEntry.objects(id=name).only("id").first() is not None:
            break
        if attempt and Card.objects(id=card_id, credits=refund.eventId).only("id").first() is not None:
            break  # credited by an earlier version of this code
        if card_ops.decide(
            card, name, filters={"credits__ne": refund.eventId}, changes={"inc__money": amount}
        ):
            break
    else:
        raise CardContended(f"Card {card_id} kept changing; refund {refund.eventId} will be retried.")
    failpoint(settings, "refund.after_card_credit", refund.eventId)
    with contextlib.suppress(NotUniqueError):  # written by an earlier delivery
        LedgerEntry(
            id=name,
            cardId=card_id,
            kind="credit",
            amount=amount,
            paymentId=str(payment.id),
        ).save(force_insert=True)
    _flag(str(payment.id), refund.eventId, "credited")
    card_ops.settle(card_id, name)


def _flag(payment_id: str, event_id: str, flag: str) -> None:
    """Set a flag of the event's refund entry (filtered by ``_id`` alone, so found by index)."""
    Payment.objects(id=payment_id).update_one(
        __raw__={"$set": {f"refunds.$[refund].{flag}": True}},
        array_filters=[{"refund.eventId": event_id}],
    )


def _applied_event(payment: Payment, refund: Refund) -> dict[str, Any]:
    return {
        "eventId": f"refund-applied:{refund.eventId}",
        "sourceEventId": refund.eventId,
        "paymentId": str(payment.id),
        "creditCardId": payment.creditCardId,
        "kind": refund.kind,
        "productId": refund.productId,
        "quantity": refund.quantity,
        "amount": money(refund.amount),
        "refundedAmount": money(payment.refundedAmount),
        "refunded": payment.refunded,
        "occurredAt": refund.at,
    }
