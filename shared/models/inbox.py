"""The refund inbox: every refund event the bridge handed over, until it is settled."""

from __future__ import annotations

from typing import Any, ClassVar

from mongoengine import DateTimeField, DictField, Document, StringField

from shared.models.base import utcnow


class RefundEvent(Document):
    """Written by the bridge before it sends the task and commits the offset.

    A task message can still be lost after that (Celery drops a task whose
    worker died on a message Redis had already redelivered once), so the
    inbox, not the broker, is the record that the event must be applied: a
    periodic sweep sends again every event still ``received`` after a while.
    """

    meta: ClassVar[dict[str, Any]] = {
        "collection": "refund_events",
        "indexes": [
            {"fields": ["status", "updatedAt"]},
            # Touching and settling filter on this field alone (sparse: an
            # event stored before it existed has none).
            {"fields": ["statusKey"], "unique": True, "sparse": True},
        ],
    }

    id = StringField(primary_key=True)  # the event id: topic:partition:offset
    task = StringField(required=True)
    kwargs = DictField(required=True)
    status = StringField(required=True, choices=["received", "applied", "dead_lettered"], default="received")
    reason = StringField()
    receivedAt = DateTimeField(default=utcnow, required=True)
    updatedAt = DateTimeField(default=utcnow, required=True)
    #: ``status_key(id, status)``, written with every status (see Job.statusKey).
    statusKey = StringField()
