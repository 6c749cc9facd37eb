"""A refund recorded on its payment is finished, never dead-lettered (issue 8, hole 1).

The refund task runs in this process (``Task.apply``, as Celery's eager mode
runs it) with the retry count it would have after its 20th retry, on topics
of its own where the refund-applied topic does not exist: the refund is
recorded and credited, its publish keeps failing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from shared.models import Card, LedgerEntry, Payment, RefundEvent
from shared.services import inbox
from shared.settings import Settings
from tests.environment import make_settings
from tests.helpers import Client, pay_new_checkout
from tests.support import wait_until
from tests.workers.kafka_support import read_topic
from workers.app import create_celery
from workers.tasks.refunds import MAX_RETRIES


class Recorder:
    """A task sender that records what it would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, _args: Any = None, **options: Any) -> None:
        self.sent.append((name, options.get("kwargs") or {}))


@pytest.fixture
def no_applied_topic(settings: Settings) -> Iterator[Settings]:
    """Settings whose dead-letter topic exists and whose refund-applied topic does not."""
    iso = make_settings(KAFKA_TOPIC_PREFIX=f"{settings.kafka_topic_prefix}fin{uuid.uuid4().hex[:6]}.")
    admin = KafkaAdminClient(bootstrap_servers=iso.kafka_bootstrap)
    admin.create_topics([NewTopic(iso.topic(iso.topic_dead_letter), 1, 1)])
    try:
        yield iso
    finally:
        existing = set(admin.list_topics())
        admin.delete_topics([t for t in iso.all_topics if t in existing])
        admin.close()


def test_a_recorded_refund_whose_publish_keeps_failing_is_not_dead_lettered_and_is_finished_later(
    no_applied_topic: Settings, client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    iso = no_applied_topic
    card = client.add_card(money=100)
    payment = pay_new_checkout(client, seed_checkout, card["id"], total="59.97")["result"]
    event_id = f"{iso.topic(iso.topic_product_refunded)}:{uuid.uuid4()}:0:7"
    kwargs = {"event_id": event_id, "payment_id": payment["id"], "product_id": "p-1", "price": "19.99"}
    inbox.hand_over(Recorder(), event_id, "refunds.refund_product", kwargs)
    handed = RefundEvent.objects.get(id=event_id).updatedAt

    app = create_celery(iso)
    task = app.tasks["refunds.refund_product"]
    # The last allowed attempt: the old code dead-lettered the event here.
    task.apply(kwargs=kwargs, retries=MAX_RETRIES)

    entry = RefundEvent.objects.get(id=event_id)
    assert entry.status == "received"  # left for the sweep, not dead-lettered
    assert entry.updatedAt > handed  # the attempt moved it: a live chain is not stale
    letters = read_topic(iso, iso.topic_dead_letter, timeout_ms=1500)
    assert not [r for r in letters if event_id.encode() in dict(r.headers).get("event-id", b"")]
    stored = Payment.objects.get(id=payment["id"])
    [refund] = stored.refunds
    assert (refund.eventId, refund.credited, refund.published) == (event_id, True, False)
    assert Card.objects.get(id=card["id"]).money == Decimal("60.02")

    # The sweep sends it again once it has been quiet long enough...
    recorder = Recorder()
    assert inbox.requeue_stale(recorder, timedelta(0), limit=100) >= 1
    assert ("refunds.refund_product", kwargs) in recorder.sent
    # ...and once the topic is back, that run finishes it: published, settled, credited once.
    admin = KafkaAdminClient(bootstrap_servers=iso.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(iso.topic(iso.topic_refund_applied), 1, 1)])
    finally:
        admin.close()
    wait_until(
        lambda: (
            task.apply(kwargs=kwargs, retries=0).successful()
            and RefundEvent.objects.get(id=event_id).status == "applied"
        ),
        timeout=60,
        interval=1,
        message="refund finished",
    )
    assert Payment.objects.get(id=payment["id"]).refunds[0].published is True
    assert Card.objects.get(id=card["id"]).money == Decimal("60.02")
    assert LedgerEntry.objects(paymentId=payment["id"], kind="credit").count() == 1
    applied = read_topic(iso, iso.topic_refund_applied, timeout_ms=1500)
    assert len([r for r in applied if event_id.encode() in r.value]) >= 1


def test_a_rejected_event_is_still_dead_lettered_on_its_last_attempt(
    no_applied_topic: Settings, client: Client
) -> None:
    """The finishing rule is about recorded refunds only: an inapplicable event still goes aside."""
    iso = no_applied_topic
    unknown = uuid.uuid4().hex[:24]
    event_id = f"{iso.topic(iso.topic_order_refunded)}:{uuid.uuid4()}:0:3"
    kwargs = {"event_id": event_id, "payment_id": unknown}
    inbox.hand_over(Recorder(), event_id, "refunds.refund_order", kwargs)
    create_celery(iso).tasks["refunds.refund_order"].apply(kwargs=kwargs, retries=MAX_RETRIES)
    entry = RefundEvent.objects.get(id=event_id)
    assert (entry.status, entry.reason) == ("dead_lettered", "unknown_payment")
