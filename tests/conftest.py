"""Fixtures of the whole suite: one isolated world per test process.

Two kinds of tests share this root.  ``tests/unit/`` needs no server at all
(``make test-unit``).  The integration tests talk to the real servers (Redis,
the MongoDB-protocol server, Kafka), which ``make test`` starts before pytest
runs; a fixture that needs them asks for ``servers``, and nothing else does,
so a unit test never waits on or exits for a server.  Each pytest process gets
its own database, Redis key prefix and Kafka topic prefix (``tests.environment``).
Celery tasks of the integration suite run in real worker subprocesses
(``payment_worker``); the names ``celery_app``, ``celery_worker`` and
``celery_session_worker`` are pytest-celery's (the unit layer and the smoke suite).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import mongoengine
import pytest
import redis
from pymongo import MongoClient

from devstack import servers as devstack_servers
from devstack.checkout_standin import create_standin
from shared.settings import Settings
from tests.environment import RUN_ID, TEST_ENV, make_settings, pings, start_worker, stop_worker
from tests.support import ServedApp, wait_until

os.environ.update(TEST_ENV)

#: The API fixtures of the integration suite (the web and the worker tests).
pytest_plugins = ["tests.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first, so that the run does not end on them one after another.

    ``-n 2 --dist loadgroup`` hands tests out one at a time in this order (no
    test has an ``xdist_group``; with pytest 9 and xdist 3.8 it would group
    nothing: xdist renames ``item._nodeid``, which pytest 9 no longer reads); the
    long fault tests, last in file order, used to start late and keep one
    process busy for minutes after the other had finished.  ``slow(seconds=N)``
    states a test's usual duration in CI; every other test keeps its place in
    collection order (the sort is stable).
    """

    def expected_seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else float(mark.kwargs.get("seconds", 0))

    items.sort(key=lambda item: -expected_seconds(item))


@pytest.fixture(scope="session")
def servers() -> Iterator[None]:
    """The servers must answer (``make test`` starts them); this run's data is removed afterwards."""
    down = [name for name, ok in devstack_servers.status().items() if not ok]
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
def settings(servers: None, checkout_service: ServedApp) -> Settings:
    """The settings of this run's world, its servers answering."""
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
def payment_celery(settings: Settings) -> Any:
    """The service's own Celery app on this run's broker prefix (not pytest-celery's ``celery_app``)."""
    from workers.app import create_celery

    return create_celery(settings)


@pytest.fixture(scope="session")
def payment_worker(payment_celery: Any, checkout_service: ServedApp) -> Iterator[Any]:
    """A real worker process (``celery -A workers.celery_app worker``) for the whole session."""
    proc = start_worker("w1")
    try:
        wait_until(lambda: pings(payment_celery), timeout=60, message="worker answers system.ping")
        yield proc
    finally:
        stop_worker(proc)
