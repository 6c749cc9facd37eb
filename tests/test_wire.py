"""The JSON forms of ids, timestamps and amounts (shared.wire), and the answers' bytes."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId
from flask import Flask

from shared.models import Card, Job, Payment, PaymentProduct
from shared.money import MAX_MONEY
from shared.services import views
from shared.wire import amount_text, dumps, object_id_text, timestamp
from web import WireJSONProvider

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
CARD_ID, USER_ID, PAYMENT_ID, JOB_ID = (f"65a1f0c2e4b0a1b2c3d4e5f{n}" for n in "6789")


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0", "0.0"),
        ("0.00", "0.0"),
        ("-0.00", "0.0"),
        ("0.30", "0.3"),
        ("59.90", "59.9"),
        ("59.97", "59.97"),
        ("100", "100.0"),
        ("100.00", "100.0"),
        ("1E+2", "100.0"),
        ("999999999999.99", "999999999999.99"),
    ],
)
def test_an_amount_is_written_as_its_shortest_decimal_text(amount: str, text: str) -> None:
    assert amount_text(Decimal(amount)) == text


def test_amounts_are_written_as_the_api_always_wrote_them_without_a_float() -> None:
    # The API wrote amounts as the shortest repr of a double; for amounts up to
    # MAX_MONEY that is the same text, which is now made from the Decimal alone.
    rng = random.Random(11)
    cents = [0, 1, 10, 99, 100, 12345, int(MAX_MONEY * 100)] + [
        rng.randrange(int(MAX_MONEY * 100)) for _ in range(5000)
    ]
    for cent in cents:
        amount = (Decimal(cent) / 100).quantize(Decimal("0.01"))
        assert amount_text(amount) == repr(float(amount)), amount


def test_dumps_writes_what_json_dumps_writes_for_everything_but_amounts() -> None:
    value: dict[str, Any] = {"b": [1, -2, True, False, None, 1.5, 'é"\n\u2028'], "a": {"x": {}}, "c": []}
    for separators in ((",", ":"), (", ", ": ")):
        assert dumps(value, separators=separators) == json.dumps(value, separators=separators)
    assert (
        dumps({"money": Decimal("10.10"), "at": AT}) == '{"money": 10.1, "at": "2026-01-02T03:04:05.678000Z"}'
    )
    with pytest.raises(TypeError):
        dumps({"x": object()})
    with pytest.raises(ValueError, match="finite"):
        dumps(Decimal("NaN"))


def test_an_object_id_is_accepted_in_either_case_and_kept_lowercase() -> None:
    assert object_id_text(CARD_ID.upper()) == CARD_ID
    assert object_id_text(CARD_ID) == CARD_ID
    for bad in (CARD_ID[:-1], CARD_ID + "0", CARD_ID[:-1] + "g", f" {CARD_ID}", 42, None):
        assert object_id_text(bad) is None


def test_a_timestamp_is_rfc_3339_in_utc_with_z() -> None:
    assert timestamp(AT) == "2026-01-02T03:04:05.678000Z"


# -- the answers' bytes (api.md): the response models are the serializers ----------


def _answer(value: views.View) -> str:
    app = Flask(__name__)
    app.json = WireJSONProvider(app)
    with app.app_context():
        return app.json.response(value.wire()).get_data(as_text=True)


def _card() -> Card:
    return Card(
        id=ObjectId(CARD_ID),
        cardUserId=USER_ID,
        cardHolderName='Ädä "L"',
        fingerprint="f",
        last4="0042",
        brand="visa",
        expireDate="12/30",
        money=Decimal("100.00"),
        createdAt=AT,
        updatedAt=AT,
    )


CARD_TEXT = (
    f'{{"_id":"{CARD_ID}","id":"{CARD_ID}","cardUserId":"{USER_ID}",'
    '"cardHolderName":"\\u00c4d\\u00e4 \\"L\\"",'
    '"cardNumber":"************0042","last4":"0042","brand":"visa","expireDate":"12/30","money":100.0,'
    '"createdAt":"2026-01-02T03:04:05.678000Z","updatedAt":"2026-01-02T03:04:05.678000Z"}'
)


def test_a_card_is_answered_byte_for_byte_as_the_contract_writes_it() -> None:
    assert _answer(views.Card.of(_card())) == CARD_TEXT + "\n"


def test_a_payment_has_the_card_number_as_a_number_of_its_last_four_digits() -> None:
    payment = Payment(
        id=ObjectId(PAYMENT_ID),
        userId=USER_ID,
        checkoutId="c1",
        basketId=None,
        creditCardId=CARD_ID,
        shipmentId="s",
        products=[PaymentProduct(productId="p", quantity=3, price=Decimal("10.10"), sellerId=None)],
        address="a",
        isGift=False,
        status="Pending",
        totalPrice=Decimal("30.30"),
        refunded=False,
        refundedAmount=Decimal("0.00"),
        cardHolderName="A",
        cardNumber="************0042",
        expireDate="12/30",
        paymentStatus=True,
        createdAt=AT,
        updatedAt=AT,
    )
    assert _answer(views.Payment.of(payment)) == (
        f'{{"_id":"{PAYMENT_ID}","id":"{PAYMENT_ID}","userId":"{USER_ID}","checkoutId":"c1","basketId":null,'
        f'"creditCardId":"{CARD_ID}","shipmentId":"s","products":[{{"productId":"p","quantity":3,"price":10.1,'
        '"isRefunded":false,"refundedQuantity":0,"sellerId":null}],"address":"a","isGift":false,'
        '"status":"Pending","totalPrice":30.3,"refunded":false,"refundedAmount":0.0,"cardHolderName":"A",'
        '"cardNumber":42,"last4":"0042","expireDate":"12/30","paymentStatus":true,'
        '"createdAt":"2026-01-02T03:04:05.678000Z","updatedAt":"2026-01-02T03:04:05.678000Z"}\n'
    )


def test_a_job_keeps_its_result_as_stored_and_answers_it_unchanged() -> None:
    stored = views.to_bson(views.Card.of(_card()))
    assert stored["money"].to_decimal() == Decimal("100.00")  # Decimal128, never a float
    job = Job(
        id=ObjectId(JOB_ID),
        type="card.add",
        status="succeeded",
        ownerId=USER_ID,
        resourceId=CARD_ID,
        attempts=1,
        createdAt=AT,
        updatedAt=AT,
        result=stored,
    )
    assert _answer(views.Job.of(job)) == (
        f'{{"id":"{JOB_ID}","type":"card.add","status":"succeeded","createdAt":"2026-01-02T03:04:05.678000Z",'
        f'"updatedAt":"2026-01-02T03:04:05.678000Z","attempts":1,"result":{CARD_TEXT},"error":null,'
        f'"links":{{"self":"/api/payment/jobs/{JOB_ID}","resource":"/api/payment/get/{CARD_ID}"}}}}\n'
    )
    failed = Job(
        id=ObjectId(JOB_ID),
        type="payment.pay",
        status="failed",
        ownerId=USER_ID,
        attempts=2,
        createdAt=AT,
        updatedAt=AT,
        error={"title": "x", "status": 409, "detail": "d", "code": "already_paid", "paymentId": "p"},
    )
    assert '"error":{"title":"x","status":409,"detail":"d","code":"already_paid","paymentId":"p"},' in (
        _answer(views.Job.of(failed))
    )
