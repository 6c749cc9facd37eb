"""Run by Celery beat: recovery of jobs and refund events left behind; the daily reconciliation."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import Celery, shared_task

from shared import db
from shared.models.base import utcnow
from shared.services import inbox, jobs, payments, reconcile
from workers.app import PaymentTask

#: Longer than a task's time limit plus its retries' backoff, so that work in
#: progress is not mistaken for work left behind (a duplicate would be
#: harmless anyway: every job task is idempotent).
STALE_AFTER_SECONDS = 600

#: Beyond a task's time limit and its longest backoff, before a running job counts as lost.
RUNNING_MARGIN_SECONDS = 20

log = logging.getLogger(__name__)


@shared_task(bind=True, name="jobs.requeue_stale", max_retries=0)
def requeue_stale(self: PaymentTask, older_than_seconds: float = STALE_AFTER_SECONDS) -> int:
    """Send again what was left behind: at most STALE_SWEEP_BATCH jobs and refund events per run.

    Jobs (reopened charges first) take the budget before refund events; what
    is left over waits for the next run, a minute later.
    """
    older_than = timedelta(seconds=older_than_seconds)
    budget = self.settings.stale_sweep_batch
    reopened = payments.resume_stale_charges(older_than, limit=budget)
    sent = jobs.requeue_stale(self.app, older_than, limit=budget, extra_job_ids=reopened)
    if sent < budget:
        sent += inbox.requeue_stale(self.app, older_than, limit=budget - sent)
    return sent


@shared_task(bind=True, name="jobs.requeue_unstarted", max_retries=0)
def requeue_unstarted(self: PaymentTask) -> int:
    """Run by beat every 20 s: jobs whose message the broker may have lost.

    Queued ones after JOB_UNSTARTED_REQUEUE_SECONDS, if the broker restarted
    since or their queue is empty; running ones after a broker restart, once
    no live run can have left them unmoved that long: a task's hard time
    limit plus the longest retry backoff, plus a margin.
    """
    settings = self.settings
    running = self.app.conf.task_time_limit + settings.task_retry_backoff_max_seconds + RUNNING_MARGIN_SECONDS
    return jobs.requeue_unstarted(
        self.app,
        timedelta(seconds=settings.job_unstarted_requeue_seconds),
        _broker_started_at(self.app),
        limit=settings.stale_sweep_batch,
        running_older_than=timedelta(seconds=running),
        drained=drained_job_types(self.app),
    )


def drained_job_types(app: Celery) -> frozenset[str]:
    """The job types whose queue holds no message now; none if the broker does not answer.

    A job of such a type queued long ago is not waiting behind others: its
    message was lost (a worker node killed as it took it).
    """
    queues = {
        job_type: app.amqp.router.route({}, task)["queue"].name for job_type, task in jobs.TASKS.items()
    }
    try:
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            sizes = {
                queue: channel.queue_declare(queue=queue).message_count for queue in set(queues.values())
            }
    except Exception:  # no answer: only a broker restart decides this run
        log.warning("could not read the queues' lengths", exc_info=True)
        return frozenset()
    return frozenset(job_type for job_type, queue in queues.items() if sizes[queue] == 0)


def _broker_started_at(app: Celery) -> datetime | None:
    """When the Redis broker last started (INFO uptime), with a margin; None if it does not say."""
    try:
        with app.connection_for_read() as conn:
            uptime = int(conn.default_channel.client.info("server")["uptime_in_seconds"])
    except Exception:  # noqa: BLE001 - INFO may be disabled on a managed Redis: fall back to age alone
        log.warning("broker start time unknown; unstarted jobs are sent again by age alone")
        return None
    # uptime is whole seconds: a job sent in the second before the restart counts as before it.
    return utcnow() - timedelta(seconds=uptime) + timedelta(seconds=2)


@shared_task(name="maintenance.reconcile", max_retries=0, time_limit=3600, soft_time_limit=3500)
def reconcile_money(grace_seconds: float = reconcile.DEFAULT_GRACE_SECONDS) -> dict[str, Any]:
    """Run by beat daily: log each discrepancy as an error and return the summary (it never repairs)."""
    summary = reconcile.run(
        db.database(), lambda d: log.error("reconcile: %s", d), grace_seconds=grace_seconds
    )
    log.info("reconcile: %s", summary.as_dict())
    return summary.as_dict()


#: Ended jobs deleted per run of ``jobs.purge_expired`` (hourly): a backstop
#: for servers without a TTL monitor, so bounded like the stale sweep.
PURGE_BATCH = 5000


@shared_task(name="jobs.purge_expired", max_retries=0)
def purge_expired(limit: int = PURGE_BATCH) -> int:
    """Delete ended jobs past their expiry (JOB_RETENTION_DAYS); payments, ledger and cards stay."""
    return jobs.purge_expired(limit)
