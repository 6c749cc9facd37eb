"""Queue depth per Celery queue, for Prometheus: a collector served by Flower's ``/metrics``.

Flower's own metrics cover the tasks (``flower_events_total`` by task name and
event type: succeeded, failed, retried...; ``flower_task_runtime_seconds``).
What they lack is how many messages wait in each queue: this collector reads
the Redis lists of the broker at scrape time (the queue names come from
``celeryconfig``, the key prefix from ``CELERY_KEY_PREFIX``), summing the
priority sub-queues that kombu's Redis transport keeps beside each queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import celeryconfig
from shared.settings import Settings

log = logging.getLogger(__name__)

#: kombu's Redis transport: a message of priority p > 0 waits in ``<queue>\x06\x16<p>``.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


class QueueDepth(Collector):
    """``payment_celery_queue_depth{queue}``: messages waiting in each Celery queue."""

    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.broker_key_prefix
        self.queues = [queue.name for queue in celeryconfig.task_queues]
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)

    def _keys(self, queue: str) -> list[str]:
        names = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)]
        return [f"{self.prefix}{name}" for name in names]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "payment_celery_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        try:
            pipe = self.redis.pipeline(transaction=False)
            for queue in self.queues:
                for key in self._keys(queue):
                    pipe.llen(key)
            lengths = iter(pipe.execute())
            for queue in self.queues:
                family.add_metric([queue], sum(int(next(lengths)) for _ in self._keys(queue)))
        except redis.RedisError:
            log.warning("could not read the queue lengths", exc_info=True)
        yield family
