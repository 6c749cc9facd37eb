"""What every document shares: timestamps kept by the database layer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from mongoengine import DateTimeField, Document


def utcnow() -> datetime:
    """Now, at the millisecond precision MongoDB stores, so a fresh document reads as stored."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class TimestampedDocument(Document):
    meta: ClassVar[dict[str, Any]] = {"abstract": True}

    createdAt = DateTimeField(default=utcnow, required=True)
    updatedAt = DateTimeField(default=utcnow, required=True)
