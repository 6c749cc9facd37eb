"""A worker node on the threads pool (WORKER_POOL=threads) charges exactly once, as prefork does.

The threads of one process share its module state (the database connection,
the Kafka producer, the checkout connection pool, the accepted-event publisher), so
the races of tests/web/test_payments.py run again here against one node of
8 threads, on a broker prefix of its own, so that no prefork worker of the
session can take a task.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from shared.models import Card, LedgerEntry, Payment, PaymentState
from tests.environment import RUN_ID, make_settings, start_worker, stop_worker
from tests.helpers import Client
from tests.support import ServedApp, wait_until
from web import create_app
from workers.app import create_celery

THREADS = 8
_nodes = itertools.count()


@pytest.fixture(scope="module")
def threaded_api(checkout_service: ServedApp, topics: list[str]) -> Iterator[str]:
    """An API and one worker node of ``THREADS`` threads, on a private broker prefix."""
    env = {"CELERY_KEY_PREFIX": f"{RUN_ID}threads{next(_nodes)}:", "WORKER_POOL": "threads"}
    settings = make_settings(**env)
    assert settings.worker_pool == "threads"
    celery = create_celery(settings)
    api = ServedApp(create_app(settings, celery))
    # The pool comes from the settings: start_worker passes --concurrency, never --pool.
    worker = start_worker("threads", concurrency=THREADS, env=env)
    try:

        def pool() -> dict[str, Any] | None:
            stats = celery.control.inspect(timeout=2).stats() or {}
            return next((s["pool"] for n, s in stats.items() if n.startswith("threads-")), None)

        stats = wait_until(pool, timeout=60, message="the threaded worker answers")
        assert "thread" in stats["implementation"], stats
        assert stats["max-concurrency"] == THREADS, stats
        yield api.url
    finally:
        stop_worker(worker)
        api.close()


@pytest.mark.slow
def test_concurrent_pays_of_one_checkout_on_a_threaded_worker_debit_once(
    threaded_api: str, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    client = Client(threaded_api)
    card = client.add_card(money=1000)
    checkout = seed_checkout(client.user_id, total="59.97")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: client.pay(checkout["_id"], card["id"]), range(32)))
        jobs = list(pool.map(lambda r: client.wait(r, timeout=120), responses))
    outcomes = sorted((j["status"], (j["error"] or {}).get("code")) for j in jobs)
    assert outcomes.count(("succeeded", None)) == 1, outcomes
    assert outcomes.count(("failed", "already_paid")) == 31, outcomes
    assert Payment.objects(checkoutId=checkout["_id"]).count() == 1
    stored = Card.objects.get(id=card["id"])
    assert stored.money == Decimal("940.03")
    assert stored.inflight == []
    assert LedgerEntry.objects(cardId=card["id"], kind="debit").count() == 1


@pytest.mark.slow
def test_concurrent_pays_of_many_checkouts_on_one_card_on_a_threaded_worker_debit_exactly(
    threaded_api: str, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    client = Client(threaded_api)
    # Money for 2 of 24 pays sent at once: the threads read the card at the
    # same moment, so a decision that did not repeat what it read would overdraw.
    card = client.add_card(money=20)
    checkouts = [seed_checkout(client.user_id, total="10.00") for _ in range(24)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda c: client.pay(c["_id"], card["id"]), checkouts))
        jobs = list(pool.map(lambda r: client.wait(r, timeout=120), responses))
    succeeded = [j for j in jobs if j["status"] == "succeeded"]
    refused = [j for j in jobs if j["status"] == "failed"]
    assert len(succeeded) == 2, [j["error"] for j in refused]
    assert {j["error"]["code"] for j in refused} == {"insufficient_funds"}
    stored = Card.objects.get(id=card["id"])
    assert stored.money == Decimal("0.00")
    assert stored.inflight == []
    debits = LedgerEntry.objects(cardId=card["id"], kind="debit")
    assert sorted(e.paymentId for e in debits) == sorted(j["result"]["id"] for j in succeeded)
    assert Payment.objects(creditCardId=card["id"], state=PaymentState.CHARGED).count() == 2
