"""The bridge hands each polled batch over as one task; the batch applies each event once.

Events are produced with kcat to partition 0 of topics of the test's own, so
their offsets (the end of their event ids) are known before they are sent:
a failpoint can name one event of a batch (``NAME@:0:<offset>``).  The
events are all produced before the bridge starts, so its first poll holds
them all: one batch.
"""

from __future__ import annotations

import random
import signal
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shared import db
from shared.errors import OverRefund
from shared.models import Card, LedgerEntry, Payment, RefundEvent
from shared.services import inbox
from shared.services.refunds import RefundRequest, apply_many
from shared.settings import Settings
from tests.environment import make_settings, stop_worker
from tests.helpers import Client, charged_payments
from tests.support import wait_until
from tests.workers.kafka_support import (
    batches_handed_over,
    bridge_process,
    event_ids,
    handed_over,
    kcat_produce,
    read_topic,
)
from tests.workers.test_refund_finishing import Recorder
from tests.workers.test_refunds import drain_refunds, isolated, paid, product_refund

__all__ = ["isolated", "paid"]  # fixtures of the refund tests, used here too

UNITS = [{"productId": "u", "quantity": 10, "price": 0.01, "sellerId": "s"}]  # total 0.10


def balance(payment: dict[str, Any]) -> Decimal:
    return Card.objects.get(id=payment["creditCardId"]).money


def credits(payment: dict[str, Any]) -> dict[str, Any]:
    """Ledger credit entries of the payment, by event id."""
    return {
        e.id.removeprefix("credit:"): e for e in LedgerEntry.objects(paymentId=payment["id"], kind="credit")
    }


