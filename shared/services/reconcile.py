"""Reconciliation: does the money add up?  Reads everything once, repairs nothing.

Two streaming passes, each a merge of two cursors sorted on the same key, so
memory holds one card or one payment (and its ledger entries) at a time,
whatever the size of the data:

1. **cards** (by ``_id``) against the ledger (by ``cardId``): every card's
   balance is its opening (``open:<cardId>``) plus its credits minus its
   debits, and is never negative.
2. **payments** (by ``_id``) against the debit and credit entries of the
   ledger (by ``paymentId``): a charged payment has exactly one debit, of its
   total, on its card, and a failed one none; every refund recorded on a
   payment has exactly one credit of its amount, and no credit exists without
   a refund; no payment or product is refunded beyond what was paid; every
   charged payment's accepted event is published.

Work in flight is not a discrepancy: a card or payment changed within the
grace period (an operation between its steps), a refund recorded but not yet
credited, or an accepted event the outbox has not sent yet, is counted and
looked at again by the next run.  A card added before openings were recorded
has no ``open:`` entry: its opening balance is unknown, so its balance cannot
be checked; it is counted (``cardsWithoutOpening``), not reported.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pymongo.database import Database

from shared.models import PaymentState
from shared.models.base import as_utc, utcnow

#: Changes younger than this are taken as in flight (an operation between its steps).
DEFAULT_GRACE_SECONDS = 60.0
#: Documents fetched per round trip: what bounds the memory of a run.
DEFAULT_BATCH_SIZE = 500

ZERO = Decimal("0.00")
Doc = Mapping[str, Any]


@dataclass(frozen=True)
class Discrepancy:
    """One thing that does not add up, with the ids an operator needs to look at it."""

    kind: str
    ids: dict[str, str]
    detail: str

    def __str__(self) -> str:
        ids = " ".join(f"{k}={v}" for k, v in self.ids.items())
        return f"{self.kind} {ids}: {self.detail}"


@dataclass
class Summary:
    """What a run looked at, what it left for the next run, and what it found."""

    cards: int = 0
    payments: int = 0
    ledgerEntries: int = 0
    refunds: int = 0
    cardsWithoutOpening: int = 0
    inFlight: int = 0
    discrepancies: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.discrepancies.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "cards": self.cards,
            "payments": self.payments,
            "ledgerEntries": self.ledgerEntries,
            "refunds": self.refunds,
            "cardsWithoutOpening": self.cardsWithoutOpening,
            "inFlight": self.inFlight,
            "discrepancies": self.total,
            "byKind": dict(sorted(self.discrepancies.items())),
        }


def _amount(value: Any) -> Decimal:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    return Decimal(value if value is not None else 0).quantize(Decimal("0.01"))


# -- the pure checks: one card, one payment -----------------------------------


def check_card(card: Doc, entries: list[Doc], cutoff: datetime, summary: Summary) -> list[Discrepancy]:
    """A card's balance against its ledger entries."""
    card_id = str(card["_id"])
    balance = _amount(card.get("money"))
    found: list[Discrepancy] = []
    if balance < ZERO:
        found.append(Discrepancy("negative_balance", {"cardId": card_id}, f"balance {balance}"))
    openings = [e for e in entries if e.get("kind") == "open"]
    if len(openings) > 1:
        ids = ", ".join(str(e["_id"]) for e in openings)
        found.append(Discrepancy("duplicate_opening", {"cardId": card_id}, f"openings {ids}"))
    if not openings:
        summary.cardsWithoutOpening += 1
        return found
    if (as_utc(card.get("updatedAt")) or cutoff) > cutoff:
        summary.inFlight += 1
        return found
    opening = sum((_amount(e["amount"]) for e in openings), ZERO)
    credits = sum((_amount(e["amount"]) for e in entries if e.get("kind") == "credit"), ZERO)
    debits = sum((_amount(e["amount"]) for e in entries if e.get("kind") == "debit"), ZERO)
    expected = opening + credits - debits
    if balance != expected:
        found.append(
            Discrepancy(
                "balance_mismatch",
                {"cardId": card_id},
                f"balance {balance}, ledger says {expected} "
                f"(opening {opening} + credits {credits} - debits {debits}; off by {balance - expected})",
            )
        )
    return found


def check_payment(payment: Doc, entries: list[Doc], cutoff: datetime, summary: Summary) -> list[Discrepancy]:
    """A payment against its debit and credit entries, its refund caps and its outbox."""
    credits = {str(e["_id"]): e for e in entries if e.get("kind") == "credit"}
    return [
        *_check_charge(payment, [e for e in entries if e.get("kind") == "debit"], cutoff, summary),
        *_check_refunds(payment, credits, cutoff, summary),
        *_check_caps(payment),
    ]


