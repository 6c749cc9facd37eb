"""The Kafka refund bridge: refund events from the order service become Celery tasks.

Delivery contract: at least once.  A record's offset is committed only after
its task is in the broker (or, for a message that can never be applied, after
the dead-letter topic acknowledged it).  The tasks are idempotent per event id
(topic, topic id, partition, offset), so a redelivered record changes nothing
twice, and a topic deleted and created again (a new topic id, offsets from 0)
starts new ids.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

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

#: Public task names the bridge sends (the refund tasks register them).
REFUND_ORDER_TASK = "refunds.refund_order"
REFUND_PRODUCT_TASK = "refunds.refund_product"


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
        )
        self.stopping = stopping or threading.Event()
        #: Topic name -> the id Kafka gave it when it was created (KIP-516).
        self.topic_ids: dict[str, str] = {}
        self._admin: KafkaAdminClient | None = None
        self._handlers: dict[str, Callable[[ConsumerRecord], None]] = {
            settings.topic(settings.topic_order_refunded): self._order_refunded,
            settings.topic(settings.topic_product_refunded): self._product_refunded,
        }

    # -- one record --------------------------------------------------------

    def _order_refunded(self, record: ConsumerRecord) -> None:
        message: OrderRefunded = decode(record.value, OrderRefunded)
        self._send(
            REFUND_ORDER_TASK,
            record,
            {
                "payment_id": message.paymentId,
                "total_price": None if message.totalPrice is None else str(message.totalPrice),
            },
        )

    def _product_refunded(self, record: ConsumerRecord) -> None:
        message: ProductRefunded = decode(record.value, ProductRefunded)
        self._send(
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

    def _send(self, task: str, record: ConsumerRecord, kwargs: dict[str, Any]) -> None:
        eid = self.event_id(record)
        # The original value travels along, so a worker that finds the event
        # inapplicable can dead-letter it byte for byte.
        raw = scrub_card_numbers(record.value).decode("utf-8", errors="replace")
        inbox.hand_over(self.celery, eid, task, {"event_id": eid, **kwargs, "raw": raw})
        metrics.HANDED_OVER.labels(record.topic, "handed_over").inc()
        log.info("refund event handed over", extra={"fields": {"event_id": eid, "task": task}})

    def handle(self, record: ConsumerRecord) -> None:
        """Hand one record over, retrying transient failures until it is safe or we stop."""
        delay = 0.5
        while True:
            try:
                eid = self.event_id(record)
                with log_context(event_id=eid):
                    try:
                        self._handlers[record.topic](record)
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
                return
            except Exception:
                if self.stopping.is_set():
                    raise
                log.exception("could not hand over refund event; retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 30)

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
        """Hand over a polled batch; commit, per partition, what was handed over."""
        handed: dict[TopicPartition, OffsetAndMetadata] = {}
        try:
            for tp, records in batch.items():
                for record in records:
                    if self.stopping.is_set():
                        return
                    self.handle(record)
                    handed[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        finally:
            if handed:
                self.consumer.commit(handed)
