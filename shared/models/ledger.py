"""Money movements on cards: the record that stays when a card or payment is deleted."""

from __future__ import annotations

from typing import Any, ClassVar

from mongoengine import DateTimeField, Decimal128Field, Document, StringField

from shared.models.base import utcnow


class LedgerEntry(Document):
    """One debit or credit; ``_id`` names its cause so it is written once."""

    meta: ClassVar[dict[str, Any]] = {"collection": "ledger", "indexes": [{"fields": ["cardId"]}]}

    id = StringField(primary_key=True)  # "debit:<paymentId>" / "credit:<eventId>"
    cardId = StringField(required=True)
    kind = StringField(required=True, choices=["debit", "credit"])
    amount = Decimal128Field(required=True, precision=2)
    paymentId = StringField(required=True)
    at = DateTimeField(default=utcnow, required=True)
