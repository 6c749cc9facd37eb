"""Refunds from the order service's Kafka events, through the real bridge, broker and worker.

Events are produced with kcat (not our Kafka client), byte for byte as the
order service's kafkajs producer sends them: a JSON value, no key, no headers.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shared.models import Card, LedgerEntry, Payment, RefundEvent
from shared.services import inbox
from shared.settings import Settings
from tests import helpers
from tests.helpers import Client, pay_new_checkout
from tests.support import wait_until
from tests.workers.kafka_support import (
    SteadyProducer,
    bridge_process,
    handed_over,
    kcat_produce,
    read_to_end,
)

PRODUCTS = [
    {"productId": "p-1", "quantity": 3, "price": 19.99, "sellerId": "s-1"},
    {"productId": "p-2", "quantity": 1, "price": 10.00, "sellerId": "s-2"},
]  # total 69.97


@pytest.fixture(scope="module")
def bridge(topics: list[str], payment_worker: Any) -> Iterator[subprocess.Popen[bytes]]:
    with bridge_process() as proc:
        yield proc


@pytest.fixture
def paid(client: Client, seed_checkout: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A charged payment of ``client`` (the card starts with 100.00), its payment-accepted event sent.

    The worker's outbox thread sends that event after the task has answered;
    waiting for its flag keeps that write out of a test's before and after.
    """

    def pay(products: list[dict[str, Any]] = PRODUCTS, total: str = "69.97") -> dict[str, Any]:
        _card, payment = helpers.paid(client, seed_checkout, total=total, products=products)
        wait_until(
            lambda: stored(payment).acceptedEventPublished, timeout=30, message="payment-accepted sent"
        )
        return payment

    return pay


def balance(payment: dict[str, Any]) -> Decimal:
    return Card.objects.get(id=payment["creditCardId"]).money


def stored(payment: dict[str, Any]) -> Payment:
    return Payment.objects.get(id=payment["id"])


def order_refund(payment: dict[str, Any], total: float | None = None) -> dict[str, Any]:
    return {"refunded": True, "totalPrice": total or payment["totalPrice"], "paymentId": payment["id"]}


def product_refund(payment: dict[str, Any], product_id: str, price: float) -> dict[str, Any]:
    return {
        "productId": product_id,
        "price": price,
        "cardNumber": payment["cardNumber"],
        "paymentId": payment["id"],
    }


def settled(payment: dict[str, Any], count: int) -> bool:
    """``count`` refunds recorded and fully applied (publishing is their last step)."""
    refunds = stored(payment).refunds
    return len(refunds) == count and all(r.published for r in refunds)


