"""The secure stack (DEVSTACK_SECURE=1): Kafka with SASL/SCRAM and ACLs, Redis with a password.

Each test module run starts a PRIVATE broker and a private Redis the way the
secure stack does (devstack.servers, with their own ports and data), and
shows that the service's clients, configured by the settings, connect and
work; that an anonymous client is refused; and that the ACLs let only the
order service write the refund topics.
"""

from __future__ import annotations

import gc
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
    ResourceType,
)
from kafka.errors import KafkaError

from devstack import servers
from shared.kafka import acls, ensure_topics, grant, producer
from shared.readiness import check_kafka, check_redis
from shared.settings import Settings
from tests.environment import make_settings
from tests.support import free_port, stop_group, wait_until
from workers.app import create_celery

pytestmark = pytest.mark.slow

#: The secure stack's principals, and one that exists but was granted nothing.
USERS = {**servers.KAFKA_USERS, "intruder": "intruder-password"}


@dataclass
class SecureKafka:
    port: int
    prefix: str

    def settings(self, user: str | None, password: str | None = None) -> Settings:
        """Settings of a client authenticating as ``user`` (anonymous with None)."""
        sasl = (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": servers.KAFKA_SCRAM_MECHANISM,
                "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": USERS[user] if password is None else password,
            }
            if user
            else {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
        )
        return make_settings(KAFKA_URI=f"127.0.0.1:{self.port}", KAFKA_TOPIC_PREFIX=self.prefix, **sasl)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    root = tmp_path_factory.mktemp("secure-kafka")
    port, controller = free_port(), free_port()
    servers.kafka_prepare(root, port, controller, users=USERS)
    with (root / "kafka.log").open("ab") as log:
        proc = subprocess.Popen(
            servers.kafka_command(root, heap="384m", short_lived=True),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        admin_password = USERS[servers.KAFKA_ADMIN]
        wait_until(
            lambda: proc.poll() is None and servers.kafka_ready(port, servers.KAFKA_ADMIN, admin_password),
            timeout=120,
            interval=0.5,
            message="secure kafka up",
        )
        found = SecureKafka(port, f"s{uuid.uuid4().hex[:6]}.")
        admin = found.settings(servers.KAFKA_ADMIN)
        ensure_topics(admin)
        grant(admin, servers.KAFKA_SERVICE, servers.KAFKA_ORDER_SERVICE)
        wanted = len(acls(admin, servers.KAFKA_SERVICE, servers.KAFKA_ORDER_SERVICE))
        # The controller stores the ACLs; the broker applies them when its metadata catches up.
        wait_until(lambda: _acls_on_broker(admin) >= wanted, timeout=30, interval=0.5, message="ACLs applied")
        yield found
    finally:
        stop_group(proc, timeout=60)


def _acls_on_broker(settings: Settings) -> int:
    admin = KafkaAdminClient(**settings.kafka_client_options, request_timeout_ms=5000)
    try:
        found, _error = admin.describe_acls(
            ACLFilter(
                principal=None,
                host="*",
                operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
            )
        )
        return len(found)
    finally:
        admin.close()


def _send(settings: Settings, topic: str, value: dict[str, str]) -> None:
    client = producer(settings, max_block_ms=8000, request_timeout_ms=8000)
    try:
        client.send(settings.topic(topic), json.dumps(value).encode()).get(timeout=15)
    finally:
        client.close(timeout=5)


def _read_as_bridge(settings: Settings, until: str, timeout: float = 45) -> list[dict[str, str]]:
    """What our principal reads from the refund topics, in the bridge's consumer group.

    Reads from the beginning until a record with marker ``until`` arrives (or ``timeout``).
    """
    consumer = KafkaConsumer(
        *settings.consumed_topics,
        **settings.kafka_client_options,
        group_id=f"{settings.topic(settings.bridge_group_id)}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and {"marker": until} not in seen:
            for records in consumer.poll(timeout_ms=1000).values():
                seen.extend(json.loads(record.value) for record in records)
        return seen
    finally:
        consumer.close()


def test_the_order_service_writes_the_refund_topic_and_we_read_it(kafka: SecureKafka) -> None:
    orders = kafka.settings(servers.KAFKA_ORDER_SERVICE)
    ours = kafka.settings(servers.KAFKA_SERVICE)
    marker = uuid.uuid4().hex
    _send(orders, orders.topic_order_refunded, {"marker": marker})
    assert {"marker": marker} in _read_as_bridge(ours, until=marker)


def test_our_clients_authenticate_and_publish_our_events(kafka: SecureKafka) -> None:
    ours = kafka.settings(servers.KAFKA_SERVICE)
    check_kafka(ours, 5)  # /readyz's check, as our principal
    _send(ours, ours.topic_payment_accepted, {"paymentId": "p-1"})
    _send(ours, ours.topic_refund_applied, {"paymentId": "p-1"})


@pytest.mark.parametrize("who", ["intruder", servers.KAFKA_SERVICE])
def test_nobody_but_the_order_service_may_write_the_refund_topics(kafka: SecureKafka, who: str) -> None:
    settings = kafka.settings(who)
    marker = uuid.uuid4().hex
    with pytest.raises(KafkaError):
        _send(settings, settings.topic_product_refunded, {"marker": marker})
    orders = kafka.settings(servers.KAFKA_ORDER_SERVICE)
    sentinel = uuid.uuid4().hex
    _send(orders, orders.topic_product_refunded, {"marker": sentinel})
    seen = _read_as_bridge(kafka.settings(servers.KAFKA_SERVICE), until=sentinel)
    assert {"marker": sentinel} in seen
    assert {"marker": marker} not in seen


def test_a_principal_without_acls_cannot_read_the_refund_topics(kafka: SecureKafka) -> None:
    orders = kafka.settings(servers.KAFKA_ORDER_SERVICE)
    _send(orders, orders.topic_order_refunded, {"marker": uuid.uuid4().hex})
    intruder = kafka.settings("intruder")
    with pytest.raises(KafkaError):
        _read_as_bridge(intruder, until="never", timeout=20)


# kafka-python leaves a client's wake-up socket pair open when its constructor
# fails to bootstrap; collected here, inside the test that caused it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize(("user", "password"), [(None, None), ("payments", "a-wrong-password")])
def test_an_anonymous_or_unauthenticated_client_is_refused(
    kafka: SecureKafka, user: str | None, password: str | None
) -> None:
    settings = kafka.settings(user, password)
    with pytest.raises((KafkaError, ConnectionError)):
        check_kafka(settings, 3)
    with pytest.raises(KafkaError):
        _produce_once(settings)
    gc.collect()


def _produce_once(settings: Settings) -> None:
    client = KafkaProducer(
        **settings.kafka_client_options,
        # Refused within 3 s, not after the client's 30 s of trying to bootstrap.
        bootstrap_timeout_ms=3000,
        max_block_ms=3000,
        request_timeout_ms=3000,
    )
    try:
        client.send(settings.topic(settings.topic_order_refunded), b"{}").get(timeout=5)
    finally:
        client.close(timeout=1)


# -- Redis with a password ------------------------------------------------------------


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    data: Path = tmp_path_factory.mktemp("secure-redis")
    proc = subprocess.Popen(servers.redis_command(port, data, password=servers.REDIS_PASSWORD))
    try:
        wait_until(lambda: servers.port_open(port), timeout=20, message="private redis listens")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_our_broker_client_authenticates_to_redis_and_passes_a_message(secure_redis: int) -> None:
    url = servers.redis_url(secure_redis, servers.REDIS_PASSWORD)
    settings = make_settings(CELERY_BROKER_URL=url, CELERY_KEY_PREFIX="secure:")
    check_redis(settings, 3)
    celery = create_celery(settings)
    # A round trip through the broker on Celery's own connection.
    with celery.connection_for_write() as connection:
        queue = connection.SimpleQueue("secure-check")
        queue.put({"hello": "redis"})
        message = queue.get(timeout=10)
        message.ack()
        queue.close()
    assert message.payload == {"hello": "redis"}


def test_an_anonymous_redis_client_is_refused(secure_redis: int) -> None:
    with redis.Redis(port=secure_redis, socket_timeout=3) as client, pytest.raises(redis.AuthenticationError):
        client.ping()
    with (
        redis.Redis(port=secure_redis, password="wrong", socket_timeout=3) as client,
        pytest.raises(redis.AuthenticationError),
    ):
        client.ping()
