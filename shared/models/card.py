"""A customer's card: never the full number in clear, never the CVV."""

from __future__ import annotations

from typing import Any, ClassVar

from mongoengine import DateTimeField, Decimal128Field, IntField, ListField, StringField

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
    #: Operations on the balance not settled yet (``debit:<paymentId>:<jobId>``,
    #: ``nodebit:<paymentId>:<jobId>``, ``credit:<eventId>``), each pushed in
    #: the same atomic update that decides it and pulled once its outcome is
    #: recorded elsewhere; so the list holds only what is in flight
    #: (shared/services/card_ops.py).
    inflight = ListField(StringField())
    #: Bumped by every update of the balance or of ``inflight``: a decision
    #: read at one version is written only if the card is still at it.  No
    #: default: a card stored before it existed has none, and the filter
    #: ``version: null`` matches that.
    version = IntField(min_value=0)
    #: Legacy markers of earlier versions (every payment and refund ever,
    #: unbounded).  No longer written; still honoured in the filters, so an
    #: operation in flight across the upgrade is not applied twice.
    debits = ListField(StringField())
    credits = ListField(StringField())
    deletedAt = DateTimeField()
