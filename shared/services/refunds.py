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

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bson import ObjectId
from pymongo.errors import BulkWriteError

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
    RefundRejected,
)
from shared.failpoints import failpoint
from shared.models import Card, LedgerEntry, Payment, PaymentState, PaymentToken, Refund
from shared.models.base import utcnow
from shared.money import money
from shared.services import card_ops, payment_tokens
from shared.settings import Settings

#: The server's code for a write refused by a unique index.
DUPLICATE_KEY = 11000

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
    outcome = apply_many(settings, [RefundRequest(event_id, payment_id, product_id, price)])[event_id]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@dataclass(frozen=True)
class RefundRequest:
    """One refund event to apply: a whole order (``product_id`` None) or ``price`` of one product."""

    event_id: str
    payment_id: str
    product_id: str | None = None
    price: Decimal | None = None


#: What became of one event: its refund-applied event, or why not (a
#: :class:`~shared.errors.RefundRejected` can never apply; anything else is transient).
Outcome = dict[str, Any] | Exception


@dataclass
class _Recorded:
    """A refund on its payment, and the payment's refunded amount and flag just after it."""

    payment: Payment
    refund: Refund
    refunded_amount: Decimal
    refunded: bool
    #: Recorded by this run (so not credited before it), not by an earlier delivery.
    fresh: bool


def apply_many(settings: Settings, requests: list[RefundRequest]) -> dict[str, Outcome]:
    """Apply refund events together, each once, with the steps of the module's docstring.

    Each step runs for all the events at once: one read of their payments and
    one of their cards; one compare-and-set per payment records all of its
    events (in order, each planned on the token the previous one leaves); one
    conditional update per card credits all of its events; one insert writes
    the ledger entries; one update per card settles them; the refund-applied
    events are sent together and their acknowledgements awaited together; one
    update per payment flags its refunds credited and published.  An event
    that fails leaves the later steps to its retry; the others go on.  A
    retry resumes each event where its flags say it stopped.
    """
    outcomes: dict[str, Outcome] = {}
    unique = list({r.event_id: r for r in requests}.values())
    recorded, cards = _record_many(settings, unique, outcomes)
    credited = _credit_many(settings, recorded, cards, outcomes)
    for rec in credited:
        try:
            failpoint(settings, "refund.after_credit", rec.refund.eventId)
        except Exception as exc:  # noqa: BLE001 - this event alone stops here
            outcomes[rec.refund.eventId] = exc
    credited = [rec for rec in credited if rec.refund.eventId not in outcomes]
    published = _publish_many(settings, credited, outcomes)
    _flag_many(credited, published, outcomes)
    for rec in credited:
        outcomes.setdefault(rec.refund.eventId, _applied_event(rec))
    return {r.event_id: outcomes[r.event_id] for r in requests}


def _record_many(
    settings: Settings, requests: list[RefundRequest], outcomes: dict[str, Outcome]
) -> tuple[list[_Recorded], dict[str, Card]]:
    """Step 1 for every event (one read of the payments, one of their cards, one write per payment)."""
    groups: dict[str, list[RefundRequest]] = {}
    for request in requests:
        if ObjectId.is_valid(request.payment_id):
            groups.setdefault(request.payment_id, []).append(request)
        else:
            outcomes[request.event_id] = RefundPaymentNotFound(f"No charged payment {request.payment_id}.")
    try:
        read = payment_tokens.read_many(list(groups))
        cards = card_ops.read_many(list({p.creditCardId for p, _t in read.values()}))
    except Exception as exc:  # noqa: BLE001 - the database is away: every event retries
        for request in requests:
            outcomes.setdefault(request.event_id, exc)
        return [], {}
    recorded: list[_Recorded] = []
    for payment_id, group in groups.items():
        try:
            done = _record_payment(payment_id, group, read.get(payment_id), cards, outcomes)
        except Exception as exc:  # noqa: BLE001 - this payment's events retry
            for request in group:
                outcomes.setdefault(request.event_id, exc)
            continue
        for rec in done:
            try:
                failpoint(settings, "refund.after_record", rec.refund.eventId)
            except Exception as exc:  # noqa: BLE001 - this event alone stops here
                outcomes[rec.refund.eventId] = exc
                continue
            recorded.append(rec)
    return recorded, cards


