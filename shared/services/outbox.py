"""The payment-accepted event, published at least once for every charged payment.

The charge publishes right after the payment is charged; a periodic task
(``outbox.publish_accepted``, run by Celery beat) publishes any charged
payment whose event Kafka has not acknowledged yet, so a Kafka outage delays
events but loses none.  Only charged payments are ever announced.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from shared import events
from shared.errors import EventNotPublished
from shared.models import Payment, PaymentState
from shared.models.base import utcnow
from shared.money import money
from shared.settings import Settings
from shared.wire import timestamp

log = logging.getLogger(__name__)


def accepted_event(payment: Payment) -> dict[str, Any]:
    """What the order service reads (``paymentId``), and a little more for others."""
    return {
        "eventId": f"payment-accepted:{payment.id}",
        "paymentId": str(payment.id),
        "checkoutId": payment.checkoutId,
        "userId": payment.userId,
        "totalPrice": money(payment.totalPrice),
        "occurredAt": timestamp(payment.updatedAt),
    }


def publish_accepted(settings: Settings, payment: Payment, timeout: float = 15.0) -> None:
    """Publish one payment's accepted event and mark it sent once Kafka acknowledged it."""
    value = accepted_event(payment)
    events.publish(settings, settings.topic_payment_accepted, value, key=str(payment.id), timeout=timeout)
    Payment.objects(id=payment.id).update_one(
        set__acceptedEventPublished=True, set__acceptedEventPublishedAt=utcnow()
    )


#: After a failed publish, charges skip publishing for this long (the outbox
#: task retries), so a Kafka outage does not slow every charge by a timeout.
PAUSE_AFTER_FAILURE_SECONDS = 10.0
_paused_until = 0.0


def try_publish_accepted(settings: Settings, payment: Payment) -> bool:
    """Publish now if Kafka answers; otherwise leave it to the periodic task."""
    global _paused_until  # noqa: PLW0603 - a per-process circuit breaker
    if time.monotonic() < _paused_until:
        return False
    try:
        publish_accepted(settings, payment, timeout=5.0)
        return True
    except EventNotPublished as exc:
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
        log.warning("payment-accepted event of %s left in the outbox: %s", payment.id, exc.detail)
        return False


def publish_pending(settings: Settings, older_than_seconds: float = 5.0, limit: int = 500) -> int:
    """Publish the events of charged payments not yet acknowledged; return how many were sent.

    Only payments charged a moment ago are left alone, to let their charge
    publish first; publishing twice is allowed (at least once), never skipping.
    """
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    pending = (
        Payment.objects(state=PaymentState.CHARGED, acceptedEventPublished=False, updatedAt__lt=cutoff)
        .order_by("updatedAt")
        .limit(limit)
    )
    sent = 0
    for payment in pending:
        publish_accepted(settings, payment)  # an outage raises: the task retries later
        sent += 1
    return sent