def dead_letters_for(settings: Settings, payment_id: str, count: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        letters = []
        try:
            records = read_to_end(settings, settings.topic_dead_letter)
        except AssertionError:
            return None  # the broker was slow to answer: read again
        for record in records:
            if payment_id.encode() in (record.value or b""):
                letters.append({"value": record.value, **{k: v.decode() for k, v in record.headers}})
        return letters if len(letters) >= count else None

    letters: list[dict[str, Any]] = wait_until(found, timeout=60, interval=0.5, message="dead letters")
    return letters


def test_a_whole_order_refund_credits_the_card_and_marks_every_product(
    settings: Settings, bridge: Any, client: Client, paid: Callable[..., dict[str, Any]]
) -> None:
    payment = paid()
    assert balance(payment) == Decimal("30.03")
    kcat_produce(settings, settings.topic_order_refunded, [order_refund(payment)])
    wait_until(lambda: balance(payment) == Decimal("100.00"), timeout=60, message="card credited")
    found = client.call("GET", f"/find/{payment['id']}").json()
    assert found["refunded"] is True
    assert found["refundedAmount"] == 69.97
    assert [(p["isRefunded"], p["refundedQuantity"]) for p in found["products"]] == [(True, 3), (True, 1)]
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == 1


def test_product_refunds_credit_their_units_and_a_later_order_refund_only_the_rest(
    settings: Settings, bridge: Any, client: Client, paid: Callable[..., dict[str, Any]]
) -> None:
    payment = paid()
    kcat_produce(settings, settings.topic_product_refunded, [product_refund(payment, "p-1", 39.98)])
    wait_until(lambda: balance(payment) == Decimal("70.01"), timeout=60, message="two units credited")
    found = client.call("GET", f"/find/{payment['id']}").json()
    assert found["products"][0]["refundedQuantity"] == 2
    assert found["products"][0]["isRefunded"] is False
    assert (found["refundedAmount"], found["refunded"]) == (39.98, False)

    kcat_produce(settings, settings.topic_order_refunded, [order_refund(payment)])
    wait_until(lambda: balance(payment) == Decimal("100.00"), timeout=60, message="the rest credited")
    found = client.call("GET", f"/find/{payment['id']}").json()
    assert (found["refundedAmount"], found["refunded"]) == (69.97, True)
    assert [p["refundedQuantity"] for p in found["products"]] == [3, 1]
    credits = sorted(e.amount for e in LedgerEntry.objects(paymentId=payment["id"], kind="credit"))
    assert credits == [Decimal("29.99"), Decimal("39.98")]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown payment", "unknown_payment"),
        ("product not in payment", "product_not_in_payment"),
        ("not whole units", "not_whole_units"),
        # Each cap on its own: the product's units, then the payment's amount.
        ("more units of a product than bought", "over_refund"),
        ("more than the payment has left", "over_refund"),
        ("deleted card", "card_deleted"),
        ("already refunded in full", "nothing_to_refund"),
    ],
)
def test_an_event_that_cannot_apply_is_dead_lettered_with_its_reason_and_changes_nothing(
    case: str,
    reason: str,
    settings: Settings,
    bridge: Any,
    client: Client,
    paid: Callable[..., dict[str, Any]],
) -> None:
    if case == "more than the payment has left":
        # A discounted checkout: its products add up to more than was paid.
        payment = paid(total="50.00")
        kcat_produce(settings, settings.topic_product_refunded, [product_refund(payment, "p-1", 39.98)])
        wait_until(lambda: settled(payment, 1), timeout=60, message="first refund")
    else:
        payment = paid()
    if case == "already refunded in full":
        kcat_produce(settings, settings.topic_order_refunded, [order_refund(payment)])
        wait_until(lambda: settled(payment, 1), timeout=60, message="first refund")
    if case == "deleted card":
        job = client.wait(client.call("DELETE", f"/delete-card/{payment['creditCardId']}"))
        assert job["status"] == "succeeded"
    before_balance, before = balance(payment), stored(payment).to_mongo().to_dict()
    target = dict(payment, id=str(uuid.uuid4().hex[:24])) if case == "unknown payment" else payment
    event = {
        "unknown payment": order_refund(target, 10.0),
        "product not in payment": product_refund(payment, "p-9", 19.99),
        "not whole units": product_refund(payment, "p-1", 30.00),
        # 2 units of p-2, 1 bought; 20.00 of the 69.97 paid is left.
        "more units of a product than bought": product_refund(payment, "p-2", 20.00),
        # 1 unit of p-1 is left, but only 10.02 of the 50.00 paid.
        "more than the payment has left": product_refund(payment, "p-1", 19.99),
        "deleted card": order_refund(payment),
        "already refunded in full": order_refund(payment),
    }[case]
    topic = settings.topic_order_refunded if "refunded" in event else settings.topic_product_refunded
    [sent] = kcat_produce(settings, topic, [event])
    [letter] = dead_letters_for(settings, target["id"], 1)
    assert letter["reason"] == reason
    assert letter["value"] == sent  # the original message, byte for byte
    assert letter["source-topic"] == settings.topic(topic)
    source = ("source-topic", "source-topic-id", "source-partition", "source-offset")
    assert letter["event-id"] == ":".join(letter[k] for k in source)
    assert balance(payment) == before_balance
    assert stored(payment).to_mongo().to_dict() == before