def statuses(event_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    return {e.id: (e.status, e.reason) for e in RefundEvent.objects(id__in=event_ids)}


def all_settled(event_ids: list[str]) -> bool:
    entries = RefundEvent.objects(id__in=event_ids)
    return entries.count() == len(event_ids) and all(e.status != "received" for e in entries)


def letters(settings: Settings, event_ids: list[str]) -> list[tuple[str, str, bytes]]:
    """(event id, reason, value) of the dead letters of these events on the topic of ``settings``."""
    found = []
    for record in read_topic(settings, settings.topic_dead_letter, timeout_ms=1500):
        headers = {k: v.decode() for k, v in record.headers}
        if headers.get("event-id") in event_ids:
            found.append((headers["event-id"], headers["reason"], record.value))
    return found


def test_a_mixed_batch_with_a_bad_message_and_replayed_duplicates_applies_each_event_once(
    settings: Settings,
    isolated: Settings,
    payment_celery: Any,
    payment_worker: Any,
    paid: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    payment = paid()  # p-1: 3 x 19.99, p-2: 1 x 10.00; the card keeps 30.03
    sent = kcat_produce(
        isolated,
        isolated.topic_product_refunded,
        [
            product_refund(payment, "p-1", 19.99),  # 0: applies
            b"{not json",  # 1: the bridge sets it aside
            product_refund(payment, "p-9", 19.99),  # 2: the worker sets it aside
            product_refund(payment, "p-2", 10.00),  # 3: applies
            product_refund(payment, "p-1", 19.99),  # 4: applies (a second unit)
        ],
        partition=0,
    )
    ids = event_ids(isolated, 5)
    good = [ids[0], ids[2], ids[3], ids[4]]
    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix}
    log = tmp_path / "bridge.log"
    with bridge_process(env, log):
        wait_until(lambda: all_settled(good), timeout=60, message="the batch settled")
    # One poll, one hand-over: the four good events in one task, in order.
    assert batches_handed_over(log) == [4]
    assert handed_over(log) == good
    assert statuses(good) == {
        ids[0]: ("applied", None),
        ids[2]: ("dead_lettered", "product_not_in_payment"),
        ids[3]: ("applied", None),
        ids[4]: ("applied", None),
    }
    # The bridge sets aside on its topics, the (shared) worker on the run's.
    assert letters(isolated, ids) == [(ids[1], "not_json", sent[1])]
    assert letters(settings, ids) == [(ids[2], "product_not_in_payment", sent[2])]
    assert sorted(credits(payment)) == sorted([ids[0], ids[3], ids[4]])
    assert balance(payment) == Decimal("80.01")
    before = Payment.objects.get(id=payment["id"]).to_mongo().to_dict()

    # Duplicates: a new group reads the topic again (the same event ids in
    # one batch), and one batch names an applied event twice.
    replay_log = tmp_path / "replay.log"
    with bridge_process({**env, "KAFKA_BRIDGE_GROUP": f"replay-{uuid.uuid4().hex[:6]}"}, replay_log):
        wait_until(lambda: batches_handed_over(replay_log), timeout=60, message="the replay handed over")
    first, fourth = RefundEvent.objects.get(id=ids[0]), RefundEvent.objects.get(id=ids[3])
    again = [{"task": e.task, "kwargs": e.kwargs} for e in (first, first, fourth)]
    payment_celery.send_task("refunds.apply_batch", kwargs={"events": again})
    drain_refunds(isolated, payment_celery)
    assert batches_handed_over(replay_log) == [4]
    assert Payment.objects.get(id=payment["id"]).to_mongo().to_dict() == before
    assert balance(payment) == Decimal("80.01")
    assert sorted(credits(payment)) == sorted([ids[0], ids[3], ids[4]])
    assert Card.objects.get(id=payment["creditCardId"]).inflight == []
    # The worker's rejection was not repeated: the event was settled, so skipped.
    assert letters(settings, ids) == [(ids[2], "product_not_in_payment", sent[2])]


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize(
    ("kill", "step"),
    [
        ("pool process", "refund.after_record"),
        ("whole node", "refund.after_record"),
        # The card credited with all six in one update, no ledger entry written: the names on the card say so.
        ("pool process", "refund.after_card_credit"),
        # Credited, entries written, names pulled, nothing flagged: only the ledger says so.
        ("pool process", "refund.after_credit"),
    ],
)
def test_a_worker_killed_mid_batch_and_restarted_applies_every_event_exactly_once(
    kill: str,
    step: str,
    settings: Settings,
    isolated: Settings,
    world_factory: Callable[..., Any],
    seed_checkout: Callable[..., dict[str, Any]],
) -> None:
    # The batch records the six refunds of the payment in one write; at
    # ``step`` event 3 dies (or stalls, and its node is killed): after the
    # record step all six are recorded, none is credited, none settled.
    point = f"{step}@:0:3"
    # A killed node's batch comes back once its visibility timeout has passed: the least allowed, 10 s.
    world = (
        world_factory(failpoints=point)
        if kill == "pool process"
        else world_factory(failpoints=f"stall:{point}", env={"CELERY_VISIBILITY_TIMEOUT": "10"})
    )
    client = Client(world.api.url)
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="0.10", products=UNITS)
    payment = client.wait(client.pay(checkout["_id"], card["id"]))["result"]
    kcat_produce(
        isolated, isolated.topic_product_refunded, [product_refund(payment, "u", 0.01)] * 6, partition=0
    )
    ids = event_ids(isolated, 6)
    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix, "CELERY_KEY_PREFIX": world.prefix}
    with bridge_process(env):
        wait_until(
            lambda: len(Payment.objects.get(id=payment["id"]).refunds) == 6,
            timeout=60,
            message="the batch recorded its events",
        )
        if kill == "pool process":
            wait_until(lambda: "signal 9" in world.log.read_text(), timeout=30, message="the failpoint fired")
        else:
            assert credits(payment) == {}  # mid-batch: recorded, not credited
            stop_worker(world.worker, signal.SIGKILL)
            world.worker = world.start_worker("again")
        # No sweep: the batch message itself comes back (acks_late) and runs again.
        wait_until(
            lambda: set(statuses(ids).values()) == {("applied", None)} and len(statuses(ids)) == 6,
            timeout=120,
            interval=0.5,
            message="every event applied",
        )
    assert sorted(credits(payment)) == sorted(ids)
    assert [r.eventId for r in Payment.objects.get(id=payment["id"]).refunds] == ids
    assert all(r.published for r in Payment.objects.get(id=payment["id"]).refunds)
    assert balance(payment) == Decimal("99.96")  # 100 - 0.10 + 6 x 0.01
    assert Card.objects.get(id=card["id"]).inflight == []


