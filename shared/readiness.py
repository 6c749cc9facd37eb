"""Checks that a dependency answers, for /readyz and for operators."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from shared import db
from shared.settings import Settings

OK = "ok"


def check_mongo(settings: Settings, timeout: float) -> None:  # noqa: ARG001 - one signature for all
    # The connection's own server selection timeout bounds it; the probe's deadline cuts it shorter.
    db.connect(settings)
    db.ping()


def check_redis(settings: Settings, timeout: float) -> None:
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def check_kafka(settings: Settings, timeout: float) -> None:
    try:
        admin = KafkaAdminClient(
            **settings.kafka_client_options,
            request_timeout_ms=int(timeout * 1000),
            bootstrap_timeout_ms=int(timeout * 1000),
        )
    except (KafkaError, ValueError) as exc:
        raise ConnectionError(f"kafka: {exc}") from exc
    try:
        admin.describe_cluster()
    finally:
        admin.close()


CHECKS: dict[str, Callable[[Settings, float], None]] = {
    "mongo": check_mongo,
    "redis": check_redis,
    "kafka": check_kafka,
}


def readiness(settings: Settings, timeout: float | None = None) -> dict[str, str]:
    """Run every check at once; map each dependency to "ok" or the reason it failed.

    Each check runs in a daemon thread; one that has not answered within
    ``timeout`` seconds counts as failed, so a hung server cannot hang the caller.
    """
    timeout = settings.readyz_timeout_seconds if timeout is None else timeout
    results: dict[str, str] = {}

    def run(name: str, check: Callable[[Settings, float], None]) -> None:
        try:
            check(settings, timeout)
            results[name] = OK
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; it is reported
            results[name] = f"{type(exc).__name__}: {exc}"[:200]

    threads = [
        threading.Thread(target=run, args=(name, check), name=f"readyz-{name}", daemon=True)
        for name, check in CHECKS.items()
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {name: results.get(name, f"Timeout: no answer within {timeout:g}s") for name in CHECKS}


class CachedReadiness:
    """The last readiness result, checked again at most once per ``max_age`` seconds.

    A probe hammered by a load balancer (or by an attacker) costs at most one
    round of checks per period, whatever the request rate.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._result: dict[str, str] = {}

    def get(self) -> dict[str, str]:
        max_age = self._settings.readyz_cache_seconds
        with self._lock:
            if time.monotonic() - self._checked_at >= max_age or not self._result:
                self._result = readiness(self._settings)
                self._checked_at = time.monotonic()
            return dict(self._result)