def test_the_same_event_delivered_three_times_credits_once(
    settings: Settings, payment_celery: Any, payment_worker: Any, paid: Callable[..., dict[str, Any]]
) -> None:
    payment = paid()
    event_id = f"{settings.topic(settings.topic_product_refunded)}:0:{uuid.uuid4().int % 10**9}"
    kwargs = {"event_id": event_id, "payment_id": payment["id"], "product_id": "p-1", "price": "19.99"}
    # As Kafka redelivers a record whose offset was not committed.  Each copy's
    # result is awaited, so every copy has run (on any worker) before the checks.
    copies = [
        payment_celery.send_task("refunds.refund_product", kwargs=kwargs, ignore_result=False)
        for _ in range(3)
    ]
    for copy in copies:
        copy.get(timeout=60)
    assert all(r.published for r in stored(payment).refunds)
    assert balance(payment) == Decimal("50.02")
    assert [r.eventId for r in stored(payment).refunds] == [event_id]
    assert Card.objects.get(id=payment["creditCardId"]).inflight == []
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == 1
    applied = [
        r
        for r in wait_until(
            lambda: read_to_end(settings, settings.topic_refund_applied), message="the topic read"
        )
        if event_id.encode() in r.value
    ]
    assert len(applied) >= 1


def test_concurrent_partial_refunds_that_together_exceed_what_was_bought_apply_only_what_fits(
    settings: Settings,
    payment_celery: Any,
    payment_worker: Any,
    second_worker: Any,
    paid: Callable[..., dict[str, Any]],
) -> None:
    payment = paid()  # p-1: 3 x 19.99, p-2: 1 x 10.00
    topic = settings.topic(settings.topic_product_refunded)
    asked = [("p-1", "19.99")] * 12 + [("p-2", "10.00")] * 4  # 279.88 asked of 69.97
    tasks = []
    for product_id, price in asked:
        event_id = f"{topic}:2:{uuid.uuid4().int % 10**12}"
        kwargs = {"event_id": event_id, "payment_id": payment["id"], "product_id": product_id, "price": price}
        inbox.hand_over(payment_celery, event_id, "refunds.refund_product", kwargs)  # as the bridge does
        tasks.append(event_id)
    wait_until(
        lambda: RefundEvent.objects(id__in=tasks, status="received").count() == 0,
        timeout=90,
        message="every event settled",
    )
    settled_as = [(e.status, e.reason) for e in RefundEvent.objects(id__in=tasks)]
    assert sorted(settled_as, key=str) == sorted(
        [("applied", None)] * 4 + [("dead_lettered", "over_refund")] * 12, key=str
    )
    final = stored(payment)
    assert [p.refundedQuantity for p in final.products] == [3, 1]
    assert final.refundedAmount == Decimal("69.97")
    assert final.refunded is True
    wait_until(lambda: settled(payment, 4), timeout=60, message="the four that fit published")
    assert balance(payment) == Decimal("100.00")
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == 4


