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

from bson import Decimal128, ObjectId
from mongoengine.queryset import transform
from pymongo import UpdateOne
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

    Each step runs for all the events at once, in one round trip whatever
    their number: one read of their payments and one of their cards; one bulk
    write of one compare-and-set per payment, which records all of its events
    (in order, each planned on the token the previous one leaves); one bulk
    write of one conditional update per card, which credits all of its
    events; one insert of the ledger entries; one bulk write settling the
    cards; the refund-applied events sent together and their
    acknowledgements awaited together; one bulk write flagging the refunds
    credited and published.  A conditional step whose bulk answer says that
    not every update matched reads what it wrote again and decides again (a
    bulk write says how many matched, not which).  An event that fails
    leaves the later steps to its retry; the others go on.  A retry resumes
    each event where its flags say it stopped.
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
    """Step 1 for every event: rounds of one read of the payments and one bulk compare-and-set.

    Each payment's events are planned in order on the token the previous one
    leaves and written by one update whose filter is the token read.  If every
    update of the round matched, all are recorded; if not, the bulk answer
    does not say which, so the payments written are read again (with the
    others to retry): one whose update applied shows its refunds recorded.
    The cards returned were read before any record of this call.
    """
    wanted = {r.event_id for r in requests}
    groups: dict[str, list[RefundRequest]] = {}
    for request in requests:
        if ObjectId.is_valid(request.payment_id):
            # Keyed as the payments read are (lowercase): an id in capitals names the same payment.
            groups.setdefault(str(ObjectId(request.payment_id)), []).append(request)
        else:
            outcomes[request.event_id] = RefundPaymentNotFound(f"No charged payment {request.payment_id}.")
    try:
        read = _read_payments(list(groups), wanted)
        cards = card_ops.read_many(list({r.payment.creditCardId for r in read.values()}))
    except Exception as exc:  # noqa: BLE001 - the database is away: every event retries
        for request in requests:
            outcomes.setdefault(request.event_id, exc)
        return [], {}
    checked = cards
    recorded: list[_Recorded] = []
    pending = list(groups)
    for attempt in range(MAX_CAS_ATTEMPTS):
        if attempt:
            try:
                read = _read_payments(pending, wanted)
                # For the deletion check alone: the credit step decides on the cards as first read.
                checked = card_ops.read_many(list({r.payment.creditCardId for r in read.values()}))
            except Exception as exc:  # noqa: BLE001 - the database is away: these events retry
                _fail(outcomes, [r for pid in pending for r in groups[pid]], exc)
                return recorded, cards
        entries, again = _record_round(pending, groups, read, checked, outcomes)
        recorded.extend(entries)
        pending = again
        if not pending:
            break
    else:
        contended = RefundContended("Payments kept changing; their refunds will be retried.")
        _fail(outcomes, [r for pid in pending for r in groups[pid]], contended)
    order = {r.event_id: i for i, r in enumerate(requests)}
    done = []
    for rec in sorted(recorded, key=lambda rec: order[rec.refund.eventId]):
        try:
            failpoint(settings, "refund.after_record", rec.refund.eventId)
        except Exception as exc:  # noqa: BLE001 - this event alone stops here
            outcomes[rec.refund.eventId] = exc
            continue
        done.append(rec)
    return done, cards


def _record_round(
    pending: list[str],
    groups: dict[str, list[RefundRequest]],
    read: dict[str, _Read],
    checked: dict[str, Card],
    outcomes: dict[str, Outcome],
) -> tuple[list[_Recorded], list[str]]:
    """One round of step 1: plan each payment read, write all in one bulk; the entries, the ids to retry."""
    plans: dict[str, _PaymentPlan] = {}
    again = []
    for payment_id in pending:
        got = read.get(payment_id)
        if got is None:
            for request in groups[payment_id]:
                outcomes[request.event_id] = RefundPaymentNotFound(f"No charged payment {payment_id}.")
            continue
        plan = _plan_payment(payment_id, groups[payment_id], got, checked.get(got.payment.creditCardId))
        if plan is None:
            again.append(payment_id)  # a torn read: read again
        else:
            plans[payment_id] = plan
    writes = {pid: plan for pid, plan in plans.items() if plan.planned}
    if writes:
        try:
            result = Payment._get_collection().bulk_write(
                [UpdateOne({"token": plan.token.dump()}, plan.update()) for plan in writes.values()],
                ordered=False,
            )
            applied = result.matched_count == len(writes)
        except Exception as exc:  # noqa: BLE001 - the database is away: these events retry
            _fail(outcomes, [r for pid in writes for r in groups[pid]], exc)
            applied, plans = True, {pid: plan for pid, plan in plans.items() if pid not in writes}
        if not applied:  # which matched is not said: read them again
            again.extend(writes)
            plans = {pid: plan for pid, plan in plans.items() if pid not in writes}
    for plan in plans.values():
        outcomes.update(plan.rejected)
    return [e for plan in plans.values() for e in plan.entries], again


