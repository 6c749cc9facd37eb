"""The one home of the integration tests' set-up: tokens, an API client, checkouts, pay and wait.

Add a card, seed a checkout, pay it, wait for the job: every test that needs
a paid checkout gets it from here (``pay_new_checkout``, ``paid``), built on
the factories of ``tests.factories``, instead of its own copy.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import requests
from bson import ObjectId
from pymongo.database import Database

from devstack.tokens import make_token
from tests.environment import TEST_ENV
from tests.factories import AddCardBodyFactory, CheckoutFactory, luhn_number
from tests.support import wait_until

API = "/api/payment"

#: Every task of the service, with the queue its messages go to: public names
#: (the API, the bridge and beat send them by name; routes match their prefixes).
PUBLIC_TASKS = {
    "cards.add": "cards",
    "cards.delete": "cards",
    "payments.charge": "payments",
    "payments.delete": "payments",
    "refunds.refund_order": "refunds",
    "refunds.refund_product": "refunds",
    "refunds.apply_batch": "refunds",
    "outbox.publish_accepted": "maintenance",
    "jobs.requeue_stale": "maintenance",
    "jobs.requeue_unstarted": "maintenance",
    "jobs.purge_expired": "maintenance",
    "maintenance.reconcile": "maintenance",
    "system.ping": "maintenance",
}


__all__ = [
    "API",
    "PUBLIC_TASKS",
    "Client",
    "SeedCheckout",
    "jobs_of",
    "luhn_number",
    "paid",
    "pay_new_checkout",
    "seed_checkout",
    "token_for",
]

#: ``seed(user_id, total="59.97", **fields) -> checkout``: the ``seed_checkout`` fixture.
SeedCheckout = Callable[..., dict[str, Any]]


def token_for(user_id: str | None = None, types: list[str] | None = None, minutes: int = 60) -> str:
    return make_token(user_id or str(ObjectId()), types or ["default"], minutes, secret=TEST_ENV["JWT_SEC"])


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
        """Add a card and wait until it is stored; its view."""
        body = AddCardBodyFactory(money=money, **fields)
        if number is not None:
            body["cardNumber"] = number
        job = self.wait(self.call("POST", "/add", json=body))
        assert job["status"] == "succeeded", job
        card: dict[str, Any] = job["result"]
        return card

    def pay(self, checkout_id: str, card_id: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", f"/pay/{checkout_id}", params={"cardId": card_id}, **kwargs)


def seed_checkout(
    standin_url: str, user_id: str, total: Decimal | float | str = "59.97", **fields: Any
) -> dict[str, Any]:
    """Put a checkout of ``user_id`` in the checkout stand-in and return it as stored."""
    checkout = CheckoutFactory(userId=user_id, totalPrice=float(total), **fields)
    response = requests.post(f"{standin_url}/_standin/checkouts", json=checkout, timeout=10)
    assert response.status_code == 201, response.text
    seeded: dict[str, Any] = response.json()
    return seeded


def pay_new_checkout(
    client: Client, seed: SeedCheckout, card_id: str, total: Decimal | float | str = "59.97", **fields: Any
) -> dict[str, Any]:
    """Seed a checkout of the client's, pay it with the card and wait: the ended job (either way)."""
    checkout = seed(client.user_id, total=total, **fields)
    return client.wait(client.pay(checkout["_id"], card_id))


def paid(
    client: Client,
    seed: SeedCheckout,
    total: Decimal | float | str = "59.97",
    money: Any = 100,
    number: str | None = None,
    **fields: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new card of the client's (with ``money``) and a checkout paid with it: (card, payment)."""
    card = client.add_card(money=money, number=number)
    job = pay_new_checkout(client, seed, card["id"], total=total, **fields)
    assert job["status"] == "succeeded", job
    payment: dict[str, Any] = job["result"]
    return card, payment


def jobs_of(mongo: Database[dict[str, Any]], user_id: str) -> int:
    return mongo.jobs.count_documents({"ownerId": user_id})


def charged_payments(count: int, units: int = 100) -> list[str]:
    """Charged payments of ``units`` units of 0.01, each on a card of its own: the bench's seeding."""
    from bench.refund_throughput import charged_payments as stored

    return stored(count, units)
