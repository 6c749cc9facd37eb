"""The Kafka refund bridge: refund events from the order service become Celery tasks.

Each polled batch is handed over in one go: the events of all its records
written to the refund inbox in one bulk write, then ONE ``refunds.apply_batch``
task that carries them all (each as the per-event task message that applies
it alone), then the offsets committed.

Delivery contract: at least once.  A record's offset is committed only after
its event is in the inbox and its batch task in the broker (or, for a message
that can never be applied, after the dead-letter topic acknowledged it).  The
tasks are idempotent per event id (topic, topic id, partition, offset), so a
redelivered record changes nothing twice, and a topic deleted and created
again (a new topic id, offsets from 0) starts new ids.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from shared import events
from shared.logs import log_context
from shared.services import inbox
from shared.settings import Settings
from workers.bridge import metrics
from workers.bridge.messages import (
    BadMessage,
    OrderRefunded,
    ProductRefunded,
    decode,
    scrub_card_numbers,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Public task names (the refund tasks register them): the bridge sends one
#: batch task per poll; each event in it names the per-event task that applies it.
REFUND_ORDER_TASK = "refunds.refund_order"
REFUND_PRODUCT_TASK = "refunds.refund_product"
APPLY_BATCH_TASK = "refunds.apply_batch"


def event_id(record: ConsumerRecord, topic_id: str) -> str:
    return f"{record.topic}:{topic_id}:{record.partition}:{record.offset}"


class UnknownTopicId(RuntimeError):
    """The broker did not report the topic's id (yet); the record is handed over later."""


class _ForgetTopicIds(ConsumerRebalanceListener):
    """Partitions moved (a topic may have been deleted and created again): look ids up afresh."""

    def __init__(self, bridge: RefundBridge) -> None:
        self.bridge = bridge

    def on_partitions_revoked(self, _revoked: Any) -> None:
        self.bridge.topic_ids.clear()

    def on_partitions_assigned(self, _assigned: Any) -> None:
        self.bridge.topic_ids.clear()