@dataclass
class _Read:
    """A payment as a refund needs it: without its refunds but those of the events asked about."""

    payment: Payment
    token: PaymentToken
    #: How many refunds the document holds.
    refunds: int
    #: The refunds of the events asked about, by event id.
    earlier: dict[str, Refund]


def _read_payments(payment_ids: list[str], event_ids: set[str]) -> dict[str, _Read]:
    """Payments by id in one read (by ``_id``); only the refunds of ``event_ids`` are parsed.

    A payment's refund list grows with its refunds; parsing every entry of
    every payment of a batch cost more CPU than the rest of the batch.  A
    payment stored before the token existed gets it here
    (:func:`payment_tokens.read`).
    """
    collection = Payment._get_collection()
    found: dict[str, _Read] = {}
    for row in collection.find({"_id": {"$in": [ObjectId(i) for i in payment_ids]}}):
        doc = row
        if doc.get("token") is None:
            if payment_tokens.read(doc["_id"]) is None:  # pragma: no cover - a payment is never removed
                continue
            doc = collection.find_one({"_id": row["_id"]})
            if doc is None or doc.get("token") is None:  # pragma: no cover - as above
                continue
        raw = doc.pop("refunds", None) or []
        earlier = {r["eventId"]: Refund._from_son(r) for r in raw if r.get("eventId") in event_ids}
        found[str(doc["_id"])] = _Read(
            Payment._from_son(doc), PaymentToken.load(doc["token"]), len(raw), earlier
        )
    return found


def _fail(outcomes: dict[str, Outcome], requests: list[RefundRequest], exc: Exception) -> None:
    for request in requests:
        outcomes.setdefault(request.event_id, exc)


@dataclass
class _PaymentPlan:
    """A payment's events planned on the token read: the refunds to push and the payment's changes."""

    token: PaymentToken
    new: PaymentToken
    planned: list[Refund]
    changes: dict[str, Any]
    entries: list[_Recorded]
    rejected: dict[str, Exception]

    def update(self) -> dict[str, Any]:
        """The compare-and-set's update (``payment_tokens.write``'s), as a raw document."""
        return dict(
            transform.update(
                Payment,
                set__token=self.new.dump(),
                set__version=self.new.version,
                set__updatedAt=utcnow(),
                push_all__refunds=self.planned,
                **self.changes,
            )
        )


