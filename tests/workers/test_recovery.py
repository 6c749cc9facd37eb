"""Jobs left behind are sent again; a charge that ran out of retries is resumed, not abandoned."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId

from shared.models import Card, Job, LedgerEntry, Payment, PaymentState, RefundEvent
from shared.services import inbox, jobs
from tests.helpers import Client, pay_new_checkout
from tests.support import wait_until


class DyingWebProcess:
    """A task sender that stores nothing in the broker: the web died right after storing the job."""

    def send_task(self, _name: str, _args: Any = None, **_options: Any) -> None:
        return None


def test_a_job_stored_but_never_sent_is_sent_again_and_runs(client: Client, payment_celery: Any) -> None:
    job, created = jobs.submit(
        DyingWebProcess(),
        job_type="card.delete",
        owner=client.user_id,
        params={},
        resource_id=client.add_card(money=5)["id"],
        req_hash="h",
        idempotency_key=None,
    )
    assert created
    assert Job.objects.get(id=job.id).status == "queued"
    sent = payment_celery.send_task(
        "jobs.requeue_stale", kwargs={"older_than_seconds": 0}, ignore_result=False
    )
    assert sent.get(timeout=30) >= 1
    wait_until(lambda: Job.objects.get(id=job.id).status == "succeeded", timeout=60, message="job ran")
    assert Card.objects.get(id=job.resourceId).deletedAt is not None


@pytest.mark.slow
def test_a_charge_that_ran_out_of_retries_after_its_debit_is_resumed_and_debits_once(
    world_factory: Callable[..., Any], seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    # Right after its debit, every attempt of the charge fails as if the
    # database were away, until its retries run out for real (2, a second apart).
    world = world_factory(
        failpoints="fail:charge.after_debit",
        env={"TASK_MAX_RETRIES": "2", "TASK_RETRY_BACKOFF_MAX_SECONDS": "1"},
    )
    client = Client(world.api.url)
    card = client.add_card(money=1000)  # room for a second debit, were the marker lost
    checkout = seed_checkout(client.user_id, total="59.97")
    job = client.wait(client.pay(checkout["_id"], card["id"]), timeout=90)
    assert (job["status"], job["attempts"], job["error"]["code"]) == ("failed", 3, "service_unavailable")
    # The money is gone and the charge is half-done: pending, not failed.
    assert Payment.objects.get(checkoutId=checkout["_id"]).state == PaymentState.PENDING
    assert Card.objects.get(id=card["id"]).money == Decimal("940.03")
    world.celery.send_task("jobs.requeue_stale", kwargs={"older_than_seconds": 0})
    wait_until(lambda: Job.objects.get(id=job["id"]).status == "succeeded", timeout=90, message="resumed")
    payment = Payment.objects.get(checkoutId=checkout["_id"])
    assert payment.state == PaymentState.CHARGED
    stored = Card.objects.get(id=card["id"])
    assert stored.money == Decimal("940.03")
    assert stored.inflight == []
    assert LedgerEntry.objects(cardId=card["id"], kind="debit").count() == 1


def test_a_stale_sweep_leaves_ended_jobs_alone(client: Client, payment_celery: Any) -> None:
    card = client.add_card(money=5)
    ended = Job.objects(ownerId=client.user_id, status="succeeded").first()
    before = ended.updatedAt
    payment_celery.send_task("jobs.requeue_stale", kwargs={"older_than_seconds": 0}, ignore_result=False).get(
        30
    )
    assert Job.objects.get(id=ended.id).updatedAt == before
    assert Card.objects.get(id=card["id"]).deletedAt is None


def test_a_refund_event_whose_task_was_lost_is_sent_again_from_the_inbox(
    client: Client, payment_celery: Any, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card = client.add_card(money=100)
    payment = pay_new_checkout(client, seed_checkout, card["id"], total="59.97")["result"]
    event_id = f"lost-topic:0:{ObjectId()}"
    kwargs = {"event_id": event_id, "payment_id": payment["id"], "product_id": "p-1", "price": "19.99"}
    inbox.hand_over(DyingWebProcess(), event_id, "refunds.refund_product", kwargs)  # the message is lost
    assert RefundEvent.objects.get(id=event_id).status == "received"
    payment_celery.send_task("jobs.requeue_stale", kwargs={"older_than_seconds": 0})
    wait_until(
        lambda: RefundEvent.objects.get(id=event_id).status == "applied", timeout=60, message="applied"
    )
    assert Card.objects.get(id=card["id"]).money == Decimal("60.02")
    assert Card.objects.get(id=card["id"]).inflight == []
    assert LedgerEntry.objects(cardId=card["id"], kind="credit").count() == 1
