"""A job whose task message a broker crash lost is sent again soon, not after ten minutes.

Queued or running: a crash can lose the message of a job a worker had started too.

The chaos run (tests/chaos) proves it end to end with a real Redis crash and beat.
"""

from __future__ import annotations

from datetime import timedelta
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


def test_a_job_never_started_before_a_broker_restart_is_sent_again_and_ends(
    payment_celery: Any, payment_worker: Any, api: ServedApp
) -> None:
    lost = lost_card_job(age_seconds=50)
    fresh = lost_card_job(age_seconds=1)
    # Started before the restart, its message (a retry, a redelivery) gone with the broker's last writes.
    started = lost_card_job(age_seconds=50, status=JobStatus.RUNNING)
    running = lost_card_job(age_seconds=10, status=JobStatus.RUNNING)  # moved since the restart: live
    restarted = utcnow() - timedelta(seconds=20)
    sent = jobs.requeue_unstarted(payment_celery, timedelta(seconds=45), broker_started_at=restarted)
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
    # Neither the young job nor the one running since the restart was sent.
    assert Job.objects.get(id=fresh.id).status == JobStatus.QUEUED
    assert Job.objects.get(id=running.id).attempts == 0
    # A second sweep right away sends the young job no sooner than its own threshold.
    jobs.requeue_unstarted(payment_celery, timedelta(seconds=45), broker_started_at=utcnow())
    assert Job.objects.get(id=fresh.id).status == JobStatus.QUEUED
    for job in (fresh, running):
        Job.objects(id=job.id).delete()


def test_a_job_waiting_in_a_long_queue_of_a_broker_that_did_not_restart_is_not_sent_twice(
    payment_celery: Any, payment_worker: Any, documents: None
) -> None:
    waiting = lost_card_job(age_seconds=300)
    broker_up_since = utcnow() - timedelta(hours=1)
    assert (
        jobs.requeue_unstarted(payment_celery, timedelta(seconds=45), broker_started_at=broker_up_since) == 0
    )
    assert Job.objects.get(id=waiting.id).updatedAt < utcnow() - timedelta(seconds=250)
    # Unless the broker cannot say when it started: then age alone decides, for queued jobs only
    # (a running one may be waiting for its retry; the stale sweep takes it after ten minutes).
    running = lost_card_job(age_seconds=300, status=JobStatus.RUNNING)
    assert jobs.requeue_unstarted(payment_celery, timedelta(seconds=45), broker_started_at=None) >= 1
    assert Job.objects.get(id=running.id).updatedAt < utcnow() - timedelta(seconds=250)
    Job.objects(id=running.id).delete()
    wait_until(lambda: Job.objects.get(id=waiting.id).ended, timeout=60, message="job ends")


def test_the_sweep_reads_the_brokers_start_time(payment_celery: Any) -> None:
    from workers.tasks.maintenance import _broker_started_at

    started = _broker_started_at(payment_celery)
    assert started is not None
    assert started < utcnow()
