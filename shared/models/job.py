"""A queued write: what a client polls after a 202."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from mongoengine import DateTimeField, DictField, Document, IntField, StringField

from shared.models.base import TimestampedDocument, update_one


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: The statuses a job never leaves.
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Job(TimestampedDocument):
    """Written before its task is sent; only the worker moves it on.

    An ended job gets ``expiresAt`` (JOB_RETENTION_DAYS after it ended) and
    MongoDB's TTL monitor removes it then; the payments, ledger entries and
    cards it made are other documents and stay.  An open job has none.
    """

    meta: ClassVar[dict[str, Any]] = {
        "collection": "jobs",
        "indexes": [
            {"fields": ["ownerId", "createdAt"]},
            # An open job holds one of its owner's slots (the open-job cap);
            # sparse: an ended job, or one stored before slots, holds none.
            {"fields": ["openSlot"], "unique": True, "sparse": True},
            # The stale-job sweep reads the oldest open jobs first.
            {"fields": ["status", "updatedAt"]},
            # Each document's own expiresAt is its expiry time.
            {"fields": ["expiresAt"], "expireAfterSeconds": 0},
            # Every change of status filters on this field alone (sparse: a
            # job stored before it existed has none).
            {"fields": ["statusKey"], "unique": True, "sparse": True},
        ],
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
    #: When the TTL index removes the ended job; unset while it is open.
    expiresAt = DateTimeField()
    #: ``status_key(id, status)``, written with every status: a change of
    #: status filters on it alone, so the unique index finds the job and the
    #: filter checks the status atomically with the write.  (The local
    #: MongoDB-protocol server uses an index only for a filter on exactly its
    #: fields; ``{_id, status}`` would scan every job.)
    statusKey = StringField()
    #: ``open_slot(ownerId, k)``, k < OPEN_JOBS_PER_USER, while the job is
    #: queued or running; unset in the same update that ends it.  A user
    #: with every slot held has as many open jobs as the cap allows: the cap
    #: is a unique key, not a count of the user's jobs (which the local
    #: MongoDB-protocol server would answer by scanning every job).
    openSlot = StringField()

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def status_key(job_id: object, status: str) -> str:
    return f"{job_id}:{status}"


def open_slot(owner: str, slot: int) -> str:
    return f"{owner}:{slot}"


def update_by_status(
    document: type[Document], doc_id: object, from_statuses: list[str], **changes: Any
) -> bool:
    """Apply ``changes`` to a job or refund event whose status is one of ``from_statuses``; True if applied.

    The filter is the document's ``statusKey`` alone (one unique index).  A
    document stored before that key existed is matched by ``_id`` and status
    instead (a scan on the local server, once: ``changes`` carry its key).
    """
    keys = [status_key(doc_id, status) for status in from_statuses]
    if update_one(document, {"statusKey__in": keys}, **changes):
        return True
    legacy = document.objects(id=doc_id).only("statusKey").first()
    if legacy is None or legacy.statusKey is not None:
        return False
    return bool(document.objects(id=doc_id, statusKey=None, status__in=from_statuses).update_one(**changes))