@pytest.mark.slow
def test_a_replay_of_the_whole_topic_from_the_beginning_changes_nothing(
    isolated: Settings, payment_celery: Any, payment_worker: Any, paid: Callable[..., dict[str, Any]]
) -> None:
    payment = paid()
    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix}
    # Two partial refunds leave room (39.98 of 69.97, two units of p-1): a
    # replayed event whose id were not recognised would fit and apply again.
    events = [product_refund(payment, "p-1", 19.99), product_refund(payment, "p-2", 10.00)]
    with bridge_process(env):
        kcat_produce(isolated, isolated.topic_product_refunded, events)
        wait_until(lambda: settled(payment, 2), timeout=60, message="both refunded")
    assert balance(payment) == Decimal("60.02")
    before = stored(payment).to_mongo().to_dict()
    event_ids = sorted(r.eventId for r in stored(payment).refunds)
    assert [RefundEvent.objects.get(id=e).status for e in event_ids] == ["applied", "applied"]
    # A new consumer group reads both topics again from offset 0.
    group = f"replay-{uuid.uuid4().hex[:6]}"
    with bridge_process({**env, "KAFKA_BRIDGE_GROUP": group}):
        wait_until(lambda: _group_caught_up(isolated, group), timeout=90, message="replay consumed")
        drain_refunds(isolated, payment_celery)
    assert balance(payment) == Decimal("60.02")
    assert stored(payment).to_mongo().to_dict() == before
    # The inbox holds the two events once each, applied; nothing was set aside.
    mine = RefundEvent.objects(kwargs__payment_id=payment["id"])
    assert sorted((e.id, e.status, e.reason) for e in mine) == [(e, "applied", None) for e in event_ids]
    # Read to the end offsets (no topic yet: nothing set aside either).
    assert read_to_end(isolated, isolated.topic_dead_letter, timeout_s=30) == []


