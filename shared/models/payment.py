"""A payment: the charge of one checkout to one card, and its refunds."""

from __future__ import annotations

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
    #: Applied refund events, and a counter every refund update checks and
    #: bumps (compare-and-set), so concurrent refunds never over-refund.
    refunds = EmbeddedDocumentListField(Refund)
    version = IntField(default=0, min_value=0)
    refundedAmount = Decimal128Field(default=Decimal("0.00"), precision=2)
    state = StringField(required=True, choices=[s.value for s in PaymentState], default=PaymentState.PENDING)
    jobId = StringField(required=True)
    deletedAt = DateTimeField()
    #: Outbox of the payment-accepted event: set once Kafka acknowledged it.
    acceptedEventPublished = BooleanField(default=False)
    acceptedEventPublishedAt = DateTimeField()
