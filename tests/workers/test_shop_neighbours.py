"""The shop's real Node neighbours, as they really send and read: doubles and a numeric cardNumber.

The checkout service totals its products in JavaScript doubles, the order
service multiplies a unit price by a quantity in doubles, and the order
service stores the payment's ``cardNumber`` in a required ``Number`` field.
Each test here is a customer who lost money or an order before the fix
(issue: drop-in for the real shop).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from shared.models import Card, Payment
from shared.pan import luhn_valid
from shared.settings import Settings
from tests.helpers import Client, pay_new_checkout
from tests.support import wait_until
from tests.workers.kafka_support import bridge_process, kcat_produce, read_topic

TEN_TEN = {"productId": "p-10", "quantity": 3, "price": 10.10, "sellerId": "s-1"}
ONE_TEN = {"productId": "p-1", "quantity": 3, "price": 1.10, "sellerId": "s-1"}
TWO = {"productId": "p-2", "quantity": 1, "price": 2.00, "sellerId": "s-2"}


@pytest.fixture(scope="module")
def bridge(topics: list[str], payment_worker: Any) -> Iterator[subprocess.Popen[bytes]]:
    with bridge_process() as proc:
        yield proc


def number_ending_in(last4: str) -> str:
    """A fresh Luhn-valid 16-digit number ending in ``last4`` (a middle digit makes it valid)."""
    import random

    head = "4" + "".join(random.choice("0123456789") for _ in range(10))
    return next(f"{head}{d}{last4}" for d in "0123456789" if luhn_valid(f"{head}{d}{last4}"))


def pay(
    client: Client,
    seed_checkout: Callable[..., dict[str, Any]],
    products: list[dict[str, Any]],
    total: float,
    money: Any = 100,
    number: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    card = client.add_card(money=money, number=number)
    return card, pay_new_checkout(client, seed_checkout, card["id"], total=total, products=products)


def balance(card_id: str) -> Decimal:
    return Card.objects.get(id=card_id).money


def test_a_checkout_totalled_in_doubles_is_paid_to_the_cent(
    client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    total = 3 * 1.10 + 2.00
    assert repr(total) == "5.300000000000001"  # what the checkout service sends
    card, job = pay(client, seed_checkout, [ONE_TEN, TWO], total)
    assert job["status"] == "succeeded", job
    assert job["result"]["totalPrice"] == 5.3
    assert [p["price"] for p in job["result"]["products"]] == [1.1, 2.0]
    assert balance(card["id"]) == Decimal("94.70")
    assert Payment.objects.get(id=job["result"]["id"]).totalPrice == Decimal("5.30")


def test_a_checkout_total_off_every_cent_is_refused_not_rounded(
    client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card, job = pay(client, seed_checkout, [TEN_TEN], 30.305)
    assert job["status"] == "failed"
    assert (job["error"]["status"], job["error"]["code"]) == (502, "checkout_invalid")
    assert balance(card["id"]) == Decimal("100.00")


def test_a_payment_reads_cardnumber_as_the_number_of_the_last_four_digits(
    client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card, job = pay(client, seed_checkout, [TWO], 2.0, number=number_ending_in("0042"))
    assert job["status"] == "succeeded", job
    assert card["cardNumber"] == "************0042"  # the card view keeps the masked string
    found = client.call("GET", f"/find/{job['result']['id']}")
    assert found.status_code == 200
    # The raw text, as the order service's mongoose casts it: a JSON number, no quotes.
    assert re.search(r'"cardNumber":\s*42[,}]', found.text), found.text
    payment = found.json()
    assert (payment["cardNumber"], payment["last4"]) == (42, "0042")
    assert job["result"]["cardNumber"] == 42  # the job's copy of the payment too


def test_a_product_refund_of_3_x_10_10_in_doubles_credits_30_30(
    settings: Settings, bridge: Any, client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card, job = pay(client, seed_checkout, [TEN_TEN, TWO], 3 * 10.10 + 2.00)
    assert job["status"] == "succeeded", job
    payment = client.call("GET", f"/find/{job['result']['id']}").json()
    assert balance(card["id"]) == Decimal("67.70")
    price = 3 * 10.10
    assert repr(price) == "30.299999999999997"  # the order service's price * quantity
    # The order service copies cardNumber from our find answer: now a number.
    event = {
        "productId": "p-10",
        "price": price,
        "cardNumber": payment["cardNumber"],
        "paymentId": payment["id"],
    }
    sent = kcat_produce(settings, settings.topic_product_refunded, [event])
    assert b'"price":30.299999999999997' in sent[0]
    wait_until(lambda: balance(card["id"]) == Decimal("98.00"), timeout=60, message="30.30 credited")
    found = client.call("GET", f"/find/{payment['id']}").json()
    assert found["refundedAmount"] == 30.3
    assert found["products"][0]["refundedQuantity"] == 3
    assert found["products"][0]["isRefunded"] is True

    # The whole-order refund of the rest, with the checkout's double total.
    order = {"refunded": True, "totalPrice": 3 * 10.10 + 2.00, "paymentId": payment["id"]}
    kcat_produce(settings, settings.topic_order_refunded, [order])
    wait_until(lambda: balance(card["id"]) == Decimal("100.00"), timeout=60, message="the rest credited")


def test_a_refund_price_off_every_cent_is_dead_lettered_as_invalid(
    settings: Settings, bridge: Any, client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card, job = pay(client, seed_checkout, [TEN_TEN], 3 * 10.10)
    assert job["status"] == "succeeded", job
    payment_id = job["result"]["id"]
    event = {"productId": "p-10", "price": 30.305, "cardNumber": 4242, "paymentId": payment_id}
    kcat_produce(settings, settings.topic_product_refunded, [event])

    def dead_letter() -> dict[str, Any] | None:
        for record in read_topic(settings, settings.topic_dead_letter, timeout_ms=1500):
            if payment_id.encode() in (record.value or b""):
                return {"value": record.value, **{k: v.decode() for k, v in record.headers}}
        return None

    letter: dict[str, Any] = wait_until(dead_letter, timeout=60, interval=0.5, message="dead letter")
    assert letter["reason"] == "invalid_fields"
    assert "price" in letter["detail"]
    assert json.loads(letter["value"])["price"] == 30.305  # set aside byte for byte
    assert balance(card["id"]) == Decimal("69.70")
    assert Payment.objects.get(id=payment_id).refunds == []