def _group_caught_up(settings: Settings, group: str) -> bool:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        real = settings.topic(group)
        committed = admin.list_group_offsets(real).get(real, {})
        partitions = [
            TopicPartition(t, p)
            for t in settings.consumed_topics
            for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = consumer.end_offsets(partitions)
        # An empty partition has nothing to commit.
        return all(end == 0 or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items())
    finally:
        consumer.close()
        admin.close()


def drain_refunds(settings: Settings, payment_celery: Any) -> None:
    """Wait until the refunds queue is empty and no worker holds a refund task (twice in a row)."""
    import redis

    def idle() -> bool:
        with redis.Redis.from_url(settings.broker_url) as client:
            if client.llen(f"{settings.broker_key_prefix}refunds"):
                return False
        inspect = payment_celery.control.inspect(timeout=1)
        held = [*(inspect.active() or {}).values(), *(inspect.reserved() or {}).values()]
        return not any(task["name"].startswith("refunds.") for tasks in held for task in tasks)

    wait_until(lambda: idle() and idle(), timeout=60, interval=0.5, message="refund tasks drained")


@pytest.fixture
def isolated(settings: Settings) -> Iterator[Settings]:
    """Refund topics of this test alone, so that only its own bridges read them."""
    from kafka import KafkaAdminClient

    from shared.kafka import ensure_topics
    from tests.environment import make_settings

    iso = make_settings(KAFKA_TOPIC_PREFIX=f"{settings.kafka_topic_prefix}iso{uuid.uuid4().hex[:6]}.")
    ensure_topics(iso)
    yield iso
    admin = KafkaAdminClient(bootstrap_servers=iso.kafka_bootstrap)
    try:
        admin.delete_topics(iso.all_topics)
    finally:
        admin.close()


def handed(payment: dict[str, Any]) -> int:
    """How many events of the payment are in the inbox (handed over by a bridge)."""
    return RefundEvent.objects(kwargs__payment_id=payment["id"]).count()


def _group_members(settings: Settings) -> int:
    """Members of the bridges' group; 0 while the broker has no coordinator for it yet."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        name = settings.topic(settings.bridge_group_id)
        try:
            group: dict[str, Any] = admin.describe_groups([name])[name]
        except KafkaError as exc:
            # On a fresh broker the first group waits for __consumer_offsets.
            if exc.retriable:
                return 0
            raise
        return len(group.get("members") or [])
    finally:
        admin.close()


#: Most events the streaming tests send (each refunds one unit of 0.01): the
#: steady stream lasts as long as the test's moves take, then 50 more come.
STREAM_CAP = 400


def streamed_payment(paid: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A payment of ``STREAM_CAP`` units of 0.01, for a stream of one-unit refunds."""
    units = [{"productId": "u", "quantity": STREAM_CAP, "price": 0.01, "sellerId": "s"}]
    return paid(products=units, total=f"{STREAM_CAP / 100:.2f}")


def assert_each_applied_once(payment: dict[str, Any], count: int) -> None:
    """``count`` one-unit refunds of a ``streamed_payment``, each credited once."""
    refunds = stored(payment).refunds
    assert len({r.eventId for r in refunds}) == count
    assert stored(payment).products[0].refundedQuantity == count
    # 100.00 less the payment, plus one cent an event: each credited once, exactly.
    assert balance(payment) == Decimal("100.00") - Decimal(STREAM_CAP) / 100 + Decimal(count) / 100
    assert Card.objects.get(id=payment["creditCardId"]).inflight == []
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == count


@pytest.mark.slow(seconds=40)
def test_two_bridges_with_a_rebalance_mid_stream_apply_each_event_once(
    isolated: Settings, second_worker: Any, paid: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """Events keep coming while a second bridge joins and the first leaves; each applies once.

    What matters is that both moves of the partitions land mid-stream, with
    events handed over before each and events still to come, not how many
    events there are: once the first bridge is in its group, the order
    service sends one every 0.2 s until both moves are done, then 50 more
    (about 100 in all, where a fixed 500 had made this the suite's longest
    test and failed it on a loaded machine).
    """
    payment = streamed_payment(paid)
    events = [product_refund(payment, "u", 0.01) for _ in range(STREAM_CAP)]
    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix}
    producer = SteadyProducer(
        isolated, isolated.topic_product_refunded, events, batch=1, pause=0.2, hold_back=50
    )
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    try:
        with bridge_process(env, first_log) as first:
            # The stream starts once the first bridge is in the group, not
            # while a loaded machine starts its process.
            wait_until(
                lambda: _group_members(isolated) == 1, timeout=60, interval=0.2, message="the first joined"
            )
            producer.start()
            wait_until(lambda: handed(payment) > 0, timeout=60, interval=0.05, message="the first at work")
            with bridge_process(env, second_log) as second:  # joins the group: partitions move
                wait_until(lambda: _group_members(isolated) == 2, timeout=60, message="the second joined")
                at_join = handed(payment)
                first.send_signal(signal.SIGTERM)  # the first leaves: they move again
                assert first.wait(timeout=60) == 0
                at_leave = handed(payment)
                producer.release()
                sent = len(producer.finish())
                wait_until(
                    lambda: settled(payment, sent), timeout=240, interval=0.5, message=f"{sent} applied"
                )
                assert second.poll() is None
    finally:
        producer.stop()
    # Both moves came with events handed over before them and events still to come.
    assert 0 < at_join <= at_leave < sent, (at_join, at_leave, sent)
    by_first, by_second = set(handed_over(first_log)), set(handed_over(second_log))
    assert by_first, "the first bridge handed events over"
    assert by_second, "the second bridge handed events over"
    assert len(by_first | by_second) == sent
    assert_each_applied_once(payment, sent)


@pytest.mark.slow(seconds=30)
def test_a_bridge_killed_mid_stream_and_restarted_loses_no_event_and_applies_none_twice(
    isolated: Settings, payment_worker: Any, paid: Callable[..., dict[str, Any]]
) -> None:
    """Events keep coming until the bridge is killed, and 50 more after; each applies once.

    The kill must land mid-stream (some events handed over, some not), which
    the events sent after it guarantee; their number is not the point: once
    the bridge is in its group, two every 0.1 s until the kill, then 50
    (about 100 in all, where a fixed 300 had cost a minute and a half).
    """
    payment = streamed_payment(paid)
    # The group gives the killed bridge's partitions to the restarted one once
    # the dead member's session expires: the broker's minimum, not 45 s.
    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix, "KAFKA_BRIDGE_SESSION_TIMEOUT_MS": "6000"}
    events = [product_refund(payment, "u", 0.01) for _ in range(STREAM_CAP)]
    producer = SteadyProducer(
        isolated, isolated.topic_product_refunded, events, batch=2, pause=0.1, hold_back=50
    )
    try:
        with bridge_process(env) as first:
            wait_until(
                lambda: _group_members(isolated) == 1, timeout=60, interval=0.2, message="the bridge joined"
            )
            producer.start()
            wait_until(lambda: handed(payment) > 0, timeout=60, interval=0.01, message="some handed over")
            first.send_signal(signal.SIGKILL)
            first.wait()
        # The kill landed mid-stream: some events were handed over, some not.
        at_kill = handed(payment)
        producer.release()
        sent = len(producer.finish())
        assert 0 < at_kill < sent, (at_kill, sent)
        with bridge_process(env):
            wait_until(
                lambda: settled(payment, sent), timeout=240, interval=0.5, message=f"all {sent} applied"
            )
    finally:
        producer.stop()
    assert handed(payment) == sent
    assert_each_applied_once(payment, sent)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["refund.after_record", "refund.after_card_credit", "refund.after_credit"])