@pytest.mark.slow
def test_an_event_failing_transiently_in_a_batch_goes_on_alone_and_the_rest_are_not_held_back(
    isolated: Settings,
    world_factory: Callable[..., Any],
    seed_checkout: Callable[..., dict[str, Any]],
) -> None:
    # Event 2 of 5 fails after its refund is recorded, as if the database
    # were away, on its first two passes (TASK_MAX_RETRIES + 1): once in the
    # batch, once as its own task; its task's retry finishes it.
    world = world_factory(
        failpoints="fail:refund.after_record@:0:2",
        env={"TASK_MAX_RETRIES": "1", "TASK_RETRY_BACKOFF_MAX_SECONDS": "1"},
    )
    client = Client(world.api.url)
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="0.10", products=UNITS)
    payment = client.wait(client.pay(checkout["_id"], card["id"]))["result"]
    kcat_produce(
        isolated, isolated.topic_product_refunded, [product_refund(payment, "u", 0.01)] * 5, partition=0
    )
    ids = event_ids(isolated, 5)
    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix, "CELERY_KEY_PREFIX": world.prefix}
    with bridge_process(env):
        wait_until(
            lambda: set(statuses(ids).values()) == {("applied", None)} and len(statuses(ids)) == 5,
            timeout=90,
            interval=0.5,
            message="every event applied",
        )
    entries = credits(payment)
    assert sorted(entries) == sorted(ids)
    # Events 3 and 4 came after event 2 in the batch and were credited before it.
    assert max(entries[ids[3]].at, entries[ids[4]].at) < entries[ids[2]].at
    assert "sent on as refunds.refund_product" in world.log.read_text()
    assert balance(payment) == Decimal("99.95")
    assert Card.objects.get(id=card["id"]).inflight == []
    # Recorded in order (event 2 failed after its record step): each once.
    assert [r.eventId for r in Payment.objects.get(id=payment["id"]).refunds] == ids


