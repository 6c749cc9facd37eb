"""Card tasks. Idempotent (the job reserved the card's id), so acks_late."""

from __future__ import annotations

from celery import shared_task

from shared.services import cards
from workers.app import PaymentTask


@shared_task(bind=True, name="cards.add", acks_late=True, reject_on_worker_lost=True)
def add_card(self: PaymentTask, job_id: str) -> None:
    self.run_job(job_id, cards.add_card)


@shared_task(bind=True, name="cards.delete", acks_late=True, reject_on_worker_lost=True)
def delete_card(self: PaymentTask, job_id: str) -> None:
    self.run_job(job_id, cards.delete_card)
