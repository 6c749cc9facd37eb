"""A payment: the charge of one checkout to one card, and its refunds."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

from mongoengine import (
    BooleanField,
    DateTimeField,
    Decimal128Field,
    EmbeddedDocument,
    EmbeddedDocumentListField,
    IntField,
    StringField,
)

from shared.models.base import TimestampedDocument
from shared.money import money


class PaymentState(StrEnum):
    """The charge's state machine; a retried charge resumes from the stored state.

    pending: the checkout is claimed by one job (unique checkoutId); the card
        may or may not have been debited yet (the card's ``inflight`` says
        while the debit is not recorded here).
    charged: the debit is applied and recorded; the payment is visible.
    failed: the card refused this job's debit (e.g. insufficient funds), a
        decision taken once on the card, so it can never be debited for this
        job after all; a new job may claim the checkout again.
    """

    PENDING = "pending"
    CHARGED = "charged"
    FAILED = "failed"


class PaymentProduct(EmbeddedDocument):
    productId = StringField(required=True)
    quantity = IntField(default=1, min_value=1)
    price = Decimal128Field(required=True, precision=2)  # unit price
    isRefunded = BooleanField(default=False, required=True)
    refundedQuantity = IntField(default=0, min_value=0, required=True)
    sellerId = StringField()


class Refund(EmbeddedDocument):
    """One applied refund event; its presence on the payment makes the event applied once."""

    eventId = StringField(
        required=True
    )  # "<topic>:<topicId>:<partition>:<offset>" of the order service's message
    kind = StringField(required=True, choices=["order", "product"])
    productId = StringField()
    quantity = IntField(min_value=0)
    amount = Decimal128Field(required=True, precision=2)
    at = DateTimeField(required=True)
    #: The card was credited and the ledger entry written.
    credited = BooleanField(default=False)
    #: The refund-applied event was acknowledged by Kafka.
    published = BooleanField(default=False)


class Payment(TimestampedDocument):
    meta: ClassVar[dict[str, Any]] = {
        "collection": "payments",
        "indexes": [
            {"fields": ["checkoutId"], "unique": True},
            {"fields": ["userId"]},
            {"fields": ["state", "acceptedEventPublished"]},
            # Every conditional update of a payment filters on this field
            # alone (PaymentToken).  Sparse: a document stored before the
            # token existed has none until its first touch gives it one.
            {"fields": ["token"], "unique": True, "sparse": True},
        ],
    }

    # The seed's fields (wire names kept).
    userId = StringField(required=True)
    checkoutId = StringField(required=True)
    basketId = StringField()
    creditCardId = StringField(required=True)
    shipmentId = StringField()
    products = EmbeddedDocumentListField(PaymentProduct)
    address = StringField()
    isGift = BooleanField(default=False)
    status = StringField(default="Pending")
    totalPrice = Decimal128Field(required=True, precision=2)
    refunded = BooleanField(default=False, required=True)
    cardHolderName = StringField(required=True)
    cardNumber = StringField(required=True)  # masked: ************4242
    expireDate = StringField(required=True)
    paymentStatus = BooleanField(default=False)

    # Ours.
    #: Applied refund events, and a counter every change of the state, the
    #: job or the refunds bumps (it is part of ``token``).
    refunds = EmbeddedDocumentListField(Refund)
    version = IntField(default=0, min_value=0)
    refundedAmount = Decimal128Field(default=Decimal("0.00"), precision=2)
    state = StringField(required=True, choices=[s.value for s in PaymentState], default=PaymentState.PENDING)
    jobId = StringField(required=True)
    deletedAt = DateTimeField()
    #: Outbox of the payment-accepted event: set once Kafka acknowledged it.
    acceptedEventPublished = BooleanField(default=False)
    acceptedEventPublishedAt = DateTimeField()
    #: The concurrency token: ``PaymentToken.dump()`` of the values every
    #: decision on the payment is computed from, set in the same atomic update
    #: as they are.  Unique (sparse) index.
    token = StringField()


@dataclass(frozen=True)
class PaymentToken:
    """What a payment's decisions depend on, in one atomically read and written field.

    The local MongoDB-protocol server uses an index only for a filter on
    exactly the index's fields, and its reads are not snapshots (a read can
    mix the fields of two writes: tests/conformance).  So a decision (mark
    charged or failed, take over a failed checkout, record a refund) is
    computed from the parsed token alone, and its update filters on
    ``{token: <the token read>}`` alone: found by the unique index, on real
    MongoDB as here, and applied only if nothing the decision read has moved.
    Every write that changes a value carried here writes the next token
    (``version`` + 1, so a token is never seen twice).
    """

    payment_id: str
    version: int
    state: str
    job_id: str
    #: How many refund entries the payment holds (they are only ever appended).
    refunds: int
    refunded_amount: Decimal
    #: ``refundedQuantity`` of each product, in the products' order.
    refunded_quantities: tuple[int, ...]

    def dump(self) -> str:
        return json.dumps(
            [
                self.payment_id,
                self.version,
                self.state,
                self.job_id,
                self.refunds,
                str(self.refunded_amount),
                list(self.refunded_quantities),
            ],
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, raw: str) -> PaymentToken:
        payment_id, version, state, job_id, refunds, amount, quantities = json.loads(raw)
        return cls(
            str(payment_id),
            int(version),
            str(state),
            str(job_id),
            int(refunds),
            money(amount),
            tuple(quantities),
        )

    @classmethod
    def of(cls, payment: Payment) -> PaymentToken:
        """The token of a payment's fields as read (a new payment's, or a legacy one's on first touch)."""
        return cls(
            payment_id=str(payment.id),
            version=payment.version or 0,
            state=str(payment.state),
            job_id=str(payment.jobId),
            refunds=len(payment.refunds or []),
            refunded_amount=money(payment.refundedAmount or Decimal("0.00")),
            refunded_quantities=tuple(int(p.refundedQuantity or 0) for p in payment.products),
        )

    def next(self, **changes: object) -> PaymentToken:
        """The token of the next write: ``changes`` applied, the version bumped."""
        return replace(self, version=self.version + 1, **changes)  # type: ignore[arg-type]