def test_the_batch_message_carries_per_event_task_messages(settings: Settings) -> None:
    """The batch's items are the per-event messages: the sweep resends a lost batch's events alone."""
    db.connect(settings)
    recorder = Recorder()
    event_id = f"{settings.topic(settings.topic_product_refunded)}:{uuid.uuid4()}:0:1"
    kwargs = {"event_id": event_id, "payment_id": "p", "product_id": "p-1", "price": "19.99", "raw": "{}"}
    inbox.hand_over_batch(
        recorder, "refunds.apply_batch", [inbox.Handed(event_id, "refunds.refund_product", kwargs)]
    )
    assert recorder.sent == [
        ("refunds.apply_batch", {"events": [{"task": "refunds.refund_product", "kwargs": kwargs}]})
    ]
    entry = RefundEvent.objects.get(id=event_id)
    assert (entry.task, entry.kwargs, entry.status) == ("refunds.refund_product", kwargs, "received")
    swept = Recorder()
    RefundEvent.objects(id=event_id).update_one(set__updatedAt=entry.updatedAt - timedelta(hours=1))
    inbox.requeue_stale(swept, timedelta(minutes=10), limit=1000)
    assert ("refunds.refund_product", kwargs) in swept.sent


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_concurrent_batches_over_the_same_payments_apply_each_event_once_and_never_over_refund(
    seed: int, settings: Settings, topics: list[str]
) -> None:
    """Eight batches at once, on three payments, with overlapping events: each event once, no over-refund.

    Each payment has 10 units of 0.01; 15 distinct events ask for one unit
    each, and every batch carries a shuffled share of them, so batches race
    on each payment's compare-and-set and each card's credit (a bulk write
    that does not match every update reads again what it wrote), and the
    same event runs in several batches at once.  The races differ from run
    to run: three runs of different shares.
    """
    db.connect(settings)
    payment_ids = charged_payments(3, units=10)
    topic = settings.topic(settings.topic_product_refunded)
    requests = [
        RefundRequest(f"{topic}:{uuid.uuid4()}:0:{i}", pid, "u", Decimal("0.01"))
        for pid in payment_ids
        for i in range(15)
    ]
    rng = random.Random(seed)
    batches = [rng.sample(requests, 30) for _ in range(8)]
    start = threading.Barrier(len(batches))
    outcomes: list[dict[str, Any]] = []

    def run(batch: list[RefundRequest]) -> None:
        start.wait()
        outcomes.append(apply_many(settings, batch))

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # Whatever a batch could not finish (contended, rejected) runs again alone, as its per-event task would.
    for request in requests:
        outcome = apply_many(settings, [request])[request.event_id]
        assert isinstance(outcome, dict | OverRefund), outcome
    for payment_id in payment_ids:
        payment = Payment.objects.get(id=payment_id)
        recorded = [r.eventId for r in payment.refunds]
        assert len(recorded) == len(set(recorded)) == 10, recorded  # never more than was paid
        assert payment.refundedAmount == Decimal("0.10")
        assert all(r.credited and r.published for r in payment.refunds)
        card = Card.objects.get(id=payment.creditCardId)
        assert (card.money, card.inflight) == (Decimal("0.10"), [])
        assert sorted(
            e.id.removeprefix("credit:") for e in LedgerEntry.objects(paymentId=payment_id)
        ) == sorted(recorded)
    assert len(outcomes) == len(batches)  # every batch ended


def _stalled_run(
    settings: Settings, batch: list[RefundRequest], stalled: RefundRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Thread, dict[str, Any]]:
    """Apply ``batch`` in a thread that stalls once ``stalled`` is recorded (before any credit of it).

    Returns once the stall has begun (the event's refund is on its payment),
    so the caller can write meanwhile; the stall is 5 s, far more than a
    single write or refund of the caller takes.
    """
    from shared import failpoints

    monkeypatch.setattr(failpoints, "STALL_SECONDS", 5)
    stalling = make_settings(PAYMENT_FAILPOINTS=f"stall:refund.after_record@{stalled.event_id}")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(apply_many(stalling, batch)))
    thread.start()
    wait_until(
        lambda: any(
            r.eventId == stalled.event_id for r in Payment.objects.get(id=stalled.payment_id).refunds
        ),
        timeout=10,
        message="the stalled run recorded its event",
    )
    return thread, result


