"""The payment-accepted event, published at least once for every charged payment.

A charged payment is stored with ``acceptedEventPublished: false``: that
flag is the outbox.  The charge hands the event to its process's publisher
thread (:func:`publish_soon`) and ends without waiting for Kafka; the thread
publishes it and sets the flag once Kafka acknowledged it.  The thread sends
the events handed to it within ``PUBLISH_LINGER_SECONDS`` of each other
together: one Kafka request, one wait for the acknowledgements and one flag
update for the lot, instead of one of each per charge.  A periodic task
(``outbox.publish_accepted``, run by Celery beat) publishes any charged
payment whose flag is still unset after a few seconds (the process died with
the event queued, or Kafka was away), so an outage or a crash delays events
but loses none.  Only charged payments are ever announced.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
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


def publish_accepted_many(
    settings: Settings, payments: list[Payment], timeout: float = 15.0
) -> list[EventNotPublished]:
    """Publish the payments' accepted events together; mark the acknowledged ones sent, in one update.

    Answers the errors of the events Kafka did not acknowledge (their
    payments stay unmarked, for the periodic task); empty if all went.
    """
    if not payments:
        return []
    items: list[tuple[dict[str, Any], str | None]] = [(accepted_event(p), str(p.id)) for p in payments]
    outcomes = events.publish_many(settings, settings.topic_payment_accepted, items, timeout=timeout)
    acked = [p.id for p, outcome in zip(payments, outcomes, strict=True) if outcome is None]
    if acked:
        # By _id alone (the index); marking twice is harmless (at least once).
        Payment.objects(id__in=acked).update(
            set__acceptedEventPublished=True, set__acceptedEventPublishedAt=utcnow()
        )
    return [outcome for outcome in outcomes if outcome is not None]


#: After a failed publish, charges skip publishing for this long (the outbox
#: task retries), so a Kafka outage does not slow every charge by a timeout.
PAUSE_AFTER_FAILURE_SECONDS = 10.0
_paused_until = 0.0


def try_publish_accepted(settings: Settings, payments: list[Payment]) -> bool:
    """Publish now if Kafka answers; what it did not acknowledge is left to the periodic task."""
    global _paused_until  # noqa: PLW0603 - a per-process circuit breaker
    if time.monotonic() < _paused_until:
        return False
    failed = publish_accepted_many(settings, payments, timeout=5.0)
    if failed:
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
        log.warning(
            "payment-accepted events of %d of %d payments left in the outbox: %s",
            len(failed),
            len(payments),
            failed[0].detail,
        )
        return False
    return True


#: Events waiting for a process's publisher thread at most; more are left to the periodic task.
MAX_BACKLOG = 1000

_publisher_lock = threading.Lock()
_publisher: tuple[int, queue.Queue[tuple[Settings, Payment]]] | None = None


def publish_soon(settings: Settings, payment: Payment) -> bool:
    """Hand a charged payment's event to this process's publisher thread; False if left to the outbox task.

    Call it only once the payment is stored as charged with its flag unset:
    then whatever becomes of the thread's queue (the process is killed or
    stops), the periodic task publishes the event.
    """
    if time.monotonic() < _paused_until:
        return False
    try:
        _publisher_queue().put_nowait((settings, payment))
    except queue.Full:
        return False
    return True


def _publisher_queue() -> queue.Queue[tuple[Settings, Payment]]:
    global _publisher  # noqa: PLW0603 - one publisher thread per process is process state
    pid = os.getpid()
    publisher = _publisher
    if publisher is None or publisher[0] != pid:  # none yet, or the parent's (threads do not survive a fork)
        with _publisher_lock:
            publisher = _publisher
            if publisher is None or publisher[0] != pid:
                events: queue.Queue[tuple[Settings, Payment]] = queue.Queue(MAX_BACKLOG)
                threading.Thread(
                    target=_publish_forever, args=(events,), name="accepted-events", daemon=True
                ).start()
                publisher = _publisher = (pid, events)
    return publisher[1]


#: The publisher thread waits this long after an event for others to send with it.
#: A pool process charging 30 times a second fills a batch of about six in
#: 0.2 s (one or two in 0.05 s, the value before): 0.7 ms less CPU per charge
#: (the Kafka request, its acknowledgement and the flags' update shared by
#: more), for an event that reaches Kafka about 0.2 s after its charge (plus
#: the wait for the batch before it, when Kafka is slow to acknowledge).
PUBLISH_LINGER_SECONDS = 0.2
#: Events the publisher thread sends together at most.
MAX_PUBLISH_BATCH = 200


def _publish_forever(events: queue.Queue[tuple[Settings, Payment]]) -> None:
    while True:
        batch = [events.get()]
        deadline = time.monotonic() + PUBLISH_LINGER_SECONDS
        while len(batch) < MAX_PUBLISH_BATCH:
            try:
                batch.append(events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        # One configuration per process in the service; apart, should a caller hand over several.
        by_settings: dict[int, tuple[Settings, list[Payment]]] = {}
        for settings, payment in batch:
            by_settings.setdefault(id(settings), (settings, []))[1].append(payment)
        try:
            for settings, payments in by_settings.values():
                try_publish_accepted(settings, payments)
        except Exception:  # the database did not take the flags: the events are published again later
            log.exception("payment-accepted events of %d payments: not marked published", len(batch))
        finally:
            for _ in batch:
                events.task_done()


def wait_for_publisher(timeout: float) -> bool:
    """Wait until the events handed over so far were published or left to the outbox; False on timeout."""
    publisher = _publisher
    if publisher is None or publisher[0] != os.getpid():
        return True
    deadline = time.monotonic() + timeout
    while publisher[1].unfinished_tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


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
    payments = list(pending)
    failed = publish_accepted_many(settings, payments)
    if failed:  # an outage: the acknowledged ones are marked; the task retries the rest later
        raise failed[0]
    return len(payments)
