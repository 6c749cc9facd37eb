"""The refund bridge process against the real Kafka broker and Redis.

These tests check the bridge's own contract (hand-over, dead-lettering, offset
commits, graceful stop); what the refund tasks do with an event is tested with
the tasks.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from bson import ObjectId
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from shared import db
from shared.models import RefundEvent
from shared.settings import Settings
from tests.environment import RUN_ID
from tests.support import wait_until
from tests.workers.kafka_support import bridge_process, event_ids, kcat_produce
from tests.workers.test_refunds import isolated

__all__ = ["isolated"]  # a fixture of the refund tests: refund topics of the test's own

BRIDGE_PREFIX = f"{RUN_ID}bridge:"
#: A consumer group of its own: other tests' bridges may consume the same topics meanwhile.
BRIDGE_GROUP = "bridge-contract"


@pytest.fixture
def bridge(settings: Settings, topics: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    with bridge_process({"CELERY_KEY_PREFIX": BRIDGE_PREFIX, "KAFKA_BRIDGE_GROUP": BRIDGE_GROUP}) as proc:
        yield proc


def queued_messages(settings: Settings, prefix: str = BRIDGE_PREFIX) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of each message waiting in the refunds queue of ``prefix``, oldest first."""
    with redis.Redis.from_url(settings.broker_url) as client:
        raw = client.lrange(f"{prefix}refunds", 0, -1)
    messages = []
    for item in reversed(raw):  # kombu LPUSHes: oldest last
        message = json.loads(item)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], kwargs))
    return messages


def queued_tasks(settings: Settings) -> list[tuple[str, dict[str, object]]]:
    """(per-event task name, kwargs) of each event waiting in the refunds queue, in order.

    The bridge sends only batch tasks; each event in one is the message of
    the per-event task that applies it alone.
    """
    tasks = []
    for name, kwargs in queued_messages(settings):
        assert name == "refunds.apply_batch", name
        tasks.extend((event["task"], event["kwargs"]) for event in kwargs["events"])
    return tasks


def committed_offsets(settings: Settings) -> dict[TopicPartition, int]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        group = settings.topic(BRIDGE_GROUP)
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


