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
    """Run by beat every 20 s: jobs no worker started, whose message a broker restart may have lost."""
    older_than = timedelta(seconds=self.settings.job_unstarted_requeue_seconds)
    return jobs.requeue_unstarted(
        self.app, older_than, _broker_started_at(self.app), limit=self.settings.stale_sweep_batch
    )


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