def test_a_run_that_recorded_an_event_and_lost_the_card_race_to_a_finished_redelivery_credits_it_once(
    settings: Settings, topics: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard on retry rounds: a credit is looked up in the ledger once the card is read again.

    Run A records the event (fresh for A, whose cards were read before its
    record) and stalls before its credit; meanwhile a redelivery of the event
    (run B: the sweep, a second worker) finds it recorded and finishes it:
    credit, ledger entry, settle (the card no longer names it).  A's credit
    then misses (the card moved) and A reads the card again: only the ledger
    says the credit is made.  A crash cannot reach this state (a redelivery
    after a crash finds the event recorded, never fresh): it takes two runs
    of one event at once.
    """
    db.connect(settings)
    (payment_id,) = charged_payments(1, units=10)
    topic = settings.topic(settings.topic_product_refunded)
    event = RefundRequest(f"{topic}:{uuid.uuid4()}:0:0", payment_id, "u", Decimal("0.01"))
    card_id = Payment.objects.get(id=payment_id).creditCardId
    thread, first = _stalled_run(settings, [event], event, monkeypatch)
    second = apply_many(settings, [event])[event.event_id]  # B: the whole event, during A's stall
    assert isinstance(second, dict), second
    assert Card.objects.get(id=card_id).money == Decimal("0.01")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(first[event.event_id], dict), first
    card = Card.objects.get(id=card_id)
    assert (card.money, card.inflight) == (Decimal("0.01"), [])
    assert [e.id for e in LedgerEntry.objects(paymentId=payment_id)] == [f"credit:{event.event_id}"]


def test_a_card_given_up_as_contended_keeps_the_names_of_credits_whose_ledger_entry_is_not_written(
    settings: Settings, topics: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card's credit given up (it kept changing) must not settle the names it saw but left unrecorded.

    Event X was credited by a delivery that then died (its name on the card,
    no ledger entry).  A batch of X and a new event Y sees X's name (to be
    settled once X's entry is written) and tries to credit Y, but the card
    keeps changing, so the card's events are given up as contended: X's
    entry is not written, so its name must stay on the card, or the next
    delivery finds neither the name nor the entry and credits X again.  The
    card's attempts are cut to one so that one concurrent write exhausts them.
    """
    from shared.services import card_ops

    db.connect(settings)
    (payment_id,) = charged_payments(1, units=10)
    topic = settings.topic(settings.topic_product_refunded)
    x, y = (RefundRequest(f"{topic}:{uuid.uuid4()}:0:{i}", payment_id, "u", Decimal("0.01")) for i in (0, 1))
    card_id = Payment.objects.get(id=payment_id).creditCardId
    # X's first delivery credits the card and stops before its ledger entry.
    dying = make_settings(PAYMENT_FAILPOINTS=f"fail:refund.after_card_credit@{x.event_id}")
    assert not isinstance(apply_many(dying, [x])[x.event_id], dict)
    assert Card.objects.get(id=card_id).inflight == [f"credit:{x.event_id}"]
    assert not LedgerEntry.objects(id=f"credit:{x.event_id}").first()

    monkeypatch.setattr(card_ops, "MAX_ATTEMPTS", 1)
    thread, outcomes = _stalled_run(settings, [x, y], y, monkeypatch)
    # Another operation on the card meanwhile (a charge, say): the batch's card read is stale.
    card_ops.decide(card_ops.read(card_id), "debit:elsewhere")  # type: ignore[arg-type]
    card_ops.settle(card_id, "debit:elsewhere")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert not isinstance(outcomes[y.event_id], dict), outcomes  # given up: contended
    card = Card.objects.get(id=card_id)
    # The credit X made is still accounted for: its name on the card, or its entry in the ledger.
    assert f"credit:{x.event_id}" in card.inflight or LedgerEntry.objects(id=f"credit:{x.event_id}").first()

    monkeypatch.setattr(card_ops, "MAX_ATTEMPTS", 200)
    for request in (x, y):  # the events' next deliveries
        assert isinstance(apply_many(settings, [request])[request.event_id], dict)
    card = Card.objects.get(id=card_id)
    assert (card.money, card.inflight) == (Decimal("0.02"), [])
    assert sorted(e.id for e in LedgerEntry.objects(paymentId=payment_id)) == sorted(
        f"credit:{r.event_id}" for r in (x, y)
    )


def test_a_refund_naming_its_payment_in_capitals_applies_as_it_did_before_batches(
    settings: Settings, topics: list[str]
) -> None:
    """An id in either case names the same payment (an inbox entry written before the bridge lowercased ids).

    Before batches, the refund found the payment by ``_id`` whatever the
    case; a batch must not dead-letter it as an unknown payment (nor one
    already recorded, which must be finished).
    """
    db.connect(settings)
    (payment_id,) = charged_payments(1, units=10)
    topic = settings.topic(settings.topic_product_refunded)
    event = RefundRequest(f"{topic}:{uuid.uuid4()}:0:0", payment_id.upper(), "u", Decimal("0.01"))
    outcome = apply_many(settings, [event])[event.event_id]
    assert isinstance(outcome, dict), outcome
    assert outcome["paymentId"] == payment_id
    card = Card.objects.get(id=Payment.objects.get(id=payment_id).creditCardId)
    assert (card.money, card.inflight) == (Decimal("0.01"), [])
