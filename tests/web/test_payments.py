"""Paying checkouts through the real API, worker, broker, database and checkout service."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId

from shared.models import Card, LedgerEntry, Payment, PaymentState
from tests.helpers import Client, luhn_number, pay_new_checkout


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def card_doc(card_id: str) -> Card:
    return Card.objects.get(id=card_id)


def test_paying_answers_202_with_the_job_and_where_to_poll_it(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="10.00")
    response = client.pay(checkout["_id"], card["id"])
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/api/payment/jobs/{job['id']}"
    assert int(response.headers["Retry-After"]) >= 1
    assert job["type"] == "payment.pay"
    assert job["status"] in ("queued", "running", "succeeded")
    ended = client.wait(response)
    assert ended["status"] == "succeeded"
    assert ended["links"]["resource"] == f"/api/payment/find/{ended['result']['id']}"


def test_prefer_wait_answers_200_with_the_ended_job(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="10.00")
    response = client.pay(checkout["_id"], card["id"], headers={"Prefer": "wait=20"})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"


def test_the_card_may_come_in_the_json_body_instead_of_the_query(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="10.00")
    job = client.wait(client.call("POST", f"/pay/{checkout['_id']}", json={"cardId": card["id"]}))
    assert job["status"] == "succeeded"
    missing = client.call("POST", f"/pay/{checkout['_id']}")
    assert missing.status_code == 422
    assert missing.json()["errors"] == [{"field": "cardId", "message": "is required"}]


def test_the_payment_copies_the_checkout_and_shows_no_card_secret(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="59.97", isGift=True)
    payment = client.wait(client.pay(checkout["_id"], card["id"]))["result"]
    assert payment["userId"] == client.user_id
    assert payment["basketId"] == checkout["basketId"]
    assert payment["shipmentId"] == checkout["shipmentId"]
    assert payment["creditCardId"] == card["id"]
    assert payment["isGift"] is True
    assert payment["products"] == [
        {
            "productId": "p-1",
            "quantity": 3,
            "price": 19.99,
            "isRefunded": False,
            "refundedQuantity": 0,
            "sellerId": "s-1",
        }
    ]
    # The last four digits as a number (the order service's Number field); the card keeps the mask.
    assert payment["cardNumber"] == int(card["last4"])
    assert payment["last4"] == card["last4"]
    assert payment["refunded"] is False
    assert payment["refundedAmount"] == 0
    assert "cvv" not in payment


def test_money_is_exact_a_balance_of_0_30_pays_0_10_and_0_20_to_zero(client: Client, seed_checkout) -> None:
    card = client.add_card(money=0.3)
    for total in ("0.10", "0.20"):
        job = pay_new_checkout(client, seed_checkout, card["id"], total=total)
        assert job["status"] == "succeeded", job
    after = client.call("GET", f"/get/{card['id']}").json()
    assert after["money"] == 0
    assert card_doc(card["id"]).money == Decimal("0.00")


@pytest.mark.parametrize("case", ["unknown", "someone_elses"])
def test_an_unknown_or_foreign_checkout_ends_the_job_checkout_not_found(
    case: str, client: Client, make_client: Callable[..., Client], seed_checkout
) -> None:
    card = client.add_card(money=100)
    checkout_id = str(ObjectId()) if case == "unknown" else seed_checkout(make_client().user_id)["_id"]
    job = client.wait(client.pay(checkout_id, card["id"]))
    assert job["status"] == "failed"
    assert job["error"]["status"] == 404
    assert job["error"]["code"] == "checkout_not_found"
    assert job["attempts"] == 1  # final: never retried
    assert card_doc(card["id"]).money == Decimal("100.00")


@pytest.mark.parametrize("case", ["unknown", "someone_elses", "deleted"])
def test_an_unknown_foreign_or_deleted_card_ends_the_job_card_not_found(
    case: str, client: Client, make_client: Callable[..., Client], seed_checkout
) -> None:
    if case == "unknown":
        card_id = str(ObjectId())
    elif case == "someone_elses":
        card_id = make_client().add_card(money=100)["id"]
    else:
        card_id = client.add_card(money=100)["id"]
        assert client.wait(client.call("DELETE", f"/delete-card/{card_id}"))["status"] == "succeeded"
    job = pay_new_checkout(client, seed_checkout, card_id)
    assert job["status"] == "failed"
    assert (job["error"]["status"], job["error"]["code"]) == (404, "card_not_found")


def test_a_second_payment_of_a_checkout_is_already_paid_with_a_link(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="10.00")
    first = client.wait(client.pay(checkout["_id"], card["id"]))
    second = client.wait(client.pay(checkout["_id"], card["id"]))
    assert second["status"] == "failed"
    assert (second["error"]["status"], second["error"]["code"]) == (409, "already_paid")
    assert second["error"]["links"]["payment"] == f"/api/payment/find/{first['result']['id']}"
    assert card_doc(card["id"]).money == Decimal("90.00")


def test_an_inactive_checkout_is_already_paid(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    job = pay_new_checkout(client, seed_checkout, card["id"], isActive=False)
    assert (job["error"]["status"], job["error"]["code"]) == (409, "already_paid")


def test_an_expired_card_ends_the_job_card_expired(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    # Cards cannot be added expired; time passes for stored ones.
    Card.objects(id=card["id"]).update_one(set__expireDate="01/20")
    job = pay_new_checkout(client, seed_checkout, card["id"])
    assert (job["error"]["status"], job["error"]["code"]) == (422, "card_expired")
    assert card_doc(card["id"]).money == Decimal("100.00")


def test_insufficient_funds_changes_nothing_and_frees_the_checkout(client: Client, seed_checkout) -> None:
    poor = client.add_card(money=10)
    rich = client.add_card(money=1000)
    checkout = seed_checkout(client.user_id, total="59.97")
    job = client.wait(client.pay(checkout["_id"], poor["id"]))
    assert (job["error"]["status"], job["error"]["code"]) == (402, "insufficient_funds")
    assert card_doc(poor["id"]).money == Decimal("10.00")
    assert LedgerEntry.objects(cardId=poor["id"], kind="debit").count() == 0
    assert Payment.objects(checkoutId=checkout["_id"], state=PaymentState.CHARGED).count() == 0
    retry = client.wait(client.pay(checkout["_id"], rich["id"]))
    assert retry["status"] == "succeeded", retry
    assert card_doc(rich["id"]).money == Decimal("940.03")


def test_a_deleted_payment_is_gone_but_its_money_movement_stays(client: Client, seed_checkout) -> None:
    card = client.add_card(money=100)
    payment = pay_new_checkout(client, seed_checkout, card["id"], total="25.00")["result"]
    job = client.wait(client.call("DELETE", f"/delete-payment/{payment['id']}"))
    assert job["status"] == "succeeded"
    assert job["result"] == {"deleted": payment["id"]}
    assert client.call("GET", f"/find/{payment['id']}").status_code == 404
    assert client.call("DELETE", f"/delete-payment/{payment['id']}").status_code == 404
    entry = LedgerEntry.objects.get(id=f"debit:{payment['id']}")
    assert entry.amount == Decimal("25.00")
    assert card_doc(card["id"]).money == Decimal("75.00")


def test_the_same_idempotency_key_sent_concurrently_gives_one_job_and_one_payment(
    client: Client, seed_checkout
) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="10.00")
    headers = {"Idempotency-Key": f"pay-{ObjectId()}"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: client.pay(checkout["_id"], card["id"], headers=headers), range(8))
        )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert client.wait(responses[0])["status"] == "succeeded"
    assert Payment.objects(checkoutId=checkout["_id"]).count() == 1
    other_card = client.pay(checkout["_id"], client.add_card(money=5)["id"], headers=headers)
    assert other_card.status_code == 422
    assert other_card.json()["code"] == "idempotency_key_reused"


@pytest.mark.slow
def test_fifty_concurrent_pays_of_one_checkout_make_one_payment_and_one_debit(
    client: Client, seed_checkout, second_worker
) -> None:
    card = client.add_card(money=1000)
    checkout = seed_checkout(client.user_id, total="59.97")
    with ThreadPoolExecutor(25) as pool:
        responses = list(pool.map(lambda _: client.pay(checkout["_id"], card["id"]), range(50)))
        jobs = list(pool.map(client.wait, responses))
    outcomes = sorted((j["status"], (j["error"] or {}).get("code")) for j in jobs)
    assert outcomes.count(("succeeded", None)) == 1, outcomes
    assert outcomes.count(("failed", "already_paid")) == 49, outcomes
    assert Payment.objects(checkoutId=checkout["_id"]).count() == 1
    stored = card_doc(card["id"])
    assert stored.money == Decimal("940.03")
    assert stored.inflight == []
    assert LedgerEntry.objects(cardId=card["id"], kind="debit").count() == 1


@pytest.mark.slow
def test_fifty_concurrent_pays_on_a_card_with_money_for_ten_make_exactly_ten(
    client: Client, seed_checkout, second_worker
) -> None:
    card = client.add_card(money=100)
    checkouts = [seed_checkout(client.user_id, total="10.00") for _ in range(50)]
    with ThreadPoolExecutor(25) as pool:
        responses = list(pool.map(lambda c: client.pay(c["_id"], card["id"]), checkouts))
        jobs = list(pool.map(client.wait, responses))
    succeeded = [j for j in jobs if j["status"] == "succeeded"]
    refused = [j for j in jobs if j["status"] == "failed"]
    assert len(succeeded) == 10
    assert {j["error"]["code"] for j in refused} == {"insufficient_funds"}
    assert len(refused) == 40
    stored = card_doc(card["id"])
    assert stored.money == Decimal("0.00")
    assert stored.inflight == []
    debited = [e.paymentId for e in LedgerEntry.objects(cardId=card["id"], kind="debit")]
    assert sorted(debited) == sorted(j["result"]["id"] for j in succeeded)
    assert LedgerEntry.objects(cardId=card["id"], kind="debit").count() == 10


def test_waiting_clients_hold_at_most_half_the_server_threads(settings) -> None:
    import time

    from tests.environment import RUN_ID, make_settings
    from tests.support import ServedApp
    from web import create_app
    from workers.app import create_celery

    # No worker consumes this prefix: the job never ends, so a waiting request waits it all out.
    quiet = make_settings(CELERY_KEY_PREFIX=f"{RUN_ID}nowork:", WEB_THREADS="2")
    served = ServedApp(create_app(quiet, create_celery(quiet)))
    client = Client(served.url)
    body = {
        "cardHolderName": "Ada",
        "cardNumber": luhn_number(),
        "expireDate": "12/39",
        "cvv": "123",
        "money": 1,
    }
    job = client.call("POST", "/add", json=body).json()

    def timed_get(_: int) -> tuple[int, float]:
        t0 = time.monotonic()
        response = client.call("GET", f"/jobs/{job['id']}", headers={"Prefer": "wait=4"})
        return response.status_code, time.monotonic() - t0

    try:
        with ThreadPoolExecutor(2) as pool:
            results = sorted(pool.map(timed_get, range(2)), key=lambda r: r[1])
    finally:
        served.close()
    (fast_status, fast), (slow_status, slow) = results
    assert fast_status == slow_status == 200  # GET /jobs answers 200 either way
    assert fast < 2.0
    assert slow >= 3.5