def _plan_payment(
    payment_id: str, group: list[RefundRequest], got: _Read, card: Card | None
) -> _PaymentPlan | None:
    """Plan a payment's events in order; None if the read is torn (read again).

    A refund already recorded is returned first, whatever the payment's state
    now: a retry must finish what its first delivery started.  Deleting a
    payment only hides it, so its refunds still apply.
    """
    payment, token, earlier = got.payment, got.token, got.earlier
    if any(r.event_id not in earlier for r in group) and (
        got.refunds < token.refunds or len(payment.products) != len(token.refunded_quantities)
    ):
        return None  # a read is not a snapshot: these fields are older than the token
    plan = _PaymentPlan(token, token, [], {}, [], {})
    total = money(payment.totalPrice)
    for request in group:
        done = earlier.get(request.event_id)
        if done is not None:  # recorded by an earlier delivery of this event
            plan.entries.append(
                _Recorded(payment, done, money(payment.refundedAmount), bool(payment.refunded), False)
            )
            continue
        try:
            if plan.new.state != PaymentState.CHARGED:
                raise RefundPaymentNotFound(f"No charged payment {payment_id}.")
            if card is None or card.deletedAt is not None:
                raise RefundCardDeleted(
                    f"The card {payment.creditCardId} of payment {payment_id} was deleted."
                )
            refund, changes, plan.new = _plan(
                payment, plan.new, request.event_id, request.product_id, request.price
            )
        except RefundRejected as exc:
            plan.rejected[request.event_id] = exc
            continue
        # The plans' changing inputs (refunded amount and quantities, number
        # of refunds, state) are the token's, read atomically as one field;
        # the update applies only if the payment still holds that token.
        # The rest (products, prices, total) never changes once charged.
        plan.changes.update(changes)  # a later plan's values are the newer ones
        plan.planned.append(refund)
        amount = plan.new.refunded_amount
        plan.entries.append(_Recorded(payment, refund, amount, amount == total, True))
    return plan


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
    """Steps 2-3 for every recorded event: bulk credit decisions, one ledger insert, bulk settles.

    Returns the events whose credit and ledger entry are done (the card may
    still name them if its settle failed: a retry settles it).
    """
    by_card: dict[str, list[_Recorded]] = {}
    for rec in recorded:
        by_card.setdefault(rec.payment.creditCardId, []).append(rec)
    try:
        to_settle = _decide_credits(settings, by_card, cards, outcomes)
    except Exception as exc:  # noqa: BLE001 - the database is away: these events retry
        for rec in recorded:
            outcomes.setdefault(rec.refund.eventId, exc)
        return []
    done = [rec for rec in recorded if rec.refund.eventId not in outcomes]
    try:
        _write_ledger([rec for rec in done if not rec.refund.credited])
    except Exception as exc:  # noqa: BLE001 - the database is away: these events retry
        for rec in done:
            outcomes.setdefault(rec.refund.eventId, exc)
        return []
    # A name is pulled only once its ledger entry is written: an event given up
    # on (its card contended, say) keeps the name its credit left, or its next
    # delivery would find neither and credit it again.
    written = {_credit_name(rec.refund.eventId) for rec in done}
    to_settle = {
        cid: kept for cid, names in to_settle.items() if (kept := [n for n in names if n in written])
    }
    if to_settle:
        try:
            Card._get_collection().bulk_write(
                [card_ops.settle_op(card_id, names) for card_id, names in to_settle.items()], ordered=False
            )
        except Exception as exc:  # noqa: BLE001 - these events retry (their settle is repeated)
            for rec in done:
                outcomes.setdefault(rec.refund.eventId, exc)
            return []
    return done


def _decide_credits(
    settings: Settings,
    by_card: dict[str, list[_Recorded]],
    cards: dict[str, Card],
    outcomes: dict[str, Outcome],
) -> dict[str, list[str]]:
    """Credit each card with its events not credited yet (one bulk write a round); the names to settle.

    An operation is taken as applied only when its name is seen on the card
    or its ledger entry exists, never because an update matched nothing.
    The ledger is read after the card (a name is pulled only once its entry
    is written).  In the first round the cards are those read before any
    refund of this call was recorded: an event recorded since by this call
    cannot have been credited by anyone without moving its card's version,
    so the decision's filter covers it and its ledger entry need not be
    looked for.  If not every decision of a round matched, the cards written
    are read again (the bulk answer does not say which matched).
    """
    events = {card_id: {_credit_name(r.refund.eventId): r for r in recs} for card_id, recs in by_card.items()}
    # Credited by an earlier delivery and flagged so: only a name left on the card to settle.
    names = {cid: [n for n, r in ev.items() if not r.refund.credited] for cid, ev in events.items()}
    settle = {
        cid: [n for n, r in ev.items() if r.refund.credited and cid in cards and n in cards[cid].inflight]
        for cid, ev in events.items()
    }
    stale = {n for cid, ev in events.items() for n in names[cid] if not ev[n].fresh}
    pending = [cid for cid in by_card if names[cid]]
    for attempt in range(card_ops.MAX_ATTEMPTS):
        if not pending:
            break
        if attempt:
            cards = card_ops.read_many(pending, "credits")
            stale = {n for cid in pending for n in names[cid]}
        missing = [c for c in pending if c not in cards]  # a card is never removed, only marked deleted
        _fail_cards(outcomes, by_card, missing, CardContended("A card is missing."))
        pending = [c for c in pending if c in cards]
        _not_credited(
            pending, cards=cards, events=events, names=names, settle=settle, stale=stale, legacy=bool(attempt)
        )
        pending = [cid for cid in pending if names[cid]]
        if not pending:
            break
        ops = [_credit_op(cards[cid], [events[cid][n] for n in names[cid]]) for cid in pending]
        result = Card._get_collection().bulk_write(ops, ordered=False)
        if result.matched_count == len(ops):
            for cid in pending:
                settle[cid].extend(names[cid])
            pending = []
    else:
        contended = CardContended("Cards kept changing; their refunds will be retried.")
        _fail_cards(outcomes, by_card, pending, contended)
    _after_card_credit(settings, events, settle, outcomes)
    return {cid: names_ for cid, names_ in settle.items() if names_}


