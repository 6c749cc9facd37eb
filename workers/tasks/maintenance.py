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
    older_than = timedelta(seconds=older_than_seconds)
    reopened = payments.resume_stale_charges(older_than)
    return jobs.requeue_stale(self.app, older_than, extra_job_ids=reopened) + inbox.requeue_stale(
        self.app, older_than
    )
