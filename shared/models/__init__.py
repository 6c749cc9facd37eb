"""MongoEngine documents of the service."""

from shared.models.card import Card
from shared.models.idempotency import IdempotencyRecord
from shared.models.inbox import RefundEvent
from shared.models.job import ENDED, Job, JobStatus, open_slot, status_key, update_by_status
from shared.models.ledger import LedgerEntry
from shared.models.payment import Payment, PaymentProduct, PaymentState, PaymentToken, Refund

__all__ = [
    "ENDED",
    "Card",
    "IdempotencyRecord",
    "Job",
    "JobStatus",
    "LedgerEntry",
    "Payment",
    "PaymentProduct",
    "PaymentState",
    "PaymentToken",
    "Refund",
    "RefundEvent",
    "open_slot",
    "status_key",
    "update_by_status",
]
