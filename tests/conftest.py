"""Fixtures of the whole suite: one isolated world per test process.

The servers (Redis, MongoDB-protocol server, Kafka) are started by ``make
test`` before pytest runs.  Each pytest process (each xdist worker) gets its
own database, Redis key prefix and Kafka topic prefix, so two runs, or two
workers of one run, never see each other's data.  Celery tasks run in a real
worker subprocess against the real broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import mongoengine
import pytest
import redis
from pymongo import MongoClient

from devstack import servers
from devstack.checkout_standin import create_standin
from shared.settings import Settings
from tests.support import ServedApp, stop_group, wait_until

ROOT = Path(__file__).resolve().parent.parent
TEST_QUEUES = "payments,cards,refunds,maintenance"


def _run_id() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"t{uuid.uuid4().hex[:8]}{worker}"


RUN_ID = _run_id()

#: The environment of this test process and of every process it starts.
TEST_ENV = {
    "PAYMENT_ENV": "test",
    "MONGO_URL": f"mongodb://127.0.0.1:{servers.MONGO_PORT}/{RUN_ID}",
    "JWT_SEC": "test-jwt-secret-0123456789abcdefghijkl",
    "CARD_FINGERPRINT_KEY": "test-card-fingerprint-key-0123456789abcdef",
    "KAFKA_URI": f"127.0.0.1:{servers.KAFKA_PORT}",
    "CELERY_BROKER_URL": f"redis://127.0.0.1:{servers.REDIS_PORT}/0",
    "CELERY_KEY_PREFIX": f"{RUN_ID}:",
    "KAFKA_TOPIC_PREFIX": f"{RUN_ID}.",
    "CELERY_VISIBILITY_TIMEOUT": "20",
    "FLOWER_PASSWORD": "test-flower-password",
    "LOG_LEVEL": "INFO",
    # Tests burst on purpose (races of 50 pays by one user); the tests of the
    # limits themselves build their API with the documented defaults.
    "RATE_LIMIT_WRITES": "100000/minute",
    "RATE_LIMIT_READS": "1000000/minute",
    "OPEN_JOBS_PER_USER": "10000",
    # Metrics servers off: many processes of many runs share loopback; the
    # metrics tests give theirs free ports.
    "API_METRICS_PORT": "0",
    "BRIDGE_METRICS_PORT": "0",
}
os.environ.update(TEST_ENV)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first, so that the run does not end on them one after another.

    ``-n 2 --dist loadgroup`` hands tests out one at a time in this order (no
    test has an ``xdist_group``; with pytest 9 and xdist 3.8 it would group
    nothing: xdist renames ``item._nodeid``, which pytest 9 no longer reads); the
    long fault tests, last in file order, used to start late and keep one
    process busy for minutes after the other had finished.  ``slow(seconds=N)``
    states a test's usual duration in CI; another slow test counts 10 s, the
    rest 0, in their collection order (the sort is stable).
    """

    def expected_seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else float(mark.kwargs.get("seconds", 10))

    items.sort(key=lambda item: -expected_seconds(item))


def make_settings(**overrides: object) -> Settings:
    """Test settings; never read from a developer's .env file."""
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.fixture(scope="session", autouse=True)
def stack() -> Iterator[None]:
    """The servers must answer; ``make test`` starts them."""
    down = [name for name, ok in servers.status().items() if not ok]
    if down:
        pytest.exit(f"servers not running: {down}; run `make test` or `make stack-up`", returncode=3)
    yield
    mongoengine.disconnect_all()
    with MongoClient(TEST_ENV["MONGO_URL"]) as mongo:
        mongo.drop_database(RUN_ID)
    with redis.Redis.from_url(TEST_ENV["CELERY_BROKER_URL"]) as client:
        keys = list(client.scan_iter(f"{RUN_ID}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="session")
def checkout_service() -> Iterator[ServedApp]:
    """The checkout service's contract, served over real HTTP by the stand-in."""
    served = ServedApp(create_standin())
    os.environ["CHECKOUT_SERVICE_URL"] = served.url
    yield served
    served.close()


@pytest.fixture(scope="session")
def settings(checkout_service: ServedApp) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def topics(settings: Settings) -> Iterator[list[str]]:
    from kafka import KafkaAdminClient

    from shared.kafka import ensure_topics

    ensure_topics(settings)
    yield settings.all_topics
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_topics(settings.all_topics)
    finally:
        admin.close()


@pytest.fixture(scope="session")
def celery_app(settings: Settings):
    from workers.app import create_celery

    return create_celery(settings)


def start_worker(
    name: str, concurrency: int = 2, queues: str = TEST_QUEUES, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real Celery worker process on this run's broker prefix and database.

    Its output goes to .stack/logs/test-worker-<name>-<run>.log, for a failing test's post-mortem.
    """
    logs = servers.STACK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"test-worker-{name}-{RUN_ID}.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "-O",
                "fair",
                "-Q",
                queues,
                "-n",
                f"{name}-{RUN_ID}@%h",
                "--without-heartbeat",
                "--without-mingle",
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    stop_group(proc, timeout=30, sig=sig)


@pytest.fixture(scope="session")
def celery_worker(celery_app, checkout_service: ServedApp) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker("w1")
    try:
        wait_until(lambda: _pings(celery_app), timeout=60, message="worker answers system.ping")
        yield proc
    finally:
        stop_worker(proc)


def _pings(celery_app) -> bool:
    try:
        return bool(celery_app.send_task("system.ping").get(timeout=2)["pong"])
    except Exception:  # noqa: BLE001 - not up yet
        return False
