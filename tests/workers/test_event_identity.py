"""A refund event keeps its identity when its topic is deleted and created again (issue 8, hole 2).

The second topic's first message has the same topic, partition and offset as
the first topic's: it is a new refund all the same, and must credit the card.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.kafka import ensure_topics
from shared.models import Card, LedgerEntry, Payment, RefundEvent
from shared.settings import Settings
from tests.environment import make_settings
from tests.helpers import Client, pay_new_checkout
from tests.support import wait_until
from tests.workers.kafka_support import bridge_process, kcat_produce


@pytest.fixture
def isolated(settings: Settings) -> Iterator[Settings]:
    iso = make_settings(KAFKA_TOPIC_PREFIX=f"{settings.kafka_topic_prefix}ident{uuid.uuid4().hex[:6]}.")
    ensure_topics(iso, partitions=1)
    yield iso
    admin = KafkaAdminClient(bootstrap_servers=iso.kafka_bootstrap)
    try:
        existing = set(admin.list_topics())
        admin.delete_topics([t for t in iso.all_topics if t in existing])
    finally:
        admin.close()


def recreate(settings: Settings, topic: str) -> None:
    """Delete the topic and create it again under the same name (Kafka deletes asynchronously)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.create_topics([NewTopic(topic, 1, 1)])
                return
            except TopicAlreadyExistsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        admin.close()


@pytest.mark.slow
def test_a_refund_on_a_recreated_topic_at_a_reused_offset_is_a_new_refund(
    isolated: Settings,
    payment_worker: Any,
    client: Client,
    seed_checkout: Callable[..., dict[str, Any]],
) -> None:
    card = client.add_card(money=100)
    payment = pay_new_checkout(client, seed_checkout, card["id"], total="59.97")["result"]
    event = {"productId": "p-1", "price": 19.99, "paymentId": payment["id"]}
    topic = isolated.topic(isolated.topic_product_refunded)

    def applied(count: int) -> bool:
        refunds = Payment.objects.get(id=payment["id"]).refunds
        return len(refunds) == count and all(r.published for r in refunds)

    env = {"KAFKA_TOPIC_PREFIX": isolated.kafka_topic_prefix, "KAFKA_BRIDGE_GROUP": "ident-a"}
    with bridge_process(env):
        kcat_produce(isolated, isolated.topic_product_refunded, [event])
        wait_until(lambda: applied(1), timeout=60, message="first refund applied")
    recreate(isolated, topic)
    env["KAFKA_BRIDGE_GROUP"] = "ident-b"  # a consumer that reads the new topic from its start
    with bridge_process(env):
        kcat_produce(isolated, isolated.topic_product_refunded, [event])  # offset 0 again
        wait_until(lambda: applied(2), timeout=90, message="second refund applied")
    ids = [r.eventId for r in Payment.objects.get(id=payment["id"]).refunds]
    assert len(set(ids)) == 2
    assert all(RefundEvent.objects.get(id=i).status == "applied" for i in ids)
    assert Card.objects.get(id=card["id"]).money == Decimal("80.01")
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == 2


def test_dead_letter_headers_name_the_source_with_and_without_a_topic_id() -> None:
    from shared.events import dead_letter_headers

    topic_id = str(uuid.uuid4())
    with_id = dict(dead_letter_headers(f"t.refunds:{topic_id}:2:41", "over_refund", "too much"))
    assert with_id["source-topic"] == b"t.refunds"
    assert with_id["source-topic-id"] == topic_id.encode()
    assert (with_id["source-partition"], with_id["source-offset"]) == (b"2", b"41")
    legacy = dict(dead_letter_headers("t.refunds:2:41", "over_refund", "too much"))
    assert (legacy["source-topic"], legacy["source-partition"], legacy["source-offset"]) == (
        b"t.refunds",
        b"2",
        b"41",
    )
    assert "source-topic-id" not in legacy
