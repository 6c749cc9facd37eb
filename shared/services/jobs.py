"""Jobs: every write is recorded before its task is sent, and moved on by the worker.

A job carries ids and non-sensitive values only (``params``); its task gets
the job id alone, so no card data travels through the broker or shows in
Flower.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from bson import ObjectId
from mongoengine import Q
from mongoengine.errors import NotUniqueError

from shared.errors import (
    IdempotencyKeyReused,
    JobNotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyOpenJobs,
)
from shared.logs import log_context
from shared.models import ENDED, IdempotencyRecord, Job, JobStatus, open_slot, status_key, update_by_status
from shared.models.base import find_one, find_one_and_update, utcnow
from shared.principal import Principal
from shared.services.views import Deleted, JobResult, to_bson

log = logging.getLogger(__name__)

#: Job type -> the public name of the Celery task that runs it.
TASKS = {
    "card.add": "cards.add",
    "card.delete": "cards.delete",
    "payment.pay": "payments.charge",
    "payment.delete": "payments.delete",
}


class TaskSender(Protocol):
    def send_task(self, name: str, args: Any = ..., **options: Any) -> Any: ...


def request_hash(key: bytes, payload: dict[str, Any]) -> str:
    """A keyed digest of a request, to compare Idempotency-Key replays.

    ``key`` is the request-hash key (``shared.keys.request_hash_key``), never
    the fingerprint key.  The payload must hold only what is stored anyway
    (the job's params, the path): the digest is kept beside them, so any
    low-entropy secret in it (a CVV: 1,000 values) would be found by trying
    each value.  Keyed (HMAC) all the same, so that the stored digest tells
    nothing to someone without the key.
    """
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def submit(
    sender: TaskSender,
    *,
    job_type: str,
    owner: str,
    params: dict[str, Any],
    resource_id: str | None,
    req_hash: str,
    idempotency_key: str | None,
    precheck: Callable[[], object] | None = None,
    open_limit: int | None = None,
) -> tuple[Job, bool]:
    """Record a job and queue its task; return the job and whether it is new.

    With an Idempotency-Key, the same key and request from the same user give
    the same job, even when sent concurrently (the key's record has a unique
    ``_id``); the same key with another request is refused.  ``precheck``
    runs only for a new job (a replay answers with the job it already made).
    With ``open_limit``, a user who already has that many queued or running
    jobs is refused (:class:`TooManyOpenJobs`) and nothing is stored.
    """
    job_id = ObjectId()
    job = Job(
        id=job_id,
        type=job_type,
        ownerId=owner,
        params=params,
        resourceId=resource_id,
        requestHash=req_hash,
        statusKey=status_key(job_id, JobStatus.QUEUED),
    )
    record: IdempotencyRecord | None = None
    if idempotency_key is not None:
        record_id = hashlib.sha256(f"{owner}\x00{idempotency_key}".encode()).hexdigest()
        existing = IdempotencyRecord.objects(id=record_id).first()
        if existing is not None:
            return _replay(existing, req_hash), False
        if precheck is not None:
            try:
                precheck()
            except ServiceError:
                # A concurrent request with this key may have made the very
                # thing the precheck now finds; then the answer is its job.
                existing = IdempotencyRecord.objects(id=record_id).first()
                if existing is not None:
                    return _replay(existing, req_hash), False
                raise
        # The job first, then the key: whoever loses the race on the key
        # finds the winner's job already stored.
        _insert_holding_a_slot(job, open_limit)
        record = IdempotencyRecord(id=record_id, requestHash=req_hash, jobId=str(job.id))
        try:
            record.save(force_insert=True)
        except NotUniqueError:
            job.delete()
            return _replay(IdempotencyRecord.objects.get(id=record_id), req_hash), False
    else:
        if precheck is not None:
            precheck()
        _insert_holding_a_slot(job, open_limit)
    try:
        sender.send_task(TASKS[job_type], args=[str(job.id)])
    except Exception as exc:
        # Not queued, so not accepted: undo, and let the client try again.
        log.exception("could not queue job %s", job.id)
        job.delete()
        if record is not None:
            record.delete()
        raise ServiceUnavailable("The job could not be queued; nothing was accepted.") from exc
    return job, True


#: Inserts tried with a free slot read just before, when other submissions of the user keep taking it.
MAX_SLOT_ATTEMPTS = 5
#: With a cap this large, a taken slot is most likely one of few: other random slots are tried
#: before the held ones are read (a read that lists every slot of the cap).
MANY_SLOTS = 64
RANDOM_RETRIES = 3


def _insert_holding_a_slot(job: Job, open_limit: int | None) -> None:
    """Insert ``job`` holding one of its owner's ``open_limit`` slots; refuse it if every slot is held.

    A slot is the job's ``openSlot`` (unique index), released by the update
    that ends the job.  The first insert tries a random slot (a user seldom
    holds many; with a large cap, a few other random ones follow); if those
    are held, one read by the index finds the held ones and the insert tries
    a free one.  Nothing is stored for a refused job, and the unique index
    never admits one job more than the cap, however many submissions race.
    """
    if open_limit is None:
        job.save(force_insert=True)
        return
    slot = random.randrange(open_limit)  # noqa: S311 - spreads the first tries, not a secret
    for attempt in range(MAX_SLOT_ATTEMPTS + RANDOM_RETRIES):
        job.openSlot = open_slot(job.ownerId, slot)
        try:
            job.save(force_insert=True)
            return
        except NotUniqueError as exc:
            if "openSlot" not in str(exc):
                raise
        if open_limit >= MANY_SLOTS and attempt < RANDOM_RETRIES:
            slot = random.randrange(open_limit)  # noqa: S311 - most slots of a large cap are free
            continue
        free = _free_slots(job.ownerId, open_limit)
        if not free:
            raise TooManyOpenJobs(
                f"At most {open_limit} jobs of a user may be queued or running; wait for one to end.",
                extra={"openJobLimit": open_limit},
                retry_after=1,
            )
        slot = random.choice(free)  # noqa: S311
    raise ServiceUnavailable("Other requests of this user kept taking the free job slots; retry.")


def _free_slots(owner: str, open_limit: int) -> list[int]:
    """The slots of ``owner`` no open job holds; a slot left on an ended job is released here.

    By the unique ``openSlot`` alone, reading only the slot and the status.
    Every path that ends a job releases its slot in the same update
    (:func:`move`); one ended otherwise (by hand, or by an older version) is
    released here.  An ended job never takes a slot again, so its slot is
    released without a race.
    """
    slots = [open_slot(owner, k) for k in range(open_limit)]
    held = set()
    found = Job._get_collection().find({"openSlot": {"$in": slots}}, {"openSlot": 1, "status": 1})
    for job in found:
        if job.get("status") in ENDED:
            Job.objects(openSlot=job["openSlot"]).update_one(unset__openSlot=True)
        else:
            held.add(job["openSlot"])
    return [k for k, slot in enumerate(slots) if slot not in held]


def _replay(record: IdempotencyRecord, req_hash: str) -> Job:
    if not hmac.compare_digest(record.requestHash, req_hash):
        raise IdempotencyKeyReused("This Idempotency-Key was sent before with a different request.")
    job = Job.objects(id=record.jobId).first()
    if job is None:  # the first request failed to queue it and undid it
        raise ServiceUnavailable("The first request with this Idempotency-Key was not accepted; retry.")
    return job


#: What a job's view and its owner check read; never its parameters or request digest.
VIEW_FIELDS = (
    "type",
    "ownerId",
    "status",
    "attempts",
    "result",
    "error",
    "resourceId",
    "createdAt",
    "updatedAt",
)


def get_job(principal: Principal, job_id: str) -> Job:
    """A job its owner (or an admin) may read; anyone else's is not found.

    One read by ``_id`` of the fields the answer shows: a poll is the most
    frequent request of all.
    """
    job = find_one(Job, {"id": job_id}, *VIEW_FIELDS)
    if job is None or not (principal.is_admin or principal.owns(job.ownerId)):
        raise JobNotFound(f"No job {job_id}.")
    return job


def wait_for_end(job: Job, seconds: float, poll: float = 0.1) -> Job:
    """Re-read the job until it ends or ``seconds`` pass (a bounded poll).

    One read by ``_id`` of the view's fields per poll, without the queryset
    that ``Document.reload`` builds for it (a waiting client polls ten times
    a second).
    """
    deadline = time.monotonic() + seconds
    while not job.ended and time.monotonic() < deadline:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        job = find_one(Job, {"id": job.id}, *VIEW_FIELDS) or job
    return job


# -- the worker's side ------------------------------------------------------


def move(job_id: object, from_statuses: list[JobStatus], to: JobStatus, **changes: Any) -> bool:
    """Move a job from one of ``from_statuses`` to ``to`` with ``changes``; True if this update did.

    By the job's ``statusKey`` alone (:func:`shared.models.update_by_status`);
    a job stored before that key existed gets it here (such jobs end or expire).
    A job that ends releases its open-job slot in the same update.
    """
    changes = {"set__status": to, "set__statusKey": status_key(job_id, to), **changes}
    if to in ENDED:
        changes["unset__openSlot"] = True
    return update_by_status(Job, job_id, list(from_statuses), **changes)


def start(job_id: str) -> Job | None:
    """Mark the job running and count the attempt; None if it already ended.

    One round trip (findAndModify on the job's ``statusKey``).  The image it
    returns is read for the job's type, owner and parameters, which never
    change; its ``attempts`` is for the logs (on the local server an AFTER
    image is not a snapshot).
    """
    keys = [status_key(job_id, status) for status in (JobStatus.QUEUED, JobStatus.RUNNING)]
    job = find_one_and_update(
        Job,
        {"statusKey__in": keys},
        set__status=JobStatus.RUNNING,
        set__statusKey=status_key(job_id, JobStatus.RUNNING),
        inc__attempts=1,
        set__updatedAt=utcnow(),
    )
    if job is None and move(  # a job stored before statusKey existed
        job_id,
        [JobStatus.QUEUED, JobStatus.RUNNING],
        JobStatus.RUNNING,
        inc__attempts=1,
        set__updatedAt=utcnow(),
    ):
        job = Job.objects(id=job_id).first()
    return job


def succeed(job_id: str, result: JobResult, *, retention: timedelta) -> None:
    """End the job with its result; it expires ``retention`` from now."""
    updates: dict[str, Any] = {}
    if not isinstance(result, Deleted):  # the resource the job made (a payment's id is known only now)
        updates["set__resourceId"] = result.id
    now = utcnow()
    move(
        job_id,
        [JobStatus.RUNNING],
        JobStatus.SUCCEEDED,
        set__result=to_bson(result),
        set__error=None,
        set__updatedAt=now,
        set__expiresAt=now + retention,
        **updates,
    )


def fail(job_id: str, error: ServiceError, *, retention: timedelta) -> None:
    """End the job with its error; it expires ``retention`` from now."""
    now = utcnow()
    move(
        job_id,
        [JobStatus.RUNNING],
        JobStatus.FAILED,
        set__error=error.to_dict(),
        set__updatedAt=now,
        set__expiresAt=now + retention,
    )


def run(job_id: str, work: Callable[[Job], JobResult], *, retention: timedelta) -> None:
    """Run a job's work once; typed errors that are final end the job.

    Retryable errors propagate, so that the task retries; the caller ends the
    job with :func:`fail` when its retries run out.
    """
    job = start(job_id)
    if job is None:
        log.info("job %s already ended; redelivered message ignored", job_id)
        return
    with log_context(user_id=job.ownerId, job_type=job.type, attempt=job.attempts):
        try:
            result = work(job)
        except ServiceError as error:
            if error.retryable:
                raise
            fail(job_id, error, retention=retention)
            log.info("job failed: %s", error.code)
            return
        succeed(job_id, result, retention=retention)
        log.info("job succeeded")


def requeue_stale(
    sender: TaskSender, older_than: timedelta, limit: int, extra_job_ids: list[str] | None = None
) -> int:
    """Send again the tasks of at most ``limit`` jobs nobody moved for ``older_than``; return how many.

    A job can be left behind when the web process dies between storing it and
    sending its task, or when a worker cannot end it (the database away).  The
    tasks are idempotent, so sending one again is safe; ``extra_job_ids``
    names jobs to send first (reopened charges).  The oldest go first; each
    one sent is touched, so the next run takes the ones after it: a backlog
    drains over several runs instead of flooding the broker in one.
    """
    cutoff = utcnow() - older_than
    stale: dict[str, str] = {}
    for job in Job.objects(id__in=(extra_job_ids or [])[:limit]).only("id", "type"):
        stale[str(job.id)] = job.type
    if len(stale) < limit:
        oldest = (
            Job.objects(status__in=[JobStatus.QUEUED, JobStatus.RUNNING], updatedAt__lt=cutoff)
            .order_by("updatedAt")
            .only("id", "type")
            .limit(limit)
        )
        for job in oldest:
            if len(stale) >= limit:
                break
            stale[str(job.id)] = job.type
    for job_id, job_type in stale.items():
        Job.objects(id=job_id).update_one(set__updatedAt=utcnow())
        sender.send_task(TASKS[job_type], args=[job_id])
        log.warning("requeued stale job %s (%s)", job_id, job_type)
    return len(stale)


def requeue_unstarted(
    sender: TaskSender,
    older_than: timedelta,
    broker_started_at: datetime | None,
    limit: int = 1000,
    *,
    running_older_than: timedelta | None = None,
    drained: frozenset[str] = frozenset(),
) -> int:
    """Send again the tasks of jobs whose message the broker may have lost; return how many.

    A message can be lost in two ways the stale sweep would leave for 10 minutes:

    - a broker that crashes loses its last second of writes (Redis' append-only
      file is synced every second): possibly a task the web had answered 202
      for, or the message of a job a worker had started (a retry it sent, a
      message a dying pool process handed back);
    - a worker node killed at the instant it takes a message loses it: Redis
      hands a message over by removing it from the queue (BRPOP), and the
      node records it as unacknowledged only after that.

    So a ``queued`` job nothing moved for ``older_than`` is sent again if its
    last move came before the broker (re)started (``broker_started_at``), or
    if its type is in ``drained``: the job types whose queue holds no message
    now, so the job's message is not waiting in it.  A ``running`` job is sent
    again only after a broker restart, once nothing moved it for
    ``running_older_than`` (if given), which the caller makes longer than a
    live run can leave its job unmoved (an attempt's time limit plus the
    longest backoff before the next), so that a second chain of retries is
    not started beside a live one.  Safe either way: every job task is
    idempotent and a job that has ended ignores its message.  A job merely
    waiting in a long queue of a broker that has not restarted is left alone
    (sending it again would only lengthen the queue).  When the broker's start
    time is unknown (``None``), every job queued longer than ``older_than`` is
    sent again, and running ones are left to the stale sweep.  Each send moves
    ``updatedAt``, so a job is sent again only once more time has passed.
    """
    now = utcnow()
    queued_cutoff = now - older_than
    restart_cutoff = queued_cutoff if broker_started_at is None else min(queued_cutoff, broker_started_at)
    wanted = Q(status=JobStatus.QUEUED, updatedAt__lt=restart_cutoff)
    if drained:
        wanted |= Q(status=JobStatus.QUEUED, type__in=sorted(drained), updatedAt__lt=queued_cutoff)
    running_cutoff = None
    if broker_started_at is not None and running_older_than is not None:
        running_cutoff = min(now - running_older_than, broker_started_at)
        wanted |= Q(status=JobStatus.RUNNING, updatedAt__lt=running_cutoff)
    count = 0
    for job in Job.objects(wanted).only("id", "type", "status", "updatedAt").limit(limit):
        if job.status == JobStatus.RUNNING:
            assert running_cutoff is not None  # matched only with a running cutoff
            cutoff = running_cutoff
        else:
            cutoff = queued_cutoff if job.type in drained else restart_cutoff
        moved = Job.objects(id=job.id, status=job.status, updatedAt__lt=cutoff).update_one(
            set__updatedAt=utcnow()
        )
        if not moved:  # moved meanwhile, or sent by a concurrent sweep
            continue
        sender.send_task(TASKS[job.type], args=[str(job.id)])
        log.warning("requeued job %s (%s, %s): its message may have been lost", job.id, job.type, job.status)
        count += 1
    return count


def purge_expired(limit: int) -> int:
    """Delete at most ``limit`` ended jobs whose ``expiresAt`` has passed; return how many.

    MongoDB's TTL monitor does this by itself (the TTL index on ``expiresAt``);
    the MongoDB-protocol server of the local stack keeps the index but never
    removes anything, so this sweep makes expiry hold on both.  Only ended
    jobs carry ``expiresAt``; a job reopened meanwhile has lost it.
    """
    now, ended = utcnow(), list(ENDED)
    expired = [job.id for job in Job.objects(expiresAt__lt=now, status__in=ended).only("id").limit(limit)]
    if not expired:
        return 0
    deleted: int = Job.objects(id__in=expired, expiresAt__lt=now, status__in=ended).delete()
    return deleted