def _check_charge(payment: Doc, debits: list[Doc], cutoff: datetime, summary: Summary) -> list[Discrepancy]:
    ids = {"paymentId": str(payment["_id"])}
    state = payment.get("state")
    total = _amount(payment.get("totalPrice"))
    found: list[Discrepancy] = []
    if state == PaymentState.FAILED and debits:
        entry_ids = ", ".join(str(e["_id"]) for e in debits)
        found.append(Discrepancy("failed_but_debited", ids, f"failed, yet debited: {entry_ids}"))
    if state == PaymentState.PENDING:
        summary.inFlight += 1  # a charge between its steps; the stale sweep resumes it
    if state != PaymentState.CHARGED:
        return found
    if not debits:
        found.append(Discrepancy("charged_without_debit", ids, f"charged {total}, no debit entry"))
    elif len(debits) > 1:
        entry_ids = ", ".join(str(e["_id"]) for e in debits)
        found.append(Discrepancy("duplicate_debit", ids, f"{len(debits)} debit entries: {entry_ids}"))
    for debit in debits:
        entry = {**ids, "entryId": str(debit["_id"])}
        if _amount(debit["amount"]) != total:
            detail = f"debit {_amount(debit['amount'])}, payment total {total}"
            found.append(Discrepancy("debit_amount_mismatch", entry, detail))
        if debit.get("cardId") != payment.get("creditCardId"):
            detail = f"debit on card {debit.get('cardId')}, payment's card {payment.get('creditCardId')}"
            found.append(Discrepancy("debit_on_wrong_card", entry, detail))
    if not payment.get("acceptedEventPublished"):
        if (as_utc(payment.get("updatedAt")) or cutoff) <= cutoff:
            found.append(Discrepancy("accepted_event_not_published", ids, "charged, accepted event not sent"))
        else:
            summary.inFlight += 1  # the outbox sweep sends it within seconds
    return found


def _check_refunds(
    payment: Doc, credits: dict[str, Doc], cutoff: datetime, summary: Summary
) -> list[Discrepancy]:
    """Every refund recorded on the payment has one credit of its amount; no credit is left over."""
    ids = {"paymentId": str(payment["_id"])}
    refunds = payment.get("refunds") or []
    summary.refunds += len(refunds)
    found: list[Discrepancy] = []
    if refunds and payment.get("state") != PaymentState.CHARGED:
        detail = f"{len(refunds)} refunds, state {payment.get('state')}"
        found.append(Discrepancy("refund_of_uncharged_payment", ids, detail))
    for refund in refunds:
        event_id = str(refund.get("eventId"))
        amount = _amount(refund.get("amount"))
        refund_ids = {**ids, "eventId": event_id}
        credit = credits.pop(f"credit:{event_id}", None)
        if credit is None:
            if refund.get("credited") or (as_utc(refund.get("at")) or cutoff) <= cutoff:
                found.append(
                    Discrepancy("refund_not_credited", refund_ids, f"refund {amount}, no credit entry")
                )
            else:
                summary.inFlight += 1
        elif _amount(credit["amount"]) != amount:
            detail = f"credit {_amount(credit['amount'])}, refund {amount}"
            found.append(Discrepancy("credit_amount_mismatch", refund_ids, detail))
        elif credit.get("cardId") != payment.get("creditCardId"):
            detail = f"credit on card {credit.get('cardId')}, payment's card {payment.get('creditCardId')}"
            found.append(Discrepancy("credit_on_wrong_card", refund_ids, detail))
    for entry_id, credit in credits.items():
        detail = f"credit {_amount(credit['amount'])} matches no refund of the payment"
        found.append(Discrepancy("credit_without_refund", {**ids, "entryId": entry_id}, detail))
    return found


