"""The API over real HTTP, with a real worker behind it, and helpers to call it."""

from __future__ import annotations

import itertools
import random
import signal
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from devstack import servers
from devstack.tokens import make_token
from shared.pan import luhn_valid
from shared.settings import Settings
from tests.conftest import RUN_ID, TEST_ENV, make_settings, start_worker, stop_worker
from tests.support import ServedApp, wait_until
from web import create_app
from workers.app import create_celery

API = "/api/payment"


def token_for(user_id: str | None = None, types: list[str] | None = None, minutes: int = 60) -> str:
    return make_token(user_id or str(ObjectId()), types or ["default"], minutes, secret=TEST_ENV["JWT_SEC"])


def luhn_number(prefix: str = "4", length: int = 16) -> str:
    """A fresh Luhn-valid card number (unique per call: card numbers are unique)."""
    body = prefix + "".join(random.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + check for check in "0123456789" if luhn_valid(body + check))


class Client:
    """One user of the API: a token and convenient calls over real HTTP."""

    def __init__(self, base: str, user_id: str | None = None, types: list[str] | None = None) -> None:
        self.base = base
        self.user_id = user_id or str(ObjectId())
        self.token = token_for(self.user_id, types)
        self.session = requests.Session()

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.session.request(method, f"{self.base}{API}{path}", headers=headers, timeout=60, **kwargs)

    def wait(self, response: requests.Response, timeout: float = 60) -> dict[str, Any]:
        """Poll the job a 202 answered with until it ends."""
        assert response.status_code in (200, 202), response.text
        location = response.headers["Location"]

        def ended() -> dict[str, Any] | None:
            job = self.session.get(
                f"{self.base}{location}", timeout=30, headers={"Authorization": f"Bearer {self.token}"}
            ).json()
            return job if job["status"] in ("succeeded", "failed") else None

        job: dict[str, Any] = wait_until(ended, timeout=timeout, interval=0.1, message="job ends")
        return job

    def add_card(self, money: Any = 100, number: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "cardHolderName": "Ada Lovelace",
            "cardNumber": number or luhn_number(),
            "expireDate": "12/39",
            "cvv": "012",
            "money": money,
            **fields,
        }
        job = self.wait(self.call("POST", "/add", json=body))
        assert job["status"] == "succeeded", job
        card: dict[str, Any] = job["result"]
        return card

    def pay(self, checkout_id: str, card_id: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", f"/pay/{checkout_id}", params={"cardId": card_id}, **kwargs)


@pytest.fixture(scope="module")
def mongo() -> Iterator[Database[dict[str, Any]]]:
    """The test database, raw, to see what the service really stored."""
    client: MongoClient[dict[str, Any]] = MongoClient(TEST_ENV["MONGO_URL"])
    try:
        yield client.get_default_database()
    finally:
        client.close()


def jobs_of(mongo: Database[dict[str, Any]], user_id: str) -> int:
    return mongo.jobs.count_documents({"ownerId": user_id})


@pytest.fixture(scope="session")
def api(settings: Settings, celery_app, celery_worker, topics) -> Iterator[ServedApp]:
    served = ServedApp(create_app(settings, celery_app))
    yield served
    served.close()


@pytest.fixture
def client(api: ServedApp) -> Client:
    return Client(api.url)


@pytest.fixture
def make_client(api: ServedApp) -> Callable[..., Client]:
    return lambda user_id=None, types=None: Client(api.url, user_id, types)


@pytest.fixture
def seed_checkout(checkout_service: ServedApp) -> Callable[..., dict[str, Any]]:
    """Put a checkout in the stand-in checkout service and return it."""

    def seed(user_id: str, total: Decimal | float | str = "59.97", **fields: Any) -> dict[str, Any]:
        checkout = {
            "_id": str(ObjectId()),
            "basketId": str(ObjectId()),
            "userId": user_id,
            "address": "Street 1, City",
            "isGift": False,
            "shipmentId": str(ObjectId()),
            "totalPrice": float(total),
            "status": "Pending",
            "isActive": True,
            "products": [
                {
                    "productId": "p-1",
                    "quantity": 3,
                    "price": 19.99,
                    "sellerId": "s-1",
                    "isRefunded": False,
                    "refundedQuantity": 0,
                    "name": "Mug",
                }
            ],
            **fields,
        }
        response = requests.post(f"{checkout_service.url}/_standin/checkouts", json=checkout, timeout=10)
        assert response.status_code == 201
        seeded: dict[str, Any] = response.json()
        return seeded

    return seed


@pytest.fixture(scope="session")
def second_worker(celery_app, celery_worker) -> Iterator[None]:
    """A second worker node, so that races run across separate worker processes."""
    proc = start_worker("w2", concurrency=2)

    def nodes() -> set[str]:
        return {name for reply in celery_app.control.ping(timeout=1) for name in reply}

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
        env = {"CELERY_KEY_PREFIX": self.prefix, "PAYMENT_FAILPOINTS": failpoints, **(env or {})}
        if checkout_url:
            env["CHECKOUT_SERVICE_URL"] = checkout_url
        self.env = env
        self.settings = make_settings(**{k: v for k, v in env.items() if k != "PAYMENT_FAILPOINTS"})
        self.celery = create_celery(self.settings)
        self.api = ServedApp(create_app(self.settings, self.celery))
        self.worker = self.start_worker()

    def start_worker(self, name: str = "fault") -> Any:
        node = f"{name}{self.prefix[-3:-1]}"
        proc = start_worker(node, concurrency=1, queues="payments,cards,refunds,maintenance", env=self.env)
        self.log = servers.STACK_DIR / "logs" / f"test-worker-{node}-{RUN_ID}.log"
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