def _record_payment(
    payment_id: str,
    group: list[RefundRequest],
    got: tuple[Payment, PaymentToken] | None,
    cards: dict[str, Card],
    outcomes: dict[str, Outcome],
) -> list[_Recorded]:
    """Record a payment's events once (one compare-and-set for all); their entries, in order.

    A refund already recorded is returned first, whatever the payment's state
    now: a retry must finish what its first delivery started.  Deleting a
    payment only hides it, so its refunds still apply.  The card, read once
    for the batch before any record, is read again only after a lost race.
    """
    for attempt in range(MAX_CAS_ATTEMPTS):
        if attempt:
            got = payment_tokens.read(payment_id)
        if got is None:
            for request in group:
                outcomes[request.event_id] = RefundPaymentNotFound(f"No charged payment {payment_id}.")
            return []
        payment, token = got
        earlier = {r.eventId: r for r in payment.refunds}
        if any(r.event_id not in earlier for r in group) and (
            len(payment.refunds) < token.refunds or len(payment.products) != len(token.refunded_quantities)
        ):
            continue  # a read is not a snapshot: these fields are older than the token; read again
        card_id = payment.creditCardId
        # Read again after a lost race, for this check alone: the credit step
        # decides on the card as read before any record of the batch.
        card = card_ops.read(card_id) if attempt else cards.get(card_id)
        rejected: dict[str, Exception] = {}
        entries: list[_Recorded] = []
        planned: list[Refund] = []
        changes: dict[str, Any] = {}
        new = token
        total = money(payment.totalPrice)
        for request in group:
            done = earlier.get(request.event_id)
            if done is not None:  # recorded by an earlier delivery of this event
                entries.append(
                    _Recorded(payment, done, money(payment.refundedAmount), bool(payment.refunded), False)
                )
                continue
            try:
                if new.state != PaymentState.CHARGED:
                    raise RefundPaymentNotFound(f"No charged payment {payment_id}.")
                if card is None or card.deletedAt is not None:
                    raise RefundCardDeleted(f"The card {card_id} of payment {payment_id} was deleted.")
                refund, more, new = _plan(payment, new, request.event_id, request.product_id, request.price)
            except RefundRejected as exc:
                rejected[request.event_id] = exc
                continue
            changes.update(more)  # a later plan's values are the newer ones
            planned.append(refund)
            entries.append(
                _Recorded(payment, refund, new.refunded_amount, new.refunded_amount == total, True)
            )
        # The plans' changing inputs (refunded amount and quantities, number
        # of refunds, state) are the token's, read atomically as one field;
        # the update applies only if the payment still holds that token.
        # The rest (products, prices, total) never changes once charged.
        if planned and not payment_tokens.write(token, new, push_all__refunds=planned, **changes):
            continue
        outcomes.update(rejected)
        return entries
    raise RefundContended(f"Payment {payment_id} kept changing; its refunds will be retried.")


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


def _credit_many(
    settings: Settings, recorded: list[_Recorded], cards: dict[str, Card], outcomes: dict[str, Outcome]
) -> list[_Recorded]:
    """Steps 2-3 for every recorded event: one decision per card, one ledger insert, one settle per card.

    Returns the events whose credit and ledger entry are done (the card may
    still name them if its settle failed: a retry settles it).
    """
    by_card: dict[str, list[_Recorded]] = {}
    for rec in recorded:
        by_card.setdefault(rec.payment.creditCardId, []).append(rec)
    ledger: list[_Recorded] = []
    to_settle: dict[str, list[str]] = {}
    for card_id, recs in by_card.items():
        try:
            named = _decide_credits(settings, card_id, recs, cards.get(card_id), outcomes)
        except Exception as exc:  # noqa: BLE001 - this card's events retry
            for rec in recs:
                outcomes.setdefault(rec.refund.eventId, exc)
            continue
        ledger.extend(rec for rec in recs if rec.refund.eventId not in outcomes)
        if named:
            to_settle[card_id] = named
    try:
        _write_ledger([rec for rec in ledger if not rec.refund.credited])
    except Exception as exc:  # noqa: BLE001 - the database is away: these events retry
        for rec in ledger:
            outcomes.setdefault(rec.refund.eventId, exc)
        return []
    for card_id, names in to_settle.items():
        try:
            card_ops.settle(card_id, *names)
        except Exception as exc:  # noqa: BLE001 - these events retry (their settle is repeated)
            for rec in by_card[card_id]:
                outcomes.setdefault(rec.refund.eventId, exc)
    return [rec for rec in ledger if rec.refund.eventId not in outcomes]


