"""Prometheus metrics of the refund bridge: consumer lag per partition, dead letters by reason.

The bridge is one process per instance, so it serves its metrics itself on
``BRIDGE_METRICS_PORT`` (:func:`serve`).  Lag is measured by the consuming
thread after each poll, from the consumer's own fetch positions (the
consumer is not thread-safe, so the scrape never touches it).  Dead letters
come in two kinds: the messages this bridge set aside itself (malformed:
``not_json``, ``invalid_fields``, ...), counted as they happen, and the
events the workers found inapplicable (``unknown_payment``, ``over_refund``,
...), read from the refund inbox at scrape time so that every worker's
verdicts are counted once, whichever bridge instance is scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from kafka import KafkaConsumer
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.models import RefundEvent

log = logging.getLogger(__name__)

HANDED_OVER = Counter(
    "payment_bridge_events_total",
    "Refund messages the bridge handled, by topic and outcome (handed_over, dead_lettered).",
    ["topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "payment_bridge_dead_letters_total",
    "Refund messages the bridge itself set aside as malformed, by reason.",
    ["reason"],
)
LAG = Gauge(
    "payment_bridge_consumer_lag",
    "Messages of a partition not yet consumed by this bridge instance (high watermark - position).",
    ["topic", "partition"],
)


def record_lag(consumer: KafkaConsumer) -> None:
    """Set the lag of every partition assigned to ``consumer`` (call from its own thread)."""
    try:
        assigned = consumer.assignment()
        for tp in assigned:
            highwater = consumer.highwater(tp)
            position = consumer.position(tp, timeout_ms=1000)
            if highwater is not None and position is not None:
                LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
        # Partitions given to another instance in a rebalance are no longer ours to report.
        current = {(tp.topic, str(tp.partition)) for tp in assigned}
        for labels in list(_known_partitions()):
            if labels not in current:
                LAG.remove(*labels)
    except Exception:  # metrics must never stop the bridge
        log.debug("could not measure consumer lag", exc_info=True)


def _known_partitions() -> Iterator[tuple[str, str]]:
    for metric in LAG.collect():
        for sample in metric.samples:
            yield sample.labels["topic"], sample.labels["partition"]


class InboxDeadLetters(Collector):
    """Refund events the workers dead-lettered, by reason, from the refund inbox."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "payment_refund_dead_letters",
            "Refund events set aside by the workers (recorded in the refund inbox), by reason.",
            labels=["reason"],
        )
        try:
            pipeline = [
                {"$match": {"status": "dead_lettered"}},
                {"$group": {"_id": "$reason", "n": {"$sum": 1}}},
            ]
            for row in RefundEvent._get_collection().aggregate(pipeline):
                family.add_metric([str(row["_id"] or "unknown")], row["n"])
        except Exception:  # the database away: report what we can
            log.warning("could not count dead-lettered refund events", exc_info=True)
        yield family


def serve(port: int, address: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve the bridge's metrics (and the process's own) on ``address:port``."""
    registry.register(InboxDeadLetters())
    start_http_server(port, addr=address, registry=registry)
