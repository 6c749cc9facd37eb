"""The whole flow through the real API, worker, broker and database."""

from __future__ import annotations

from decimal import Decimal

from tests.helpers import Client


def test_a_user_adds_a_card_pays_a_checkout_and_reads_the_payment(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    assert card["money"] == 100
    checkout = seed_checkout(client.user_id, total="59.97")
    job = client.wait(client.pay(checkout["_id"], card["id"]))
    assert job["status"] == "succeeded", job
    payment = job["result"]
    assert payment["checkoutId"] == checkout["_id"]
    assert Decimal(str(payment["totalPrice"])) == Decimal("59.97")
    assert payment["paymentStatus"] is True
    found = client.call("GET", f"/find/{payment['id']}")
    assert found.status_code == 200
    assert found.json() == payment
    after = client.call("GET", f"/get/{card['id']}").json()
    assert Decimal(str(after["money"])) == Decimal("40.03")
