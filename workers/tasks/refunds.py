"""Refund tasks, sent by the Kafka bridge by name.

Idempotent per event id (the message's topic:topicId:partition:offset), so
they acknowledge late and are redelivered if their worker dies.

The bridge sends one ``refunds.apply_batch`` per polled batch of events;
``refunds.refund_order`` and ``refunds.refund_product`` apply one event each:
the inbox sweep sends them, a batch sends an event on as one of them when it
fails transiently, and messages sent before batches existed still run.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from celery import shared_task

from shared.money import money
from shared.services import refunds
from shared.settings import Settings
from workers.app import EventWork, PaymentTask

#: Transient failures (Kafka or MongoDB away) are retried this often before
#: the event is set aside on the dead-letter topic for an operator, unless its
#: refund is recorded: then the inbox sweep sends it again until it is finished.
MAX_RETRIES = 20

REFUND_ORDER = "refunds.refund_order"
REFUND_PRODUCT = "refunds.refund_product"
APPLY_BATCH = "refunds.apply_batch"


def order_work(
    settings: Settings,
    *,
    event_id: str,
    payment_id: str,
    total_price: str | None = None,
    raw: str | None = None,
) -> EventWork:
    """What applies a whole-order refund event, and what tells whether it is recorded."""
    # The amount in the message is not trusted: what remains unrefunded is refunded.
    del total_price, raw
    return (
        lambda: refunds.refund_order(settings, event_id, payment_id),
        lambda: refunds.is_recorded(payment_id, event_id),
    )


def product_work(
    settings: Settings,
    *,
    event_id: str,
    payment_id: str,
    product_id: str,
    price: str,
    raw: str | None = None,
) -> EventWork:
    """What applies a product refund event, and what tells whether it is recorded."""
    del raw
    return (
        lambda: refunds.refund_product(
            settings, event_id, payment_id, product_id=product_id, price=Decimal(price)
        ),
        lambda: refunds.is_recorded(payment_id, event_id),
    )


def order_request(
    *, event_id: str, payment_id: str, total_price: str | None = None, raw: str | None = None
) -> refunds.RefundRequest:
    """A whole-order refund event of a batch (its per-event task's kwargs)."""
    del total_price, raw
    return refunds.RefundRequest(event_id, payment_id)


def product_request(
    *, event_id: str, payment_id: str, product_id: str, price: str, raw: str | None = None
) -> refunds.RefundRequest:
    """A product refund event of a batch (its per-event task's kwargs)."""
    del raw
    return refunds.RefundRequest(event_id, payment_id, product_id, money(Decimal(price)))


#: Per-event task name -> its request; a batch's events name one of these.
REQUESTS: dict[str, Callable[..., refunds.RefundRequest]] = {
    REFUND_ORDER: order_request,
    REFUND_PRODUCT: product_request,
}


def apply_events(settings: Settings, batch: list[dict[str, Any]]) -> dict[str, refunds.Outcome]:
    """Apply a batch's per-event messages together; what became of each, by event id."""
    outcomes: dict[str, refunds.Outcome] = {}
    requests = []
    for event in batch:
        try:
            requests.append(REQUESTS[event["task"]](**event["kwargs"]))
        except Exception as exc:  # noqa: BLE001 - it goes on as its own task, which says why
            outcomes[event["kwargs"]["event_id"]] = exc
    outcomes.update(refunds.apply_many(settings, requests))
    return outcomes


@shared_task(
    bind=True,
    name=REFUND_ORDER,
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
    work, recorded = order_work(
        self.settings, event_id=event_id, payment_id=payment_id, total_price=total_price
    )
    self.run_event(event_id, raw, work, recorded=recorded)


@shared_task(
    bind=True,
    name=REFUND_PRODUCT,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def refund_product(
    self: PaymentTask, *, event_id: str, payment_id: str, product_id: str, price: str, raw: str | None = None
) -> None:
    work, recorded = product_work(
        self.settings, event_id=event_id, payment_id=payment_id, product_id=product_id, price=price
    )
    self.run_event(event_id, raw, work, recorded=recorded)


@shared_task(
    bind=True,
    name=APPLY_BATCH,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def apply_batch(self: PaymentTask, *, events: list[dict[str, Any]]) -> None:
    """Apply a batch of events in order, each once (see PaymentTask.run_batch)."""
    self.run_batch(events, lambda chunk: apply_events(self.settings, chunk))
