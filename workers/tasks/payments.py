"""Payment tasks.

``payments.charge`` is idempotent by construction (the state machine in
shared.services.payments), so it acknowledges late and is redelivered if its
worker process dies: a crash between any two steps resumes, never repeats.
"""

from __future__ import annotations

from functools import partial

from celery import shared_task

from shared.services import payments
from workers.app import PaymentTask


@shared_task(bind=True, name="payments.charge", acks_late=True, reject_on_worker_lost=True)
def charge(self: PaymentTask, job_id: str) -> None:
    self.run_job(job_id, partial(payments.charge, self.settings))


@shared_task(bind=True, name="payments.delete", acks_late=True, reject_on_worker_lost=True)
def delete_payment(self: PaymentTask, job_id: str) -> None:
    self.run_job(job_id, payments.delete_payment)
