"""The charge survives crashes and outages: killed workers, a checkout service that is down.

Each test gets its own broker key prefix, API and worker, so that the worker
with failpoints is the only one that can take its tasks.
"""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import pytest
import requests
from bson import ObjectId

from devstack.checkout_standin import create_standin
from shared.models import Card, Job, LedgerEntry, Payment
from tests.environment import stop_worker
from tests.helpers import Client
from tests.support import ServedApp, free_port, wait_until


def assert_paid_once(card_id: str, payment_id: str, start: Decimal, total: Decimal) -> None:
    card = Card.objects.get(id=card_id)
    assert card.money == start - total
    assert card.inflight == []  # settled: the card keeps no marker of the payment
    debits = LedgerEntry.objects(cardId=card_id, kind="debit")
    assert [e.paymentId for e in debits] == [payment_id]
    assert Payment.objects(id=payment_id).count() == 1


@pytest.mark.slow
@pytest.mark.parametrize("point", ["charge.after_claim", "charge.after_debit", "charge.after_charged"])
def test_a_worker_process_killed_mid_charge_is_redelivered_and_debits_once(
    point: str, world_factory, seed_checkout
) -> None:
    world = world_factory(failpoints=point)
    client = Client(world.api.url)
    card = client.add_card(money=1000)  # enough for a second debit, were one repeated
    checkout = seed_checkout(client.user_id, total="59.97")
    job = client.wait(client.pay(checkout["_id"], card["id"]), timeout=90)
    assert job["status"] == "succeeded", job
    # The first attempt died at the failpoint; the redelivered one finished.
    assert job["attempts"] == 2
    assert_paid_once(card["id"], job["result"]["id"], Decimal("1000.00"), Decimal("59.97"))


@pytest.mark.slow(seconds=30)
def test_a_whole_worker_node_killed_mid_charge_is_redelivered_to_another_node(
    world_factory, seed_checkout
) -> None:
    # The task comes back once its visibility timeout has passed: the least allowed, 10 s.
    world = world_factory(failpoints="stall:charge.after_debit", env={"CELERY_VISIBILITY_TIMEOUT": "10"})
    client = Client(world.api.url)
    card = client.add_card(money=1000)  # enough for a second debit, were one repeated
    checkout = seed_checkout(client.user_id, total="59.97")
    response = client.pay(checkout["_id"], card["id"])
    job_id = response.json()["id"]
    # Wait until the debit is applied and the task stalls right after it...
    wait_until(lambda: Card.objects.get(id=card["id"]).inflight, timeout=60, message="debit applied")
    # ...then kill the node, main process and pool together, as a lost machine.
    stop_worker(world.worker, signal.SIGKILL)
    assert Job.objects.get(id=job_id).status == "running"
    world.worker = world.start_worker("fault-b")
    # Redis hands the unacknowledged task out again after the visibility timeout (10 s here),
    # at the next sweep of a worker (every 2 s in this world; the new node sweeps as it starts).
    job = client.wait(response, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert_paid_once(card["id"], job["result"]["id"], Decimal("1000.00"), Decimal("59.97"))


@pytest.mark.slow
def test_a_checkout_service_that_is_down_then_back_delays_the_charge_but_does_not_fail_it(
    world_factory, seed_checkout
) -> None:
    port = free_port()
    world = world_factory(checkout_url=f"http://127.0.0.1:{port}")
    client = Client(world.api.url)
    card = client.add_card(money=1000)  # enough for a second debit, were one repeated
    checkout = seed_checkout(client.user_id, total="10.00")  # in the session's stand-in
    response = client.pay(checkout["_id"], card["id"])
    job_id = response.json()["id"]
    # Attempt 3 has started, so attempts 1 and 2 ran (and failed) while the service was down;
    # bringing it back any earlier could let the attempt in flight succeed at once.
    wait_until(lambda: Job.objects.get(id=job_id).attempts >= 3, timeout=45, message="two failed attempts")
    assert Job.objects.get(id=job_id).status in ("queued", "running")
    # The checkout service comes back, on the port the worker knows, with the checkout.
    standin = create_standin()
    standin.config["STORE"].put(checkout)
    back = ServedApp(standin, port=port)
    try:
        job = client.wait(response, timeout=90)
    finally:
        back.close()
    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 3
    assert_paid_once(card["id"], job["result"]["id"], Decimal("1000.00"), Decimal("10.00"))


@pytest.mark.slow
def test_checkout_service_errors_5xx_are_retried_and_404_is_final(
    client: Client, checkout_service: ServedApp, seed_checkout
) -> None:
    card = client.add_card(money=1000)  # enough for a second debit, were one repeated
    checkout = seed_checkout(client.user_id, total="10.00")
    requests.put(f"{checkout_service.url}/_standin/fault", json={"status": 503, "count": 2}, timeout=5)
    t0 = time.monotonic()
    job = client.wait(client.pay(checkout["_id"], card["id"]), timeout=60)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 3
    assert time.monotonic() - t0 < 30
    # A checkout the service does not know (404) ends the job at its first attempt.
    missing = client.wait(client.pay(str(ObjectId()), card["id"]), timeout=60)
    assert (missing["status"], missing["error"]["code"]) == ("failed", "checkout_not_found"), missing
    assert missing["attempts"] == 1
