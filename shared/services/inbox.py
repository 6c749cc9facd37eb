"""The refund inbox: hand-over, settlement and the sweep that sends again what got lost."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from shared.models import RefundEvent, status_key
from shared.models.base import utcnow
from shared.services.jobs import TaskSender

log = logging.getLogger(__name__)


def hand_over(sender: TaskSender, event_id: str, task: str, kwargs: dict[str, Any]) -> None:
    """Record the event (once), then send its task; the bridge commits the offset after this."""
    now = utcnow()
    RefundEvent.objects(id=event_id).update_one(
        upsert=True,
        set_on_insert__task=task,
        set_on_insert__kwargs=kwargs,
        set_on_insert__status="received",
        set_on_insert__statusKey=status_key(event_id, "received"),
        set_on_insert__receivedAt=now,
        set__updatedAt=now,
    )
    sender.send_task(task, kwargs=kwargs)


def touch(event_id: str) -> None:
    """An attempt is running: the sweep leaves a chain alone while its attempts keep coming."""
    _while_received(event_id, set__updatedAt=utcnow())


def settle(event_id: str, status: str, reason: str | None = None) -> None:
    _while_received(
        event_id,
        set__status=status,
        set__statusKey=status_key(event_id, status),
        set__reason=reason,
        set__updatedAt=utcnow(),
    )


def _while_received(event_id: str, **changes: Any) -> None:
    """Apply ``changes`` if the event is still ``received``.

    By ``statusKey`` alone (one unique index); an event stored before that
    key existed is matched by ``_id`` and status instead (a scan on the local
    server, once: it gets its key here).
    """
    if RefundEvent.objects(statusKey=status_key(event_id, "received")).update_one(**changes):
        return
    legacy = RefundEvent.objects(id=event_id).only("statusKey").first()
    if legacy is None or legacy.statusKey is not None:
        return
    changes.setdefault("set__statusKey", status_key(event_id, "received"))
    RefundEvent.objects(id=event_id, statusKey=None, status="received").update_one(**changes)


def requeue_stale(sender: TaskSender, older_than: timedelta, limit: int) -> int:
    """Send again, oldest first, at most ``limit`` events no attempt touched for ``older_than``.

    Refund tasks are idempotent.  Every attempt moves ``updatedAt``, so a chain
    still retrying is not sent a second time; an event whose refund is recorded
    but not finished when its retries ran out stays ``received`` and is sent
    again here until it is.  Each event sent is touched, so the next run takes
    the ones after it.
    """
    cutoff = utcnow() - older_than
    count = 0
    for event in (
        RefundEvent.objects(status="received", updatedAt__lt=cutoff).order_by("updatedAt").limit(limit)
    ):
        RefundEvent.objects(id=event.id).update_one(set__updatedAt=utcnow())
        sender.send_task(event.task, kwargs=event.kwargs)
        log.warning("requeued unsettled refund event %s", event.id)
        count += 1
    return count