def _decide_credits(
    settings: Settings, card_id: str, recs: list[_Recorded], card: Card | None, outcomes: dict[str, Outcome]
) -> list[str]:
    """Credit the card with every event of ``recs`` not credited yet, in one update; the names to settle.

    An operation is taken as applied only when its name is seen on the card
    or its ledger entry exists, never because an update matched nothing.
    The ledger is read after the card (a name is pulled only once its entry
    is written).  On the first attempt, the card read for the batch before
    any refund was recorded: an event recorded since by this run cannot have
    been credited by anyone without moving the card's version, so the
    decision's filter covers it and its ledger entry need not be looked for.
    """
    events = {_credit_name(rec.refund.eventId): rec for rec in recs}
    # Credited by an earlier delivery and flagged so: only a name left on the card to settle.
    names = [n for n, rec in events.items() if not rec.refund.credited]
    settle = [n for n, rec in events.items() if rec.refund.credited and card and n in card.inflight]
    stale = {n for n in names if not events[n].fresh}
    for attempt in range(card_ops.MAX_ATTEMPTS):
        if attempt or card is None:
            card = card_ops.read(card_id)
            stale = set(names)
        if card is None:  # pragma: no cover - a card is never removed, only marked deleted
            raise CardContended(f"Card {card_id} is missing; its refunds will be retried.")
        seen = [n for n in names if n in card.inflight]
        settle.extend(seen)  # credited; its bookkeeping is not finished
        names = [n for n in names if n not in card.inflight]
        asked = [n for n in names if n in stale]
        if asked:
            written = {e.id for e in LedgerEntry.objects(id__in=asked).only("id")}
            names = [n for n in names if n not in written]
        if attempt and names:  # credited by an earlier version of this code
            legacy = Card.objects(id=card_id).only("credits").first()
            marked = set(legacy.credits if legacy is not None else [])
            names = [n for n in names if events[n].refund.eventId not in marked]
        if not names:
            break
        amount = sum((money(events[n].refund.amount) for n in names), Decimal("0"))
        if card_ops.decide_many(
            card,
            names,
            filters={"credits__nin": [events[n].refund.eventId for n in names]},
            changes={"inc__money": amount},
        ):
            settle.extend(names)
            break
    else:
        raise CardContended(f"Card {card_id} kept changing; its refunds will be retried.")
    for name, rec in events.items():
        if rec.refund.credited:
            continue
        try:
            failpoint(settings, "refund.after_card_credit", rec.refund.eventId)
        except Exception as exc:  # noqa: BLE001 - this event alone stops here (its credit is made)
            outcomes[rec.refund.eventId] = exc
            settle = [n for n in settle if n != name]
    return settle


def _write_ledger(recs: list[_Recorded]) -> None:
    """The credits' ledger entries, in one insert; an entry written by an earlier delivery stays."""
    if not recs:
        return
    documents = [
        LedgerEntry(
            id=_credit_name(rec.refund.eventId),
            cardId=rec.payment.creditCardId,
            kind="credit",
            amount=money(rec.refund.amount),
            paymentId=str(rec.payment.id),
        ).to_mongo()
        for rec in recs
    ]
    try:
        LedgerEntry._get_collection().insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise


def _publish_many(settings: Settings, recs: list[_Recorded], outcomes: dict[str, Outcome]) -> list[_Recorded]:
    """Step 4: the refund-applied events not published yet, sent together; those acknowledged."""
    pending = [rec for rec in recs if not rec.refund.published]
    answers = events.publish_many(
        settings,
        settings.topic_refund_applied,
        [(_applied_event(rec), str(rec.payment.id)) for rec in pending],
    )
    for rec, error in zip(pending, answers, strict=True):
        if error is not None:
            outcomes[rec.refund.eventId] = error
    return [rec for rec in pending if rec.refund.eventId not in outcomes]


def _flag_many(credited: list[_Recorded], published: list[_Recorded], outcomes: dict[str, Outcome]) -> None:
    """Mark the refunds credited (and published) on their payments: one update per payment."""
    sent = {rec.refund.eventId for rec in published}
    by_payment: dict[str, list[_Recorded]] = {}
    for rec in credited:
        if not (rec.refund.credited and rec.refund.published):
            by_payment.setdefault(str(rec.payment.id), []).append(rec)
    for payment_id, recs in by_payment.items():
        both = [r.refund.eventId for r in recs if r.refund.eventId in sent or r.refund.published]
        only = [r.refund.eventId for r in recs if r.refund.eventId not in both]
        try:
            if both:
                _flag(payment_id, both, "credited", "published")
            if only:
                _flag(payment_id, only, "credited")
        except Exception as exc:  # noqa: BLE001 - these events retry (their flags are set again)
            for rec in recs:
                outcomes.setdefault(rec.refund.eventId, exc)


def _flag(payment_id: str, event_ids: list[str], *flags: str) -> None:
    """Set flags of refund entries (filtered by ``_id`` alone, so found by index)."""
    Payment.objects(id=payment_id).update_one(
        __raw__={"$set": {f"refunds.$[refund].{flag}": True for flag in flags}},
        array_filters=[{"refund.eventId": {"$in": event_ids}}],
    )


def _applied_event(rec: _Recorded) -> dict[str, Any]:
    payment, refund = rec.payment, rec.refund
    return {
        "eventId": f"refund-applied:{refund.eventId}",
        "sourceEventId": refund.eventId,
        "paymentId": str(payment.id),
        "creditCardId": payment.creditCardId,
        "kind": refund.kind,
        "productId": refund.productId,
        "quantity": refund.quantity,
        "amount": money(refund.amount),
        "refundedAmount": rec.refunded_amount,
        "refunded": rec.refunded,
        "occurredAt": refund.at,
    }
