"""Idempotency-Key records: one per (user, key), kept at least 24 hours."""

from __future__ import annotations

from typing import Any, ClassVar

from mongoengine import DateTimeField, Document, StringField

from shared.models.base import utcnow

#: Keys are remembered this long (api.md asks for at least 24 hours).
RETENTION_SECONDS = 48 * 3600


class IdempotencyRecord(Document):
    """``_id`` is derived from the user and the key, so a race inserts one."""

    meta: ClassVar[dict[str, Any]] = {
        "collection": "idempotency_keys",
        "indexes": [{"fields": ["createdAt"], "expireAfterSeconds": RETENTION_SECONDS}],
    }

    id = StringField(primary_key=True)
    requestHash = StringField(required=True)
    jobId = StringField(required=True)
    createdAt = DateTimeField(default=utcnow, required=True)