def topic_ids(settings: Settings, topics: list[str]) -> dict[str, str]:
    """Each topic's id, as Kafka reports it (part of every event id)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        return {t["name"]: str(t["topic_id"]) for t in admin.describe_topics(topics)}
    finally:
        admin.close()


def test_bridge_hands_events_to_tasks_dead_letters_the_rest_and_commits(
    settings: Settings, bridge: subprocess.Popen[bytes]
) -> None:
    payment_id = str(ObjectId())
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    order_topic = settings.topic(settings.topic_order_refunded)
    product_topic = settings.topic(settings.topic_product_refunded)
    order_value = json.dumps({"refunded": True, "totalPrice": 59.97, "paymentId": payment_id})
    product_value = json.dumps(
        {"productId": "p-1", "price": 39.98, "cardNumber": "************4242", "paymentId": payment_id}
    )
    sent = [
        producer.send(order_topic, order_value.encode()).get(10),
        producer.send(product_topic, product_value.encode()).get(10),
        producer.send(order_topic, b"{not json").get(10),
        producer.send(
            product_topic, json.dumps({"productId": "p-1", "price": -1, "paymentId": "nope"}).encode()
        ).get(10),
    ]
    producer.close()

    def our_tasks() -> list[tuple[str, dict[str, object]]]:
        # The topics hold this run's other tests' events too; the new group reads them all.
        return [t for t in queued_tasks(settings) if t[1].get("payment_id") == payment_id]

    tasks = wait_until(
        lambda: len(our_tasks()) == 2 and our_tasks(),
        timeout=60,
        message="two refund tasks queued",
    )
    by_name = dict(tasks)
    ids = topic_ids(settings, [order_topic, product_topic])
    assert by_name["refunds.refund_order"] == {
        "event_id": f"{order_topic}:{ids[order_topic]}:{sent[0].partition}:{sent[0].offset}",
        "payment_id": payment_id,
        "total_price": "59.97",
        "raw": order_value,
    }
    assert by_name["refunds.refund_product"] == {
        "event_id": f"{product_topic}:{ids[product_topic]}:{sent[1].partition}:{sent[1].offset}",
        "payment_id": payment_id,
        "product_id": "p-1",
        "price": "39.98",
        "raw": product_value,
    }

    consumer = KafkaConsumer(
        settings.topic(settings.topic_dead_letter),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
    )

    # The dead-letter topic is shared by this run's tests: pick ours by their source offsets.
    def where(m: object) -> tuple[str, str, str]:
        return (str(m.topic), str(m.partition), str(m.offset))  # type: ignore[attr-defined]

    ours = {where(sent[2]), where(sent[3])}
    dead: dict[tuple[str, str, str], dict[str, object]] = {}
    for record in consumer:
        headers = {k: v.decode() for k, v in record.headers}
        source = tuple(headers.get(f"source-{k}", "") for k in ("topic", "partition", "offset"))
        if source in ours:
            dead.setdefault(source, {"value": record.value, **headers})
        if len(dead) == 2:
            break
    consumer.close()
    not_json = dead[where(sent[2])]
    assert not_json["value"] == b"{not json"
    assert not_json["reason"] == "not_json"
    invalid = dead[where(sent[3])]
    assert invalid["reason"] == "invalid_fields"
    assert "paymentId" in str(invalid["detail"])
    assert "price" in str(invalid["detail"])

    # Every record is committed once it was handed over or set aside...
    wanted = {TopicPartition(m.topic, m.partition): m.offset + 1 for m in sent}
    wait_until(
        lambda: all(committed_offsets(settings).get(tp, -1) >= off for tp, off in wanted.items()),
        timeout=30,
        message="offsets committed",
    )
    # ...and SIGTERM stops the bridge cleanly.
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(timeout=30) == 0
    assert len(our_tasks()) == 2


def test_a_polled_batch_is_handed_over_as_one_task_carrying_every_event_in_order(
    settings: Settings, isolated: Settings
) -> None:
    db.connect(settings)  # the refund inbox, read below
    # All produced before the bridge starts: its first poll holds them all.
    payment_id = str(ObjectId())
    values = [{"productId": f"p-{i}", "price": 1.5, "paymentId": payment_id} for i in range(7)]
    sent = kcat_produce(isolated, isolated.topic_product_refunded, values, partition=0)
    ids = event_ids(isolated, 7)
    prefix = f"{RUN_ID}bridgebatch{uuid.uuid4().hex[:4]}:"
    env = {"CELERY_KEY_PREFIX": prefix, "KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix}
    try:
        with bridge_process(env):
            messages = wait_until(
                lambda: queued_messages(settings, prefix), timeout=60, message="batch queued"
            )
            # Only then the offsets: all seven, committed together.
            topic = TopicPartition(isolated.topic(isolated.topic_product_refunded), 0)
            group = isolated.topic(isolated.bridge_group_id)

            def committed() -> int:
                admin = KafkaAdminClient(bootstrap_servers=isolated.kafka_bootstrap)
                try:
                    offsets = admin.list_group_offsets(group).get(group, {})
                finally:
                    admin.close()
                return offsets[topic].offset if topic in offsets else -1

            wait_until(lambda: committed() == 7, timeout=30, message="offsets committed")
        assert [name for name, _kwargs in queued_messages(settings, prefix)] == ["refunds.apply_batch"]
        [(_name, kwargs)] = messages
        assert kwargs == {
            "events": [
                {
                    "task": "refunds.refund_product",
                    "kwargs": {
                        "event_id": ids[i],
                        "payment_id": payment_id,
                        "product_id": f"p-{i}",
                        "price": "1.50",
                        "raw": sent[i].decode(),
                    },
                }
                for i in range(7)
            ]
        }
        # Each event has its own inbox entry, holding its per-event task for the sweep.
        entries = {e.id: e for e in RefundEvent.objects(id__in=ids)}
        assert [(entries[i].task, entries[i].kwargs, entries[i].status) for i in ids] == [
            (e["task"], e["kwargs"], "received") for e in kwargs["events"]
        ]
    finally:
        with redis.Redis.from_url(settings.broker_url) as client:
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)
