"""A job whose task message a broker crash lost is sent again soon, not after ten minutes.

Queued or running: a crash can lose the message of a job a worker had started too; a running
one is sent again only once no live run could have left it unmoved that long.

The chaos run (tests/chaos) proves it end to end with a real Redis crash and beat.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.models import Card, Job, JobStatus
from shared.models.base import utcnow
from shared.services import jobs
from tests.factories import JobFactory
from tests.support import ServedApp, wait_until


def lost_card_job(age_seconds: float, status: JobStatus = JobStatus.QUEUED) -> Job:
    """A card.add job accepted ``age_seconds`` ago whose task message never reached a worker."""
    at = utcnow() - timedelta(seconds=age_seconds)
    job: Job = JobFactory(status=status, createdAt=at, updatedAt=at)
    return job


#: The running jobs' threshold the beat task passes (a task's time limit, the longest backoff, a margin).
RUNNING = timedelta(seconds=200)


def sweep(celery: Any, broker_started_at: datetime | None, drained: frozenset[str] = frozenset()) -> int:
    """One run of the sweep with the beat task's thresholds (45 s queued, 200 s running)."""
    return jobs.requeue_unstarted(
        celery,
        timedelta(seconds=45),
        broker_started_at=broker_started_at,
        running_older_than=RUNNING,
        drained=drained,
    )


def unmoved_for(job: Job, seconds: float) -> bool:
    """The sweep did not touch the job (it would have moved ``updatedAt`` to now)."""
    stored: Job = Job.objects.get(id=job.id)
    return stored.updatedAt < utcnow() - timedelta(seconds=seconds)


def test_a_job_whose_message_a_broker_restart_lost_is_sent_again_and_ends(
    payment_celery: Any, payment_worker: Any, api: ServedApp
) -> None:
    lost = lost_card_job(age_seconds=50)
    fresh = lost_card_job(age_seconds=1)
    # Started before the restart, its message (a retry, a redelivery) gone with the broker's last writes.
    started = lost_card_job(age_seconds=250, status=JobStatus.RUNNING)
    # Running for less than a live run can leave it unmoved: perhaps waiting for its retry.
    retrying = lost_card_job(age_seconds=150, status=JobStatus.RUNNING)
    restarted = utcnow() - timedelta(seconds=20)
    sent = sweep(payment_celery, restarted)
    assert sent >= 2
    for job in (lost, started):
        ended = wait_until(
            lambda job=job: (got := Job.objects.get(id=job.id)).ended and got,
            timeout=60,
            message="lost job ends",
        )
        assert ended.status == JobStatus.SUCCEEDED, ended.error
        assert Card.objects(id=job.resourceId).count() == 1
    assert Job.objects.get(id=lost.id).attempts == 1
    # Neither the young job nor the one perhaps waiting for its retry was sent.
    assert Job.objects.get(id=fresh.id).status == JobStatus.QUEUED
    assert Job.objects.get(id=retrying.id).attempts == 0
    # A second sweep right away sends the young job no sooner than its own threshold.
    sweep(payment_celery, utcnow())
    assert Job.objects.get(id=fresh.id).status == JobStatus.QUEUED
    for job in (fresh, retrying):
        Job.objects(id=job.id).delete()


def test_a_job_moved_since_the_broker_restarted_is_not_sent_again(
    payment_celery: Any, payment_worker: Any, documents: None
) -> None:
    """Queued or running, a job that moved after the restart was not in the lost second of writes."""
    queued = lost_card_job(age_seconds=100)
    running = lost_card_job(age_seconds=250, status=JobStatus.RUNNING)
    restarted = utcnow() - timedelta(seconds=300)
    # (Other tests' jobs in this database may be sent: these two are the ones that count.)
    sweep(payment_celery, restarted)
    assert unmoved_for(queued, 90)
    assert unmoved_for(running, 240)
    for job in (queued, running):
        Job.objects(id=job.id).delete()


def test_a_job_waiting_in_a_long_queue_of_a_broker_that_did_not_restart_is_not_sent_twice(
    payment_celery: Any, payment_worker: Any, documents: None
) -> None:
    waiting = lost_card_job(age_seconds=300)
    running = lost_card_job(age_seconds=300, status=JobStatus.RUNNING)
    broker_up_since = utcnow() - timedelta(hours=1)
    sent = sweep(payment_celery, broker_up_since)
    assert sent == 0
    assert unmoved_for(waiting, 250)
    # Unless the broker cannot say when it started: then age alone decides, for queued jobs only
    # (a running one may be waiting for its retry; the stale sweep takes it after ten minutes).
    assert sweep(payment_celery, None) >= 1
    assert unmoved_for(running, 250)
    Job.objects(id=running.id).delete()
    wait_until(lambda: Job.objects.get(id=waiting.id).ended, timeout=60, message="job ends")


def test_the_sweep_reads_the_brokers_start_time(payment_celery: Any) -> None:
    from workers.tasks.maintenance import _broker_started_at

    started = _broker_started_at(payment_celery)
    assert started is not None
    assert started < utcnow()


def test_a_job_whose_message_a_killed_node_took_is_sent_again_once_its_queue_is_empty(
    payment_celery: Any, payment_worker: Any, api: ServedApp
) -> None:
    """No broker restart: Redis handed the message to a node that was SIGKILLed before it recorded it.

    The job stays queued with its message nowhere; once its queue holds no
    message, it is not waiting behind others, so it is sent again.
    """
    lost = lost_card_job(age_seconds=50)
    young = lost_card_job(age_seconds=1)
    broker_up_since = utcnow() - timedelta(hours=1)
    # Its queue not empty: perhaps waiting behind others; left alone.
    sweep(payment_celery, broker_up_since)
    assert unmoved_for(lost, 40)
    sent = sweep(payment_celery, broker_up_since, drained=frozenset({"card.add", "card.delete"}))
    assert sent >= 1
    ended = wait_until(
        lambda: (job := Job.objects.get(id=lost.id)).ended and job, timeout=60, message="lost job ends"
    )
    assert ended.status == JobStatus.SUCCEEDED, ended.error
    assert Card.objects(id=lost.resourceId).count() == 1
    assert Job.objects.get(id=young.id).status == JobStatus.QUEUED
    Job.objects(id=young.id).delete()


def test_the_sweep_reads_which_queues_are_empty() -> None:
    """On the real broker, under a key prefix of its own that no worker consumes."""
    import uuid

    from tests.environment import make_settings
    from workers.app import create_celery
    from workers.tasks.maintenance import drained_job_types

    app = create_celery(make_settings(CELERY_KEY_PREFIX=f"drained-{uuid.uuid4().hex}:"))
    assert drained_job_types(app) == frozenset(jobs.TASKS)
    app.send_task("cards.add", args=["a job id"])
    try:
        assert drained_job_types(app) == frozenset({"payment.pay", "payment.delete"})
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge("cards")
    assert drained_job_types(app) == frozenset(jobs.TASKS)
