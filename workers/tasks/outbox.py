"""The outbox task: publish the payment-accepted events Kafka has not acknowledged yet."""

from __future__ import annotations

from celery import shared_task

from shared.errors import EventNotPublished
from shared.services import outbox
from workers.app import PaymentTask


@shared_task(bind=True, name="outbox.publish_accepted", max_retries=0)
def publish_accepted(self: PaymentTask) -> int:
    """Run by beat; an outage leaves the rest for the next run (nothing is lost)."""
    try:
        return outbox.publish_pending(self.settings)
    except EventNotPublished:
        return 0
