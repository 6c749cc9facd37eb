"""The integration suite's API fixtures: the API over real HTTP with a real worker behind it.

Loaded by the root conftest as a plugin (``pytest_plugins``), so the web and
the worker tests share them; every fixture here reaches the servers through
``settings`` or ``servers``.  The set-up helpers they hand out (``Client``,
``seed_checkout``) live in ``tests.helpers``.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

import celeryconfig
from devstack import servers as devstack_servers
from shared import db
from shared.settings import Settings
from tests import helpers
from tests.environment import RUN_ID, TEST_ENV, make_settings, start_worker, stop_worker
from tests.helpers import Client, SeedCheckout
from tests.support import ServedApp, wait_until
from web import create_app
from workers.app import create_celery


@pytest.fixture(scope="module")
def mongo(servers: None) -> Iterator[Database[dict[str, Any]]]:
    """The test database, raw, to see what the service really stored."""
    client: MongoClient[dict[str, Any]] = MongoClient(TEST_ENV["MONGO_URL"])
    try:
        yield client.get_default_database()
    finally:
        client.close()


@pytest.fixture
def documents(settings: Settings) -> None:
    """This process's MongoEngine connection to the run's database, for tests that store documents."""
    db.connect(settings)


@pytest.fixture(scope="session")
def api(settings: Settings, payment_celery, payment_worker, topics) -> Iterator[ServedApp]:
    served = ServedApp(create_app(settings, payment_celery))
    yield served
    served.close()


@pytest.fixture
def client(api: ServedApp) -> Client:
    return Client(api.url)


@pytest.fixture
def make_client(api: ServedApp) -> Callable[..., Client]:
    return lambda user_id=None, types=None: Client(api.url, user_id, types)


@pytest.fixture
def seed_checkout(checkout_service: ServedApp) -> SeedCheckout:
    """Put a checkout in the stand-in checkout service and return it (``tests.helpers.seed_checkout``)."""

    def seed(user_id: str, total: Any = "59.97", **fields: Any) -> dict[str, Any]:
        return helpers.seed_checkout(checkout_service.url, user_id, total, **fields)

    return seed


@pytest.fixture(scope="session")
def second_worker(payment_celery, payment_worker) -> Iterator[None]:
    """A second worker node, so that races run across separate worker processes."""
    proc = start_worker("w2", concurrency=2)

    def nodes() -> set[str]:
        return {name for reply in payment_celery.control.ping(timeout=1) for name in reply}

    try:
        wait_until(lambda: any(n.startswith("w2-") for n in nodes()), timeout=60, message="w2 answers")
        yield
    finally:
        stop_worker(proc)


_worlds = itertools.count()


class World:
    """An API and a worker of their own, on a private broker prefix."""

    def __init__(
        self, failpoints: str = "", checkout_url: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.prefix = f"{RUN_ID}fault{next(_worlds)}:"
        env = {
            "CELERY_KEY_PREFIX": self.prefix,
            "PAYMENT_FAILPOINTS": failpoints,
            # The task a killed node had taken comes back once its visibility
            # timeout (20 s) has passed: swept for every 2 s, not every 100 s.
            "CELERY_RESTORE_SECONDS": "2",
            **(env or {}),
        }
        if checkout_url:
            env["CHECKOUT_SERVICE_URL"] = checkout_url
        self.env = env
        self.settings = make_settings(**{k: v for k, v in env.items() if k != "PAYMENT_FAILPOINTS"})
        self.celery = create_celery(self.settings)
        self.api = ServedApp(create_app(self.settings, self.celery))
        self.worker = self.start_worker()

    def start_worker(self, name: str = "fault") -> Any:
        node = f"{name}{self.prefix[-3:-1]}"
        proc = start_worker(node, concurrency=1, queues=celeryconfig.ALL_QUEUES, env=self.env)
        self.log = devstack_servers.STACK_DIR / "logs" / f"test-worker-{node}-{RUN_ID}.log"
        wait_until(lambda: self.celery.control.ping(timeout=1), timeout=60, message="fault worker answers")
        return proc

    def close(self) -> None:
        stop_worker(self.worker, signal.SIGKILL)
        self.api.close()


@pytest.fixture
def world_factory(checkout_service: ServedApp, topics: list[str]) -> Iterator[Callable[..., World]]:
    worlds: list[World] = []

    def make(**kwargs: Any) -> World:
        world = World(**kwargs)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.close()