def _after_card_credit(
    settings: Settings,
    events: dict[str, dict[str, _Recorded]],
    settle: dict[str, list[str]],
    outcomes: dict[str, Outcome],
) -> None:
    """The failpoint after each credit; an event stopped there keeps its name on the card."""
    for cid, ev in events.items():
        for name, rec in ev.items():
            if rec.refund.credited or rec.refund.eventId in outcomes:
                continue
            try:
                failpoint(settings, "refund.after_card_credit", rec.refund.eventId)
            except Exception as exc:  # noqa: BLE001 - this event alone stops here (its credit is made)
                outcomes[rec.refund.eventId] = exc
                settle[cid] = [n for n in settle[cid] if n != name]


def _fail_cards(
    outcomes: dict[str, Outcome], by_card: dict[str, list[_Recorded]], card_ids: list[str], exc: Exception
) -> None:
    for cid in card_ids:
        for rec in by_card[cid]:
            outcomes.setdefault(rec.refund.eventId, exc)


def _not_credited(
    pending: list[str],
    *,
    cards: dict[str, Card],
    events: dict[str, dict[str, _Recorded]],
    names: dict[str, list[str]],
    settle: dict[str, list[str]],
    stale: set[str],
    legacy: bool,
) -> None:
    """Keep in ``names`` only the credits not made yet: not on the card, not in the ledger (read after it).

    A name on the card goes to ``settle`` (credited; its bookkeeping is not
    finished).  With ``legacy``, the card's ``credits`` list (earlier
    versions' marker) counts as made too.
    """
    for cid in pending:
        seen = [n for n in names[cid] if n in cards[cid].inflight]
        settle[cid].extend(seen)
        names[cid] = [n for n in names[cid] if n not in seen]
        if legacy:
            marked = set(cards[cid].credits or [])
            names[cid] = [n for n in names[cid] if events[cid][n].refund.eventId not in marked]
    asked = [n for cid in pending for n in names[cid] if n in stale]
    if asked:
        written = {e.id for e in LedgerEntry.objects(id__in=asked).only("id")}
        for cid in pending:
            names[cid] = [n for n in names[cid] if n not in written]


def _credit_op(card: Card, credits: list[_Recorded]) -> UpdateOne:
    """One card's credit of several events: their amounts added, their names pushed, in one update."""
    amount = sum((money(r.refund.amount) for r in credits), Decimal("0"))
    return card_ops.decide_op(
        card,
        [_credit_name(r.refund.eventId) for r in credits],
        filters={"credits__nin": [r.refund.eventId for r in credits]},
        changes={"inc__money": amount},
    )


def _write_ledger(recs: list[_Recorded]) -> None:
    """The credits' ledger entries, in one insert; an entry written by an earlier delivery stays."""
    if not recs:
        return
    now = utcnow()
    # The documents LedgerEntry(...).to_mongo() makes, built directly (a model each cost more CPU).
    documents = [
        {
            "_id": _credit_name(rec.refund.eventId),
            "cardId": rec.payment.creditCardId,
            "kind": "credit",
            "amount": Decimal128(money(rec.refund.amount)),
            "paymentId": str(rec.payment.id),
            "at": now,
        }
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
    """Mark the refunds credited (and published) on their payments: one bulk write, by ``_id``."""
    sent = {rec.refund.eventId for rec in published}
    by_payment: dict[str, list[_Recorded]] = {}
    for rec in credited:
        if not (rec.refund.credited and rec.refund.published):
            by_payment.setdefault(str(rec.payment.id), []).append(rec)
    ops = []
    for payment_id, recs in by_payment.items():
        both = [r.refund.eventId for r in recs if r.refund.eventId in sent or r.refund.published]
        only = [r.refund.eventId for r in recs if r.refund.eventId not in both]
        if both:
            ops.append(_flag_op(payment_id, both, "credited", "published"))
        if only:
            ops.append(_flag_op(payment_id, only, "credited"))
    if not ops:
        return
    try:
        Payment._get_collection().bulk_write(ops, ordered=False)
    except Exception as exc:  # noqa: BLE001 - these events retry (their flags are set again)
        for recs in by_payment.values():
            for rec in recs:
                outcomes.setdefault(rec.refund.eventId, exc)


def _flag_op(payment_id: str, event_ids: list[str], *flags: str) -> UpdateOne:
    """Set flags of refund entries (filtered by ``_id`` alone, so found by index)."""
    return UpdateOne(
        {"_id": ObjectId(payment_id)},
        {"$set": {f"refunds.$[refund].{flag}": True for flag in flags}},
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
