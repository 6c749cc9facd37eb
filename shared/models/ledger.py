"""Money movements on cards: the record that stays when a card or payment is deleted."""

from __future__ import annotations

from typing import Any, ClassVar

from mongoengine import DateTimeField, Decimal128Field, Document, StringField

from shared.models.base import utcnow


class LedgerEntry(Document):
    """One money movement; ``_id`` names its cause so it is written once.

    ``open:<cardId>`` is the balance a card was added with, ``debit:<paymentId>``
    a charge, ``credit:<eventId>`` a refund: a card's balance is always its
    opening plus its credits minus its debits (``python -m workers.reconcile``).
    """

    meta: ClassVar[dict[str, Any]] = {
        "collection": "ledger",
        "indexes": [{"fields": ["cardId"]}, {"fields": ["paymentId"]}],
    }

    id = StringField(primary_key=True)  # "open:<cardId>" / "debit:<paymentId>" / "credit:<eventId>"
    cardId = StringField(required=True)
    kind = StringField(required=True, choices=["open", "debit", "credit"])
    amount = Decimal128Field(required=True, precision=2)
    paymentId = StringField()  # none for an opening
    at = DateTimeField(default=utcnow, required=True)
