"""A queued write: what a client polls after a 202."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from mongoengine import DictField, IntField, StringField

from shared.models.base import TimestampedDocument


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Job(TimestampedDocument):
    """Written before its task is sent; only the worker moves it on."""

    meta: ClassVar[dict[str, Any]] = {
        "collection": "jobs",
        "indexes": [{"fields": ["ownerId", "createdAt"]}],
    }

    type = StringField(required=True)  # e.g. "card.add", "payment.pay"
    ownerId = StringField(required=True)
    status = StringField(required=True, choices=[s.value for s in JobStatus], default=JobStatus.QUEUED)
    attempts = IntField(default=0, min_value=0)
    #: What the task needs, by id only (never card data in clear).
    params = DictField()
    result = DictField(null=True)
    error = DictField(null=True)
    #: The resource the job created or changed, for links.
    resourceId = StringField()
    #: SHA-256 of the request, for Idempotency-Key comparisons.
    requestHash = StringField()

    @property
    def ended(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
