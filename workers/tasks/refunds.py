"""Refund tasks, sent by the Kafka bridge by name.

Idempotent per event id (the message's topic:topicId:partition:offset), so
they acknowledge late and are redelivered if their worker dies.
"""

from __future__ import annotations

from decimal import Decimal

from celery import shared_task

from shared.services import refunds
from workers.app import PaymentTask

#: Transient failures (Kafka or MongoDB away) are retried this often before
#: the event is set aside on the dead-letter topic for an operator, unless its
#: refund is recorded: then the inbox sweep sends it again until it is finished.
MAX_RETRIES = 20


@shared_task(
    bind=True,
    name="refunds.refund_order",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def refund_order(
    self: PaymentTask,
    *,
    event_id: str,
    payment_id: str,
    total_price: str | None = None,
    raw: str | None = None,
) -> None:
    # The amount in the message is not trusted: what remains unrefunded is refunded.
    del total_price
    self.run_event(
        event_id,
        raw,
        lambda: refunds.refund_order(self.settings, event_id, payment_id),
        recorded=lambda: refunds.is_recorded(payment_id, event_id),
    )


@shared_task(
    bind=True,
    name="refunds.refund_product",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def refund_product(
    self: PaymentTask, *, event_id: str, payment_id: str, product_id: str, price: str, raw: str | None = None
) -> None:
    self.run_event(
        event_id,
        raw,
        lambda: refunds.refund_product(
            self.settings, event_id, payment_id, product_id=product_id, price=Decimal(price)
        ),
        recorded=lambda: refunds.is_recorded(payment_id, event_id),
    )
