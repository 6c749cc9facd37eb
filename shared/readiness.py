"""Checks that a dependency answers, for /readyz and for operators."""

from __future__ import annotations

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from shared import db
from shared.settings import Settings


def check_mongo(settings: Settings) -> None:
    db.connect(settings)
    db.ping()


def check_redis(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def check_kafka(settings: Settings) -> None:
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            request_timeout_ms=3000,
        )
    except (KafkaError, ValueError) as exc:
        raise ConnectionError(f"kafka: {exc}") from exc
    try:
        admin.describe_cluster()
    finally:
        admin.close()


CHECKS = {"mongo": check_mongo, "redis": check_redis, "kafka": check_kafka}


def readiness(settings: Settings) -> dict[str, str]:
    """Run every check; map each dependency to "ok" or the reason it failed."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check(settings)
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; it is reported
            results[name] = f"{type(exc).__name__}: {exc}"[:200]
    return results
