"""What every document shares: timestamps kept by the database layer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from mongoengine import DateTimeField, Document


def utcnow() -> datetime:
    """Now, at the millisecond precision MongoDB stores, so a fresh document reads as stored."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(at: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (a naive one is UTC, as MongoDB stores them)."""
    if at is not None and at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at


class TimestampedDocument(Document):
    meta: ClassVar[dict[str, Any]] = {"abstract": True}

    createdAt = DateTimeField(default=utcnow, required=True)
    updatedAt = DateTimeField(default=utcnow, required=True)