class RefundBridge:
    """Consume the refund topics and hand each event to a Celery refund task."""

    def __init__(
        self,
        settings: Settings,
        celery: Celery,
        consumer: KafkaConsumer | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.celery = celery
        self.consumer = consumer or KafkaConsumer(
            **settings.kafka_client_options,
            group_id=settings.topic(settings.bridge_group_id),
            enable_auto_commit=False,
            # The old service read its topics from the beginning; so do we
            # for a new group (replays are harmless: tasks dedupe by event id).
            auto_offset_reset="earliest",
            max_poll_records=100,
            # A killed bridge's partitions wait this long for it (a clean
            # stop leaves the group at once); heartbeats stay well inside it.
            session_timeout_ms=settings.bridge_session_timeout_ms,
            heartbeat_interval_ms=min(3000, settings.bridge_session_timeout_ms // 3),
            # Read by nothing here (shared.kafka.producer says why it is off).
            metrics_enabled=False,
        )
        self.stopping = stopping or threading.Event()
        #: Topic name -> the id Kafka gave it when it was created (KIP-516).
        self.topic_ids: dict[str, str] = {}
        self._admin: KafkaAdminClient | None = None
        self._handlers: dict[str, Callable[[ConsumerRecord], inbox.Handed]] = {
            settings.topic(settings.topic_order_refunded): self._order_refunded,
            settings.topic(settings.topic_product_refunded): self._product_refunded,
        }

    # -- one record --------------------------------------------------------

    def _order_refunded(self, record: ConsumerRecord) -> inbox.Handed:
        message: OrderRefunded = decode(record.value, OrderRefunded)
        return self._event(
            REFUND_ORDER_TASK,
            record,
            {
                "payment_id": message.paymentId,
                "total_price": None if message.totalPrice is None else str(message.totalPrice),
            },
        )

    def _product_refunded(self, record: ConsumerRecord) -> inbox.Handed:
        message: ProductRefunded = decode(record.value, ProductRefunded)
        return self._event(
            REFUND_PRODUCT_TASK,
            record,
            {
                "payment_id": message.paymentId,
                "product_id": message.productId,
                "price": str(message.price),
            },
        )

    def topic_id(self, topic: str) -> str:
        """The topic's id, from the consumer's own metadata or the cluster's, cached per topic."""
        cluster = getattr(self.consumer, "_cluster", None)
        current = cluster.topic_id(topic) if cluster is not None else None
        if current is not None:
            self.topic_ids[topic] = str(current)
        if topic not in self.topic_ids:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=15000
                )
            described = {t["name"]: t.get("topic_id") for t in self._admin.describe_topics([topic])}
            if not described.get(topic):
                raise UnknownTopicId(f"Kafka reported no id for topic {topic}")
            self.topic_ids[topic] = str(described[topic])
        return self.topic_ids[topic]

    def event_id(self, record: ConsumerRecord) -> str:
        return event_id(record, self.topic_id(record.topic))

    def _event(self, task: str, record: ConsumerRecord, kwargs: dict[str, Any]) -> inbox.Handed:
        eid = self.event_id(record)
        # The original value travels along, so a worker that finds the event
        # inapplicable can dead-letter it byte for byte.
        raw = scrub_card_numbers(record.value).decode("utf-8", errors="replace")
        return inbox.Handed(eid, task, {"event_id": eid, **kwargs, "raw": raw})

    def _retrying(self, what: str, step: Callable[[], T]) -> T:
        """Run ``step``, retrying transient failures until it succeeds or we stop."""
        delay = 0.5
        while True:
            try:
                return step()
            except Exception:
                if self.stopping.is_set():
                    raise
                log.exception("could not %s; retrying in %.1fs", what, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30)

    def prepare(self, record: ConsumerRecord) -> inbox.Handed | None:
        """The event of one record, or None once a malformed record is set aside."""
        return self._retrying("read a refund event", lambda: self._prepare(record))

    def _prepare(self, record: ConsumerRecord) -> inbox.Handed | None:
        eid = self.event_id(record)
        with log_context(event_id=eid):
            try:
                return self._handlers[record.topic](record)
            except BadMessage as problem:
                # Acknowledged by Kafka before the offset moves on.
                events.dead_letter(
                    self.settings,
                    scrub_card_numbers(record.value),
                    eid,
                    problem.reason,
                    problem.detail,
                )
                metrics.DEAD_LETTERS.labels(problem.reason).inc()
                metrics.HANDED_OVER.labels(record.topic, "dead_lettered").inc()
                return None

    def hand_over(self, handed: list[tuple[str, inbox.Handed]]) -> None:
        """Hand a batch's events (with their topics) over at once: one inbox write, one task."""
        events_ = [event for _topic, event in handed]
        self._retrying(
            "hand refund events over",
            lambda: inbox.hand_over_batch(self.celery, APPLY_BATCH_TASK, events_),
        )
        # One line for the batch, naming its events in order (a line per
        # event cost more CPU, in the log formatter's card-number scrub, than
        # handing the event over).
        log.info(
            "refund batch handed over",
            extra={
                "fields": {
                    "events": len(events_),
                    "task": APPLY_BATCH_TASK,
                    "event_ids": [event.event_id for event in events_],
                }
            },
        )
        for topic, count in Counter(topic for topic, _event in handed).items():
            metrics.HANDED_OVER.labels(topic, "handed_over").inc(count)

    # -- the loop ----------------------------------------------------------

    def run(self) -> None:
        self.consumer.subscribe(list(self._handlers), listener=_ForgetTopicIds(self))
        log.info("bridge consuming", extra={"fields": {"topics": list(self._handlers)}})
        try:
            while not self.stopping.is_set():
                self._process(self.consumer.poll(timeout_ms=500))
                metrics.record_lag(self.consumer)
        finally:
            self.consumer.close(autocommit=False)
            if self._admin is not None:
                self._admin.close()

    def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Hand a polled batch over in one go, then commit every partition's last offset in it."""
        handed: list[tuple[str, inbox.Handed]] = []
        for records in batch.values():
            for record in records:
                event = self.prepare(record)
                if event is not None:
                    handed.append((record.topic, event))
        if handed:
            self.hand_over(handed)
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batch.items() if records
        }
        if offsets:
            self.consumer.commit(offsets)
