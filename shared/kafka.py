"""Kafka clients built from the settings (kafka-python)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.errors import TopicAlreadyExistsError

from shared.settings import Settings

log = logging.getLogger(__name__)


def producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """A producer that loses nothing it acknowledged: acks=all, idempotent."""
    options: dict[str, object] = {
        **settings.kafka_client_options,
        "acks": "all",
        "enable_idempotence": True,
        "retries": 5,
        "linger_ms": 5,
        "request_timeout_ms": 10000,
        # The client's own metrics (kafka-python's sensors, recorded on every
        # send and response) are read by nothing here: a tenth of a send's CPU.
        "metrics_enabled": False,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def ensure_topics(settings: Settings, partitions: int = 3, replication: int = 1) -> list[str]:
    """Create each configured topic that does not exist yet; return those created."""
    admin = KafkaAdminClient(**settings.kafka_client_options, request_timeout_ms=15000)
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


def acls(settings: Settings, service: str, order_service: str) -> list[ACL]:
    """Who may do what on the service's topics (brokers with an authorizer, SASL principals).

    Only the order service (``order_service``) writes the refund topics; only
    this service (``service``) reads them, in its consumer group, and writes
    its own topics, which the order service may read.  Anyone else: nothing.
    """
    refund_topics = settings.consumed_topics
    own_topics = [
        settings.topic(t)
        for t in (settings.topic_payment_accepted, settings.topic_refund_applied, settings.topic_dead_letter)
    ]

    def allow(principal: str, operation: ACLOperation, kind: ResourceType, name: str) -> ACL:
        return ACL(
            principal=f"User:{principal}",
            host="*",
            operation=operation,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(kind, name, ACLResourcePatternType.LITERAL),
        )

    rules: list[ACL] = [allow(service, ACLOperation.DESCRIBE, ResourceType.CLUSTER, "kafka-cluster")]
    for topic in settings.all_topics:
        rules.append(allow(service, ACLOperation.CREATE, ResourceType.TOPIC, topic))
        rules.append(allow(service, ACLOperation.DESCRIBE, ResourceType.TOPIC, topic))
    for topic in refund_topics:
        rules.append(allow(service, ACLOperation.READ, ResourceType.TOPIC, topic))
        rules.append(allow(order_service, ACLOperation.WRITE, ResourceType.TOPIC, topic))
        rules.append(allow(order_service, ACLOperation.DESCRIBE, ResourceType.TOPIC, topic))
    rules.append(
        allow(service, ACLOperation.READ, ResourceType.GROUP, settings.topic(settings.bridge_group_id))
    )
    for topic in own_topics:
        rules.append(allow(service, ACLOperation.WRITE, ResourceType.TOPIC, topic))
    accepted = settings.topic(settings.topic_payment_accepted)
    rules.append(allow(order_service, ACLOperation.READ, ResourceType.TOPIC, accepted))
    rules.append(allow(order_service, ACLOperation.DESCRIBE, ResourceType.TOPIC, accepted))
    return rules


def grant(settings: Settings, service: str, order_service: str) -> None:
    """Create :func:`acls` on the brokers (the settings' principal must be allowed to)."""
    admin = KafkaAdminClient(**settings.kafka_client_options, request_timeout_ms=15000)
    try:
        result = admin.create_acls(acls(settings, service, order_service))
    finally:
        admin.close()
    if result["failed"]:
        raise RuntimeError(f"Kafka refused ACLs: {result['failed']}")
