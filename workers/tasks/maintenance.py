"""Recovery: jobs and refund events that were left behind are sent again (run by Celery beat)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task

from shared.services import inbox, jobs, payments
from workers.app import PaymentTask

#: Longer than a task's time limit plus its retries' backoff, so that work in
#: progress is not mistaken for work left behind (a duplicate would be
#: harmless anyway: every job task is idempotent).
STALE_AFTER_SECONDS = 600


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


#: Ended jobs deleted per run of ``jobs.purge_expired`` (hourly): a backstop
#: for servers without a TTL monitor, so bounded like the stale sweep.
PURGE_BATCH = 5000


@shared_task(name="jobs.purge_expired", max_retries=0)
def purge_expired(limit: int = PURGE_BATCH) -> int:
    """Delete ended jobs past their expiry (JOB_RETENTION_DAYS); payments, ledger and cards stay."""
    return jobs.purge_expired(limit)
