"""A customer's card: never the full number in clear, never the CVV."""

from __future__ import annotations

from typing import Any, ClassVar

from mongoengine import DateTimeField, Decimal128Field, ListField, StringField

from shared.models.base import TimestampedDocument


class Card(TimestampedDocument):
    """The balance is Decimal128; every change is one conditional atomic update.

    ``fingerprint`` (HMAC-SHA256 of the number with CARD_FINGERPRINT_KEY) makes
    a number unique across all users without storing it. A deleted card keeps
    its row (the money movements refer to it) but gives up its fingerprint:
    it moves to ``deletedFingerprint`` and ``fingerprint`` becomes
    ``deleted:<id>``, so the number may be added again.
    """

    meta: ClassVar[dict[str, Any]] = {
        "collection": "cards",
        "indexes": [
            {"fields": ["fingerprint"], "unique": True},
            {"fields": ["cardUserId"]},
        ],
    }

    cardUserId = StringField(required=True)
    cardHolderName = StringField(required=True, max_length=100)
    fingerprint = StringField(required=True)
    deletedFingerprint = StringField()
    last4 = StringField(required=True, min_length=4, max_length=4)
    brand = StringField(required=True)
    expireDate = StringField(required=True, regex=r"^\d{2}/\d{2}$")
    money = Decimal128Field(required=True, precision=2)
    #: Payments whose debit this card took, recorded in the same atomic update
    #: as the balance change, so a retried charge never debits twice.
    debits = ListField(StringField())
    #: Refund events credited to this card, likewise.
    credits = ListField(StringField())
    deletedAt = DateTimeField()
