"""The refund inbox: hand-over, settlement and the sweep that sends again what got lost."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import UpdateOne

from shared.models import RefundEvent, status_key, update_by_status
from shared.models.base import as_utc, utcnow
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


@dataclass(frozen=True)
class Handed:
    """One event of a batch: its id and the per-event task (name and kwargs) that applies it."""

    event_id: str
    task: str
    kwargs: dict[str, Any]

    def message(self) -> dict[str, Any]:
        """The event as it travels in a batch task's message (see docs/contracts.md)."""
        return {"task": self.task, "kwargs": self.kwargs}


def hand_over_batch(sender: TaskSender, batch_task: str, events: list[Handed]) -> None:
    """Record every event of a batch in one bulk write, then send ONE task that applies them all.

    Each event gets its own inbox entry (with its own per-event task and
    kwargs), exactly as :func:`hand_over` writes it, so the sweep sends a lost
    batch's events again one by one.  The bridge commits the offsets after this.
    """
    if not events:
        return
    now = utcnow()
    RefundEvent._get_collection().bulk_write(
        [
            UpdateOne(
                {"_id": e.event_id},
                {
                    "$setOnInsert": {
                        "task": e.task,
                        "kwargs": e.kwargs,
                        "status": "received",
                        "statusKey": status_key(e.event_id, "received"),
                        "receivedAt": now,
                    },
                    "$set": {"updatedAt": now},
                },
                upsert=True,
            )
            for e in events
        ],
        ordered=False,
    )
    sender.send_task(batch_task, kwargs={"events": [e.message() for e in events]})


#: A batch touches its events only when their hand-over (or last touch) is
#: older than this: far younger than the sweep's age (``jobs.requeue_stale``,
#: 10 minutes), so a batch that starts soon after its hand-over (the usual
#: case) costs one read of the inbox, not a read and a write.
TOUCH_AFTER = timedelta(seconds=60)


def begin_batch(event_ids: Iterable[str]) -> set[str]:
    """A batch starts: touch its events still ``received``; return the ids already settled.

    One read for the whole batch, found by ``_id``, and one write, also by
    ``_id``, only for events last touched more than ``TOUCH_AFTER`` ago (a
    batch sent again by a retry or after a lost worker).  An event settled
    meanwhile may have its ``updatedAt`` moved: harmless, the sweep reads it
    only for events still ``received``.
    """
    ids = list(dict.fromkeys(event_ids))
    rows = list(RefundEvent._get_collection().find({"_id": {"$in": ids}}, {"status": 1, "updatedAt": 1}))
    settled = {row["_id"] for row in rows if row.get("status") != "received"}
    cutoff = utcnow() - TOUCH_AFTER
    recent = {row["_id"] for row in rows if (as_utc(row.get("updatedAt")) or cutoff) > cutoff}
    open_ = [i for i in ids if i not in settled and i not in recent]
    if open_:
        RefundEvent._get_collection().update_many({"_id": {"$in": open_}}, {"$set": {"updatedAt": utcnow()}})
    return settled


def settle_many(event_ids: list[str], status: str) -> None:
    """Settle events of a batch at once (those still ``received``), as :func:`settle` does one.

    One bulk write, each update by the event's ``statusKey`` alone (one unique
    index).  An entry stored before that key existed stays ``received`` here;
    the sweep sends it again and its per-event task settles it.
    """
    if not event_ids:
        return
    now = utcnow()
    RefundEvent._get_collection().bulk_write(
        [
            UpdateOne(
                {"statusKey": status_key(event_id, "received")},
                {
                    "$set": {
                        "status": status,
                        "statusKey": status_key(event_id, status),
                        "reason": None,
                        "updatedAt": now,
                    }
                },
            )
            for event_id in dict.fromkeys(event_ids)
        ],
        ordered=False,
    )


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

    By ``statusKey`` alone (:func:`shared.models.update_by_status`); an event
    stored before that key existed gets it here.
    """
    changes.setdefault("set__statusKey", status_key(event_id, "received"))
    update_by_status(RefundEvent, event_id, ["received"], **changes)


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
