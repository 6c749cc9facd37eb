"""Kafka clients built from the settings (kafka-python)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.settings import Settings

log = logging.getLogger(__name__)


def producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """A producer that loses nothing it acknowledged: acks=all, idempotent."""
    options: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 5,
        "linger_ms": 5,
        "request_timeout_ms": 10000,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def ensure_topics(settings: Settings, partitions: int = 3, replication: int = 1) -> list[str]:
    """Create each configured topic that does not exist yet; return those created."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in settings.all_topics if t not in existing]
        created: list[str] = []
        for topic in wanted:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass  # another process created it in the meantime
        return created
    finally:
        admin.close()