def test_a_worker_killed_mid_refund_is_redelivered_and_credits_once(
    point: str,
    settings: Settings,
    world_factory: Callable[..., Any],
    seed_checkout: Callable[..., dict[str, Any]],
) -> None:
    world = world_factory(failpoints=point)
    client = Client(world.api.url)
    card = client.add_card(money=100)
    payment = pay_new_checkout(client, seed_checkout, card["id"], total="69.97", products=PRODUCTS)["result"]
    event_id = f"{settings.topic(settings.topic_product_refunded)}:1:{uuid.uuid4().int % 10**9}"
    kwargs = {"event_id": event_id, "payment_id": payment["id"], "product_id": "p-1", "price": "19.99"}
    inbox.hand_over(world.celery, event_id, "refunds.refund_product", kwargs)  # as the bridge does
    wait_until(lambda: "signal 9" in world.log.read_text(), timeout=60, message="the failpoint fired")
    # Celery requeues the task of a lost worker, unless Redis had already redelivered
    # that message once: then it drops it. The inbox sweep sends it again either way.
    world.celery.send_task("jobs.requeue_stale", kwargs={"older_than_seconds": 0})
    wait_until(
        lambda: RefundEvent.objects.get(id=event_id).status == "applied", timeout=90, message="refund applied"
    )
    assert balance(payment) == Decimal("50.02")
    assert Card.objects.get(id=payment["creditCardId"]).inflight == []
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == 1
    assert [r.eventId for r in stored(payment).refunds] == [event_id]


def test_a_card_number_in_clear_in_a_refund_message_reaches_neither_tasks_nor_dead_letters(
    settings: Settings, bridge: Any
) -> None:
    unknown = uuid.uuid4().hex[:24]
    kcat_produce(
        settings,
        settings.topic_product_refunded,
        [{"productId": "p-1", "price": 19.99, "cardNumber": 4242424242424242, "paymentId": unknown}],
    )
    [letter] = dead_letters_for(settings, unknown, 1)
    assert letter["reason"] == "unknown_payment"
    assert b"4242424242424242" not in letter["value"]
    assert b'"cardNumber":"************4242"' in letter["value"]


def test_a_refund_still_applies_to_a_payment_its_owner_deleted(
    settings: Settings, bridge: Any, client: Client, paid: Callable[..., dict[str, Any]]
) -> None:
    payment = paid()
    job = client.wait(client.call("DELETE", f"/delete-payment/{payment['id']}"))
    assert job["status"] == "succeeded"
    kcat_produce(settings, settings.topic_order_refunded, [order_refund(payment)])
    wait_until(lambda: settled(payment, 1), timeout=60, message="refund applied")
    assert balance(payment) == Decimal("100.00")
    assert client.call("GET", f"/find/{payment['id']}").status_code == 404