def _check_caps(payment: Doc) -> list[Discrepancy]:
    """Never more refunded than paid, for the payment and for each product."""
    ids = {"paymentId": str(payment["_id"])}
    total = _amount(payment.get("totalPrice"))
    refunds = payment.get("refunds") or []
    refunded = sum((_amount(r.get("amount")) for r in refunds), ZERO)
    units: Counter[str] = Counter()
    for refund in refunds:
        if refund.get("kind") == "product":
            units[str(refund.get("productId"))] += int(refund.get("quantity") or 0)
    found: list[Discrepancy] = []
    if refunded > total:
        found.append(Discrepancy("payment_over_refunded", ids, f"refunds {refunded} of a total {total}"))
    recorded = _amount(payment.get("refundedAmount"))
    if recorded != refunded:
        detail = f"refundedAmount {recorded}, refunds add to {refunded}"
        found.append(Discrepancy("refunded_amount_mismatch", ids, detail))
    for product in payment.get("products") or []:
        product_id = str(product.get("productId"))
        quantity = int(product.get("quantity") or 0)
        refunded_quantity = int(product.get("refundedQuantity") or 0)
        if refunded_quantity > quantity or units[product_id] > quantity:
            detail = f"bought {quantity}, refundedQuantity {refunded_quantity}, "
            detail += f"product refunds {units[product_id]}"
            found.append(Discrepancy("product_over_refunded", {**ids, "productId": product_id}, detail))
    return found


# -- the streaming passes -------------------------------------------------------


def _join(
    primaries: Iterable[Doc],
    primary_key: Callable[[Doc], str],
    secondaries: Iterable[Doc],
    secondary_key: Callable[[Doc], str],
) -> Iterator[tuple[str, Doc | None, list[Doc]]]:
    """Merge two streams sorted on one key: (key, primary or None, its secondaries)."""
    groups = itertools.groupby(secondaries, key=secondary_key)

    def step() -> tuple[str, list[Doc]] | None:
        group = next(groups, None)
        return None if group is None else (group[0], list(group[1]))

    pending = step()
    last = ""
    for doc in primaries:
        key = primary_key(doc)
        if key < last:
            raise RuntimeError(f"the database did not sort by key: {key!r} after {last!r}")
        last = key
        while pending is not None and pending[0] < key:
            yield pending[0], None, pending[1]
            pending = step()
        if pending is not None and pending[0] == key:
            yield key, doc, pending[1]
            pending = step()
        else:
            yield key, doc, []
    while pending is not None:
        yield pending[0], None, pending[1]
        pending = step()


def run(
    database: Database[Any],
    report: Callable[[Discrepancy], None],
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    now: datetime | None = None,
) -> Summary:
    """Check everything; hand each discrepancy to ``report`` as it is found; return the counts."""
    cutoff = (now or utcnow()) - timedelta(seconds=grace_seconds)
    summary = Summary()

    def found(discrepancy: Discrepancy) -> None:
        summary.discrepancies[discrepancy.kind] += 1
        report(discrepancy)

    def counted(entries: Iterable[Doc]) -> Iterator[Doc]:
        for entry in entries:
            summary.ledgerEntries += 1
            yield entry

    cards = database.cards.find({}, {"money": 1, "updatedAt": 1}, batch_size=batch_size).sort("_id", 1)
    ledger = database.ledger.find({}, {"cardId": 1, "kind": 1, "amount": 1}, batch_size=batch_size).sort(
        "cardId", 1
    )
    for card_id, card, entries in _join(
        cards, lambda d: str(d["_id"]), counted(ledger), lambda d: d["cardId"]
    ):
        if card is None:
            for entry in entries:
                found(
                    Discrepancy("entry_without_card", {"cardId": card_id, "entryId": str(entry["_id"])}, "")
                )
            continue
        summary.cards += 1
        for discrepancy in check_card(card, entries, cutoff, summary):
            found(discrepancy)

    payments = database.payments.find(
        {},
        {
            "state": 1,
            "totalPrice": 1,
            "creditCardId": 1,
            "updatedAt": 1,
            "acceptedEventPublished": 1,
            "refunds": 1,
            "refundedAmount": 1,
            "products.productId": 1,
            "products.quantity": 1,
            "products.refundedQuantity": 1,
        },
        batch_size=batch_size,
    ).sort("_id", 1)
    movements = database.ledger.find(
        {"kind": {"$in": ["debit", "credit"]}},
        {"cardId": 1, "kind": 1, "amount": 1, "paymentId": 1},
        batch_size=batch_size,
    ).sort("paymentId", 1)
    for payment_id, payment, entries in _join(
        payments, lambda d: str(d["_id"]), movements, lambda d: str(d.get("paymentId"))
    ):
        if payment is None:
            for entry in entries:
                found(
                    Discrepancy(
                        "entry_without_payment", {"paymentId": payment_id, "entryId": str(entry["_id"])}, ""
                    )
                )
            continue
        summary.payments += 1
        for discrepancy in check_payment(payment, entries, cutoff, summary):
            found(discrepancy)
    return summary
