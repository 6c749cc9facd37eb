"""Reconciliation (``python -m workers.reconcile``): silent on a clean world, loud on every flaw.

Each test builds its world in a database of its own, through the service's own
functions (add a card, charge, refund, as the workers run them), then breaks
it by writing to the database directly, the way a bug or an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import mongoengine
import pytest
from bson import ObjectId
from bson.decimal128 import Decimal128
from pymongo import MongoClient
from pymongo.database import Database

from shared import db
from shared.errors import InsufficientFunds
from shared.models import Job
from shared.models.base import utcnow
from shared.services import cards, outbox, payments, reconcile, refunds
from shared.settings import Settings
from tests.environment import ROOT, RUN_ID, TEST_ENV
from tests.factories import JobFactory, ProductFactory
from tests.helpers import seed_checkout
from tests.support import ServedApp

MONGO_BASE = TEST_ENV["MONGO_URL"].rsplit("/", 1)[0]


@pytest.fixture
def private_db(settings: Settings) -> Iterator[Database[dict[str, Any]]]:
    """This test's own database, as this process's default connection while the test runs."""
    name = f"{RUN_ID}rec{uuid.uuid4().hex[:6]}"
    mongoengine.disconnect_all()
    mongoengine.connect(host=f"{MONGO_BASE}/{name}", tz_aware=True, uuidRepresentation="standard")
    client: MongoClient[dict[str, Any]] = MongoClient(f"{MONGO_BASE}/{name}", tz_aware=True)
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()
        mongoengine.disconnect_all()
        db._connected_pid = None  # back to the session's database
        db.connect(settings)


@dataclass
class World:
    """What the service stored: the ids a broken copy is reported with."""

    settings: Settings
    standin: str
    user: str = field(default_factory=lambda: str(ObjectId()))
    card_ids: list[str] = field(default_factory=list)
    charged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add_card(self, money: str) -> str:
        card_id = str(ObjectId())
        cards.add_card(JobFactory.build(ownerId=self.user, params__money=money, resourceId=card_id))
        self.card_ids.append(card_id)
        return card_id

    def pay(self, card_id: str, total: str, quantity: int = 3) -> str:
        price = (Decimal(total) / quantity).quantize(Decimal("0.01"))
        products = [ProductFactory(productId="p-1", quantity=quantity, price=float(price))]
        checkout = seed_checkout(self.standin, self.user, total, products=products)
        job = Job(
            id=ObjectId(),
            type="payment.pay",
            ownerId=self.user,
            params={"checkoutId": checkout["_id"], "cardId": card_id},
        )
        return payments.charge(self.settings, job).id


def clean_world(settings: Settings, standin: str) -> World:
    """Cards, charges (one refused), product and order refunds, a redelivery: as the service does them."""
    world = World(settings, standin)
    rich, poor = world.add_card("100.00"), world.add_card("5.00")
    world.charged.append(world.pay(rich, "30.00"))  # 3 x 10.00
    world.charged.append(world.pay(rich, "12.00"))
    with pytest.raises(InsufficientFunds):
        world.pay(poor, "9.99")
    world.failed.append(str(db.database().payments.find_one({"state": "failed"})["_id"]))
    first = world.charged[0]
    refunds.refund_product(settings, "t:0:1", first, product_id="p-1", price=Decimal("10.00"))
    refunds.refund_product(settings, "t:0:1", first, product_id="p-1", price=Decimal("10.00"))  # redelivered
    refunds.refund_order(settings, "t:0:2", first)  # the 20.00 left
    # The charges' accepted events leave from this process's publisher thread: all sent and marked.
    assert outbox.wait_for_publisher(timeout=15)
    return world


@pytest.fixture
def world(
    private_db: Database[dict[str, Any]], settings: Settings, checkout_service: ServedApp, topics: list[str]
) -> World:
    return clean_world(settings, checkout_service.url)


def check(
    database: Database[dict[str, Any]], **kwargs: Any
) -> tuple[reconcile.Summary, list[reconcile.Discrepancy]]:
    found: list[reconcile.Discrepancy] = []
    summary = reconcile.run(database, found.append, grace_seconds=0, **kwargs)
    return summary, found


def cli(database: Database[dict[str, Any]], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**TEST_ENV, "MONGO_URL": f"{MONGO_BASE}/{database.name}", "LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "workers.reconcile", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_clean_world_reports_nothing_and_counts_what_it_read(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    summary, found = check(private_db)
    assert found == []
    assert summary.total == 0
    assert summary.cards == 2
    assert summary.payments == 3  # two charged, one failed
    # 2 openings + 2 debits + 2 credits (the redelivered refund credited once)
    assert summary.ledgerEntries == 6
    assert summary.refunds == 2
    assert summary.cardsWithoutOpening == 0
    assert private_db.cards.find_one({"_id": ObjectId(world.card_ids[0])})["money"] == Decimal128("88.00")


def test_the_command_exits_0_on_a_clean_world_and_prints_its_summary(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    result = cli(private_db, "--grace-seconds", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"discrepancies": 0' in result.stdout
    assert '"payments": 3' in result.stdout


def _dec(value: str) -> Decimal128:
    return Decimal128(value)


#: How to break a clean world, what must be reported, and the ids it must name.
Breakage = Callable[[Database[dict[str, Any]], World], dict[str, str]]


def _card_money_changed(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.cards.update_one({"_id": ObjectId(w.card_ids[0])}, {"$inc": {"money": _dec("0.01")}})
    return {"cardId": w.card_ids[0]}


def _debit_entry_lost(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.ledger.delete_one({"_id": f"debit:{w.charged[1]}"})
    return {"paymentId": w.charged[1]}


def _second_debit_entry(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.ledger.insert_one(
        {
            "_id": f"debit2:{w.charged[1]}",
            "cardId": w.card_ids[0],
            "kind": "debit",
            "amount": _dec("12.00"),
            "paymentId": w.charged[1],
            "at": utcnow(),
        }
    )
    d.cards.update_one({"_id": ObjectId(w.card_ids[0])}, {"$inc": {"money": _dec("-12.00")}})
    return {"paymentId": w.charged[1]}


def _failed_payment_debited(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.ledger.insert_one(
        {
            "_id": f"debit:{w.failed[0]}",
            "cardId": w.card_ids[1],
            "kind": "debit",
            "amount": _dec("9.99"),
            "paymentId": w.failed[0],
            "at": utcnow(),
        }
    )
    return {"paymentId": w.failed[0]}


def _refund_credit_lost(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.ledger.delete_one({"_id": "credit:t:0:2"})
    d.cards.update_one({"_id": ObjectId(w.card_ids[0])}, {"$inc": {"money": _dec("-20.00")}})
    return {"paymentId": w.charged[0], "eventId": "t:0:2"}


def _credit_without_refund(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.ledger.insert_one(
        {
            "_id": "credit:t:0:9",
            "cardId": w.card_ids[0],
            "kind": "credit",
            "amount": _dec("1.00"),
            "paymentId": w.charged[1],
            "at": utcnow(),
        }
    )
    d.cards.update_one({"_id": ObjectId(w.card_ids[0])}, {"$inc": {"money": _dec("1.00")}})
    return {"paymentId": w.charged[1], "entryId": "credit:t:0:9"}


def _payment_over_refunded(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    refund = {"eventId": "t:0:7", "kind": "order", "amount": _dec("12.00"), "at": utcnow(), "credited": True}
    d.payments.update_one(
        {"_id": ObjectId(w.charged[0])},
        {"$push": {"refunds": refund}, "$inc": {"refundedAmount": _dec("12.00")}},
    )
    d.ledger.insert_one(
        {
            "_id": "credit:t:0:7",
            "cardId": w.card_ids[0],
            "kind": "credit",
            "amount": _dec("12.00"),
            "paymentId": w.charged[0],
            "at": utcnow(),
        }
    )
    d.cards.update_one({"_id": ObjectId(w.card_ids[0])}, {"$inc": {"money": _dec("12.00")}})
    return {"paymentId": w.charged[0]}


def _product_over_refunded(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.payments.update_one({"_id": ObjectId(w.charged[1])}, {"$set": {"products.0.refundedQuantity": 4}})
    return {"paymentId": w.charged[1], "productId": "p-1"}


def _accepted_event_unpublished(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    d.payments.update_one({"_id": ObjectId(w.charged[1])}, {"$set": {"acceptedEventPublished": False}})
    return {"paymentId": w.charged[1]}


def _entry_of_an_unknown_card(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    card_id = str(ObjectId())
    d.ledger.insert_one(
        {"_id": f"open:{card_id}", "cardId": card_id, "kind": "open", "amount": _dec("1.00"), "at": utcnow()}
    )
    return {"cardId": card_id, "entryId": f"open:{card_id}"}


def _debit_of_an_unknown_payment(d: Database[dict[str, Any]], w: World) -> dict[str, str]:
    payment_id = str(ObjectId())
    d.ledger.insert_one(
        {
            "_id": f"debit:{payment_id}",
            "cardId": w.card_ids[1],
            "kind": "debit",
            "amount": _dec("1.00"),
            "paymentId": payment_id,
            "at": utcnow(),
        }
    )
    d.cards.update_one({"_id": ObjectId(w.card_ids[1])}, {"$inc": {"money": _dec("-1.00")}})
    return {"paymentId": payment_id, "entryId": f"debit:{payment_id}"}


BREAKAGES: dict[str, tuple[Breakage, str]] = {
    "a card's balance moved without a ledger entry": (_card_money_changed, "balance_mismatch"),
    # The card was debited, the entry is gone: its balance does not add up either.
    "a charged payment lost its debit entry": (_debit_entry_lost, "charged_without_debit"),
    "a charged payment was debited twice": (_second_debit_entry, "duplicate_debit"),
    "a failed payment was debited": (_failed_payment_debited, "failed_but_debited"),
    "an applied refund lost its credit": (_refund_credit_lost, "refund_not_credited"),
    "a card was credited for no refund": (_credit_without_refund, "credit_without_refund"),
    "a payment was refunded beyond its total": (_payment_over_refunded, "payment_over_refunded"),
    "a product was refunded beyond its quantity": (_product_over_refunded, "product_over_refunded"),
    "a charged payment's accepted event was never published": (
        _accepted_event_unpublished,
        "accepted_event_not_published",
    ),
    "a ledger entry names no card": (_entry_of_an_unknown_card, "entry_without_card"),
    "a debit names no payment": (_debit_of_an_unknown_payment, "entry_without_payment"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_kind_of_discrepancy_is_reported_with_its_ids(
    private_db: Database[dict[str, Any]], world: World, breakage: str
) -> None:
    breaks, kind = BREAKAGES[breakage]
    ids = breaks(private_db, world)
    summary, found = check(private_db)
    # A lost or unpaid-for debit entry breaks the card's sum too.
    also = {"balance_mismatch": 1} if kind in {"charged_without_debit", "failed_but_debited"} else {}
    assert summary.discrepancies == {kind: 1, **also}, [str(d) for d in found]
    assert summary.total == len(found) == 1 + len(also)
    named = next(d for d in found if d.kind == kind)
    assert named.ids.items() >= ids.items(), str(named)


def test_the_command_prints_each_discrepancy_with_its_ids_and_exits_1(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    _debit_entry_lost(private_db, world)
    _failed_payment_debited(private_db, world)
    result = cli(private_db, "--grace-seconds", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"charged_without_debit paymentId={world.charged[1]}") for line in lines), (
        lines
    )
    assert any(line.startswith(f"failed_but_debited paymentId={world.failed[0]}") for line in lines), lines
    assert '"charged_without_debit": 1' in lines[-1]
    assert '"failed_but_debited": 1' in lines[-1]


def test_work_in_flight_within_the_grace_period_is_not_a_discrepancy(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    # A refund recorded a moment ago, its credit not written yet; an event the outbox has yet to send.
    refund = {
        "eventId": "t:0:8",
        "kind": "product",
        "productId": "p-1",
        "quantity": 1,
        "amount": _dec("4.00"),
        "at": utcnow(),
        "credited": False,
    }
    private_db.payments.update_one(
        {"_id": ObjectId(world.charged[1])},
        {
            "$push": {"refunds": refund},
            "$inc": {"refundedAmount": _dec("4.00"), "products.0.refundedQuantity": 1},
            "$set": {"acceptedEventPublished": False, "updatedAt": utcnow()},
        },
    )
    found: list[reconcile.Discrepancy] = []
    summary = reconcile.run(private_db, found.append, grace_seconds=60)
    assert found == []
    assert summary.inFlight == 4  # those two, and the world's two cards, changed a moment ago
    later = utcnow() + timedelta(seconds=61)
    summary = reconcile.run(private_db, found.append, grace_seconds=60, now=later)
    assert sorted(d.kind for d in found) == ["accepted_event_not_published", "refund_not_credited"]


def test_a_card_added_before_openings_were_recorded_is_counted_not_reported(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    private_db.ledger.delete_one({"_id": f"open:{world.card_ids[1]}"})
    summary, found = check(private_db)
    assert found == []
    assert summary.cardsWithoutOpening == 1


def test_an_added_card_records_its_opening_balance_once_even_when_its_job_runs_twice(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    card_id = world.card_ids[0]
    private_db.ledger.delete_one({"_id": f"open:{card_id}"})  # as if the worker died after storing the card
    job = JobFactory.build(ownerId=world.user, params__money="100.00", resourceId=card_id)
    cards.add_card(job)
    cards.add_card(job)
    assert list(private_db.ledger.find({"cardId": card_id, "kind": "open"}, {"_id": 1, "amount": 1})) == [
        {"_id": f"open:{card_id}", "amount": _dec("100.00")}
    ]


def _seed_bulk(database: Database[dict[str, Any]], cards_count: int) -> None:
    """``cards_count`` cards, each with an opening and one charged payment, straight into the collections."""
    now = utcnow()
    card_docs, payment_docs, entries = [], [], []
    for _ in range(cards_count):
        card_id, payment_id = ObjectId(), ObjectId()
        card_docs.append({"_id": card_id, "money": _dec("90.00"), "updatedAt": now})
        payment_docs.append(
            {
                "_id": payment_id,
                "state": "charged",
                "totalPrice": _dec("10.00"),
                "creditCardId": str(card_id),
                "updatedAt": now,
                "acceptedEventPublished": True,
                "refunds": [],
                "refundedAmount": _dec("0.00"),
                "products": [{"productId": "p", "quantity": 1, "refundedQuantity": 0}],
            }
        )
        entries.append(
            {"_id": f"open:{card_id}", "cardId": str(card_id), "kind": "open", "amount": _dec("100.00")}
        )
        entries.append(
            {
                "_id": f"debit:{payment_id}",
                "cardId": str(card_id),
                "kind": "debit",
                "amount": _dec("10.00"),
                "paymentId": str(payment_id),
            }
        )
    database.cards.insert_many(card_docs)
    database.payments.insert_many(payment_docs)
    database.ledger.insert_many(entries)


def _peak_memory(database: Database[dict[str, Any]]) -> tuple[int, reconcile.Summary]:
    tracemalloc.start()
    try:
        summary = reconcile.run(database, lambda _: None, grace_seconds=0, batch_size=100)
        return tracemalloc.get_traced_memory()[1], summary
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_does_not_grow_with_the_data(private_db: Database[dict[str, Any]]) -> None:
    _seed_bulk(private_db, 200)
    small, summary = _peak_memory(private_db)
    assert (summary.cards, summary.payments, summary.total) == (200, 200, 0)
    _seed_bulk(private_db, 1800)
    large, summary = _peak_memory(private_db)
    assert (summary.cards, summary.payments, summary.ledgerEntries, summary.total) == (2000, 2000, 4000, 0)
    # Ten times the data, about the same peak (measured 0.40 MB and 0.54-0.67 MB): batches of
    # 100, one card or payment at a time.  Reading the cards and the ledger into lists makes
    # it 0.8 MB and 4.7 MB.
    assert large < small * 3, (small, large)


def test_beat_runs_the_same_check_daily_as_a_maintenance_task(
    private_db: Database[dict[str, Any]], world: World
) -> None:
    import celeryconfig
    from workers.tasks.maintenance import reconcile_money

    schedule = {entry["task"] for entry in celeryconfig.beat_schedule.values()}
    assert {"maintenance.reconcile", "jobs.requeue_unstarted"} <= schedule
    assert celeryconfig.task_routes["maintenance.*"] == {"queue": "maintenance"}
    assert reconcile_money.name == "maintenance.reconcile"
    _debit_entry_lost(private_db, world)
    summary = reconcile_money.run(grace_seconds=0)
    assert summary["byKind"] == {"balance_mismatch": 1, "charged_without_debit": 1}
    assert summary["payments"] == 3
