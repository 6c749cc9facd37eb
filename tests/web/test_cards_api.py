"""Cards through the real API, broker and worker (api.md "Cards", "Errors", "Jobs").

Adding answers 202 with a job that ends with the card as reads show it; bad
input is refused before anything is queued; the full number and the CVV are
stored nowhere; a number exists once across all users, even under a race; a
deleted card disappears from reads but stays on record and frees its number;
Idempotency-Key replays give the same job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import bson
import pytest
import redis
import requests
from bson import ObjectId, json_util
from pymongo.database import Database

from shared.keys import request_hash_key
from shared.pan import fingerprint
from shared.services.jobs import request_hash
from shared.settings import Settings
from tests.environment import TEST_ENV
from tests.factories import AddCardBodyFactory
from tests.helpers import API, Client, jobs_of, luhn_number, pay_new_checkout

#: The ``seed_checkout`` fixture: puts a checkout in the stand-in checkout service.
SeedCheckout = Callable[..., dict[str, Any]]

CARD_KEYS = {
    "_id",
    "id",
    "cardUserId",
    "cardHolderName",
    "cardNumber",
    "last4",
    "brand",
    "expireDate",
    "money",
    "createdAt",
    "updatedAt",
}
ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def card_body(number: Any = None, **fields: Any) -> dict[str, Any]:
    """A valid add-card body (``tests.factories``), with the number and fields given."""
    body: dict[str, Any] = AddCardBodyFactory(**fields)
    if number is not None:
        body["cardNumber"] = number
    return body


def spaced(number: str) -> str:
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def a_past_month() -> str:
    today = datetime.now(UTC).date()
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    return f"{month:02d}/{year % 100:02d}"


def cards_with_number(mongo: Database[dict[str, Any]], number: str) -> list[dict[str, Any]]:
    key = TEST_ENV["CARD_FINGERPRINT_KEY"].encode()
    return list(mongo.cards.find({"fingerprint": fingerprint(number, key)}))


def add_outcome(client: Client, response: requests.Response) -> tuple[str, dict[str, Any]]:
    """("created", card) or ("duplicate", problem-or-error); anything else fails the test."""
    if response.status_code == 409:
        problem = response.json()
        assert response.headers["Content-Type"] == "application/problem+json"
        assert problem["code"] == "duplicate_card", problem
        return "duplicate", problem
    job = client.wait(response)
    if job["status"] == "succeeded":
        return "created", job["result"]
    assert job["error"]["status"] == 409, job
    assert job["error"]["code"] == "duplicate_card", job
    return "duplicate", job["error"]


def assert_problem(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert "Traceback" not in response.text
    return body


def bad_fields(problem: dict[str, Any]) -> set[str]:
    return {error["field"] for error in problem.get("errors", [])}


# -- adding ---------------------------------------------------------------------------


def test_adding_a_card_answers_202_with_the_job_its_location_and_retry_after(client: Client) -> None:
    response = client.call("POST", "/add", json=card_body())
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["type"] == "card.add"
    assert job["status"] in ("queued", "running", "succeeded")
    assert response.headers["Location"] == f"{API}/jobs/{job['id']}"
    assert job["links"]["self"] == f"{API}/jobs/{job['id']}"
    assert int(response.headers["Retry-After"]) >= 1
    assert ISO_TIMESTAMP.match(job["createdAt"])


def test_the_add_job_ends_with_the_card_exactly_as_api_md_lists_it(client: Client) -> None:
    number = luhn_number("4", 16)
    response = client.call("POST", "/add", json=card_body(number, cardHolderName="Grace Hopper", money=250.5))
    job = client.wait(response)
    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert job["attempts"] >= 1
    card = job["result"]
    assert set(card) == CARD_KEYS
    assert card["id"] == card["_id"]
    assert ObjectId.is_valid(card["id"])
    assert card["cardHolderName"] == "Grace Hopper"
    assert card["cardNumber"] == "************" + number[-4:]
    assert card["last4"] == number[-4:]
    assert card["brand"] == "visa"
    assert card["expireDate"] == "12/39"
    assert card["cardUserId"] == client.user_id
    assert ISO_TIMESTAMP.match(card["createdAt"])
    assert ISO_TIMESTAMP.match(card["updatedAt"])
    assert job["links"]["resource"] == f"{API}/get/{card['id']}"


def test_money_is_a_json_number_in_the_card(client: Client) -> None:
    job = client.wait(client.call("POST", "/add", json=card_body(money=12.34)))
    raw = client.call("GET", f"/get/{job['result']['id']}")
    # The JSON text itself: a number, not "12.34" in quotes.
    assert re.search(r'"money":\s*12\.34[,}\s]', raw.text), raw.text
    assert isinstance(raw.json()["money"], int | float)
    assert not isinstance(raw.json()["money"], bool)
    assert re.search(r'"money":\s*12\.34[,}\s]', json.dumps(job["result"]))


def test_get_returns_the_card_exactly_as_the_add_job_result(client: Client) -> None:
    job = client.wait(client.call("POST", "/add", json=card_body()))
    got = client.call("GET", f"/get/{job['result']['id']}")
    assert got.status_code == 200, got.text
    # api.md: "Card as every read returns it (GET, job results)" - one shape, one value.
    assert got.json() == job["result"]


def test_an_expiry_sent_as_mm_yyyy_is_stored_and_shown_as_mm_yy(client: Client) -> None:
    card = client.add_card(expireDate="07/2041")
    assert card["expireDate"] == "07/41"
    assert client.call("GET", f"/get/{card['id']}").json()["expireDate"] == "07/41"


def test_the_owner_is_the_tokens_user_even_when_the_body_names_another(
    client: Client, mongo: Database[dict[str, Any]]
) -> None:
    someone_else = str(ObjectId())
    card = client.add_card(cardUserId=someone_else)
    assert card["cardUserId"] == client.user_id
    stored = mongo.cards.find_one({"_id": ObjectId(card["id"])})
    assert stored is not None
    assert stored["cardUserId"] == client.user_id
    assert someone_else not in json_util.dumps(stored)


def test_a_card_number_may_be_sent_as_a_json_number_or_with_spaces_or_dashes(client: Client) -> None:
    as_int = luhn_number("5", 16)
    assert client.add_card(cardNumber=int(as_int))["last4"] == as_int[-4:]
    with_spaces = luhn_number("4", 16)
    assert client.add_card(number=spaced(with_spaces))["last4"] == with_spaces[-4:]
    with_dashes = luhn_number("4", 19)
    assert client.add_card(number=spaced(with_dashes).replace(" ", "-"))["last4"] == with_dashes[-4:]


def test_prefer_wait_answers_200_with_the_ended_job(client: Client) -> None:
    response = client.call("POST", "/add", json=card_body(), headers={"Prefer": "wait=10"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    assert set(job["result"]) == CARD_KEYS
    assert response.headers["Location"] == f"{API}/jobs/{job['id']}"


# -- validation --------------------------------------------------------------------------


def _valid_json() -> str:
    return json.dumps(card_body())


BAD_REQUESTS: dict[str, tuple[bytes, set[str]]] = {
    # name: (raw body, fields the errors must name)
    "an array": (b"[]", set()),
    "a string": (b'"card"', set()),
    "a number": (b"42", set()),
    "null": (b"null", set()),
    "an empty body": (b"", set()),
    "invalid JSON": (b'{"cardNumber": ', set()),
    "a trailing comma": (b'{"money": 1,}', set()),
    "NaN money": (_valid_json().replace('"money": 100', '"money": NaN').encode(), set()),
    "Infinity money": (_valid_json().replace('"money": 100', '"money": Infinity').encode(), set()),
    "money as a string": (json.dumps(card_body(money="100")).encode(), {"money"}),
    "money as a boolean": (json.dumps(card_body(money=True)).encode(), {"money"}),
    "card number as a boolean": (json.dumps(card_body(number=True)).encode(), {"cardNumber"}),
    "card number as a fraction": (
        _valid_json().replace('"cardNumber": "', '"cardNumber": 1.5, "x": "').encode(),
        {"cardNumber"},
    ),
    "cvv as null": (json.dumps(card_body(cvv=None)).encode(), {"cvv"}),
    "expiry as a number": (json.dumps(card_body(expireDate=1239)).encode(), {"expireDate"}),
    "holder name as a list": (json.dumps(card_body(cardHolderName=["Ada"])).encode(), {"cardHolderName"}),
    "a duplicate key": (
        _valid_json().replace('{"cardHolderName"', '{"money": 5, "cardHolderName"').encode(),
        set(),
    ),
    "deep nesting": (b'{"cardHolderName": ' + b"[" * 200 + b"]" * 200 + b"}", set()),
    "invalid UTF-8": (b'{"cardHolderName": "\xff\xfe"}', set()),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_a_body_that_is_not_a_json_object_of_the_right_types_is_400_and_queues_nothing(
    client: Client, mongo: Database[dict[str, Any]], kind: str
) -> None:
    raw, fields = BAD_REQUESTS[kind]
    response = client.call("POST", "/add", data=raw, headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400, "bad_request")
    assert problem["errors"], problem
    assert fields <= bad_fields(problem)
    assert jobs_of(mongo, client.user_id) == 0


def test_every_invalid_field_is_named_in_one_422_and_nothing_is_queued(
    client: Client, mongo: Database[dict[str, Any]]
) -> None:
    good = luhn_number()
    bad_luhn = good[:-1] + str((int(good[-1]) + 1) % 10)
    body = card_body(bad_luhn, expireDate=a_past_month(), cvv="12", money=-1, cardHolderName="   ")
    response = client.call("POST", "/add", json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert bad_fields(problem) == {"cardNumber", "expireDate", "cvv", "money", "cardHolderName"}
    # Messages say what is wrong without repeating card data.
    assert bad_luhn not in response.text
    assert jobs_of(mongo, client.user_id) == 0


INVALID_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "a number failing the Luhn check": ({"cardNumber": "4242424242424241"}, "cardNumber"),
    "a number too short": ({"cardNumber": "42424242424"}, "cardNumber"),
    "a number too long": ({"cardNumber": "4" * 19 + "2"}, "cardNumber"),
    "a number with letters": ({"cardNumber": "4242-4242-abcd-4242"}, "cardNumber"),
    "a number with unicode digits": ({"cardNumber": "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢"}, "cardNumber"),
    "an expiry in the past": ({"expireDate": "01/20"}, "expireDate"),
    "an expiry with month 13": ({"expireDate": "13/39"}, "expireDate"),
    "an expiry in another form": ({"expireDate": "2039-12"}, "expireDate"),
    "a two-digit cvv": ({"cvv": "12"}, "cvv"),
    "a four-digit cvv": ({"cvv": "1234"}, "cvv"),
    "a cvv number below 100": ({"cvv": 12}, "cvv"),
    "negative money": ({"money": -1}, "money"),
    "money with three decimals": ({"money": 1.234}, "money"),
    "an empty holder name": ({"cardHolderName": ""}, "cardHolderName"),
    "a holder name with a bidi override": ({"cardHolderName": "Ada\u202eecalevol"}, "cardHolderName"),
    "a missing card number": ({"cardNumber": None}, "cardNumber"),
}


@pytest.mark.parametrize("kind", list(INVALID_VALUES))
def test_a_well_formed_but_invalid_value_is_422_naming_that_field_and_queues_nothing(
    client: Client, mongo: Database[dict[str, Any]], kind: str
) -> None:
    change, field = INVALID_VALUES[kind]
    body = {**card_body(), **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = client.call("POST", "/add", json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert bad_fields(problem) == {field}
    assert all(error["message"] for error in problem["errors"])
    assert jobs_of(mongo, client.user_id) == 0


def test_an_empty_object_is_422_naming_every_required_field(client: Client) -> None:
    problem = assert_problem(client.call("POST", "/add", json={}), 422, "validation_error")
    assert bad_fields(problem) == {"cardHolderName", "cardNumber", "expireDate", "cvv", "money"}


@pytest.mark.parametrize(
    ("money", "shown"),
    [("-0", 0), ("-0.00", 0), ("0.10", 0.1), ("1e2", 100), ("999999999999.99", 999999999999.99)],
)
def test_odd_but_valid_money_is_accepted_exactly(client: Client, money: str, shown: float) -> None:
    raw = _valid_json().replace('"money": 100', f'"money": {money}').encode()
    response = client.call("POST", "/add", data=raw, headers={"Content-Type": "application/json"})
    job = client.wait(response)
    assert job["status"] == "succeeded", job
    assert job["result"]["money"] == shown
    assert not str(job["result"]["money"]).startswith("-")


def test_a_body_over_64_kib_is_413_problem_json_and_queues_nothing(
    client: Client, mongo: Database[dict[str, Any]]
) -> None:
    raw = json.dumps(card_body(cardHolderName="A" * (70 * 1024))).encode()
    response = client.call("POST", "/add", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 413
    assert "Traceback" not in response.text
    assert jobs_of(mongo, client.user_id) == 0


# -- PCI ---------------------------------------------------------------------------------


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key path, value) pair of a document, nested ones included."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield f"{path}.{key}", child
            yield from _walk(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(child, f"{path}[{index}]")


def test_neither_the_full_number_nor_the_cvv_is_stored_anywhere_in_the_database(
    client: Client, mongo: Database[dict[str, Any]], seed_checkout: SeedCheckout
) -> None:
    number = luhn_number("4", 16)
    # Not the last four digits, which the answers carry as a number for the
    # shop's schemas ("0987" is 987): a random number may end so.
    cvv = "987" if int(number[-4:]) != 987 else "654"
    response = client.call(
        "POST",
        "/add",
        json=card_body(spaced(number), cvv=cvv),
        headers={"Idempotency-Key": f"pci-{ObjectId()}"},
    )
    card = client.wait(response)["result"]
    # A payment too, so that every collection a card touches holds something.
    assert pay_new_checkout(client, seed_checkout, card["id"], total="1.00")["status"] == "succeeded"

    collections = mongo.list_collection_names()
    assert {"cards", "jobs", "idempotency_keys", "payments"} <= set(collections)
    scanned = 0
    for name in collections:
        for document in mongo[name].find():
            scanned += 1
            text = json_util.dumps(document)
            where = f"{name} {document.get('_id')}"
            assert number not in text, where
            assert spaced(number) not in text, where
            assert number[:12] not in text, where
            assert number.encode() not in bson.encode(document), where
            for key_path, value in _walk(document):
                assert key_path.rsplit(".", 1)[-1].lower() != "cvv", f"{where} has a cvv key at {key_path}"
                assert value not in (cvv, int(cvv)), f"{where} holds the cvv value at {key_path}"
    assert scanned >= 4


def _redis_values(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key)
    readers: dict[Any, Callable[[], Any]] = {
        b"string": lambda: [client.get(key)],
        b"list": lambda: client.lrange(key, 0, -1),
        b"hash": lambda: [item for pair in client.hgetall(key).items() for item in pair],
        b"set": lambda: list(client.smembers(key)),
        b"zset": lambda: client.zrange(key, 0, -1),
    }
    return [value for value in readers.get(kind, list)() if value is not None]


def test_the_card_data_does_not_travel_through_the_broker_or_result_backend(client: Client) -> None:
    # Messages carry job ids only (STYLE.md 6); jobs may sit unacked in Redis.
    number = luhn_number("4", 16)
    client.add_card(number=number, cvv="987")
    with redis.Redis.from_url(TEST_ENV["CELERY_BROKER_URL"]) as broker:
        keys = list(broker.scan_iter(f"{TEST_ENV['CELERY_KEY_PREFIX']}*"))
        assert keys, "the run's Celery keys are where the test expects them"
        for key in keys:
            for value in _redis_values(broker, key):
                assert number.encode() not in value, key
                assert b"cvv" not in value.lower(), key


def test_reads_never_return_the_cvv_or_the_full_number(client: Client) -> None:
    number = luhn_number("4", 16)
    response = client.call("POST", "/add", json=card_body(number, cvv="987"))
    job_text = client.session.get(
        f"{client.base}{response.headers['Location']}",
        headers={"Authorization": f"Bearer {client.token}"},
        timeout=30,
    )
    card = client.wait(response)["result"]
    for text in (
        response.text,
        job_text.text,
        client.call("GET", f"/get/{card['id']}").text,
        client.call("GET", response.headers["Location"].removeprefix(API)).text,
    ):
        assert number not in text
        assert number[:12] not in text
        assert "cvv" not in text.lower()
        assert '"987"' not in text


# -- duplicates --------------------------------------------------------------------------


def test_adding_the_same_number_again_is_409_duplicate_card(client: Client) -> None:
    number = luhn_number()
    client.add_card(number=number)
    outcome, _ = add_outcome(client, client.call("POST", "/add", json=card_body(number)))
    assert outcome == "duplicate"


@pytest.mark.parametrize("formatting", ["digits", "spaces", "dashes", "json number"])
def test_another_user_adding_a_registered_number_in_any_format_gets_409_duplicate_card(
    make_client: Callable[..., Client], mongo: Database[dict[str, Any]], formatting: str
) -> None:
    number = luhn_number()
    first = make_client()
    first.add_card(number=number)
    sent: Any = {
        "digits": number,
        "spaces": spaced(number),
        "dashes": spaced(number).replace(" ", "-"),
        "json number": int(number),
    }[formatting]
    second = make_client()
    outcome, _ = add_outcome(second, second.call("POST", "/add", json=card_body(sent)))
    assert outcome == "duplicate"
    stored = cards_with_number(mongo, number)
    assert [c["cardUserId"] for c in stored] == [first.user_id]


def test_ten_users_racing_to_add_the_same_new_number_create_exactly_one_card(
    make_client: Callable[..., Client], mongo: Database[dict[str, Any]]
) -> None:
    number = luhn_number()
    clients = [make_client() for _ in range(10)]

    def attempt(client: Client) -> tuple[str, dict[str, Any]]:
        return add_outcome(client, client.call("POST", "/add", json=card_body(number)))

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(attempt, clients))

    created = [
        (c, result) for c, (outcome, result) in zip(clients, outcomes, strict=True) if outcome == "created"
    ]
    assert len(created) == 1, outcomes
    assert [outcome for outcome, _ in outcomes].count("duplicate") == 9
    stored = cards_with_number(mongo, number)
    assert len(stored) == 1
    winner, card = created[0]
    assert str(stored[0]["_id"]) == card["id"]
    assert stored[0]["cardUserId"] == winner.user_id


# -- deleting ----------------------------------------------------------------------------


def test_deleting_a_card_ends_with_deleted_and_the_card_is_then_not_found(client: Client) -> None:
    card = client.add_card()
    response = client.call("DELETE", f"/delete-card/{card['id']}")
    assert response.status_code == 202, response.text
    assert response.headers["Location"].startswith(f"{API}/jobs/")
    job = client.wait(response)
    assert job["status"] == "succeeded", job
    assert job["type"] == "card.delete"
    assert job["result"] == {"deleted": card["id"]}
    assert_problem(client.call("GET", f"/get/{card['id']}"), 404, "card_not_found")
    assert_problem(client.call("DELETE", f"/delete-card/{card['id']}"), 404, "card_not_found")


def test_a_deleted_card_stays_on_record_with_its_money_movements(
    client: Client, mongo: Database[dict[str, Any]], seed_checkout: SeedCheckout
) -> None:
    card = client.add_card(money=100)
    payment = pay_new_checkout(client, seed_checkout, card["id"], total="12.50")["result"]
    client.wait(client.call("DELETE", f"/delete-card/{card['id']}"))
    stored = mongo.cards.find_one({"_id": ObjectId(card["id"])})
    assert stored is not None
    assert isinstance(stored["deletedAt"], datetime)
    assert str(stored["money"]) == "87.50"
    assert mongo.ledger.count_documents({"cardId": card["id"], "paymentId": payment["id"]}) == 1


def test_a_deleted_cards_number_can_be_added_again(client: Client, mongo: Database[dict[str, Any]]) -> None:
    number = luhn_number()
    old = client.add_card(number=number)
    client.wait(client.call("DELETE", f"/delete-card/{old['id']}"))
    new = client.add_card(number=spaced(number))
    assert new["id"] != old["id"]
    assert new["last4"] == number[-4:]
    live = cards_with_number(mongo, number)
    assert [str(c["_id"]) for c in live] == [new["id"]]
    assert client.call("GET", f"/get/{new['id']}").status_code == 200


# -- ids in the path ---------------------------------------------------------------------

NOT_OBJECT_IDS = [
    "abc",
    "z" * 24,
    "0" * 25,
    "0" * 23,
    "ünïcødé-ïd",
    "\u202e" + "a" * 23,
    "0123456789abcdef01234567 ",
    "a%00b",
    '{"$gt":""}',
    "' OR 1=1 --",
    "null",
    "-1",
]
ID_ROUTES = [
    ("GET", "/get/{id}", "cardId"),
    ("DELETE", "/delete-card/{id}", "cardId"),
    ("GET", "/find/{id}", "paymentId"),
    ("DELETE", "/delete-payment/{id}", "paymentId"),
    ("GET", "/jobs/{id}", "jobId"),
    ("POST", "/pay/{id}", "checkoutId"),
]


@pytest.mark.parametrize("route", ID_ROUTES, ids=[f"{m} {p}" for m, p, _ in ID_ROUTES])
@pytest.mark.parametrize("bad_id", NOT_OBJECT_IDS)
def test_an_id_that_is_not_an_object_id_is_422_naming_the_field(
    client: Client, route: tuple[str, str, str], bad_id: str
) -> None:
    method, path, field = route
    response = client.call(
        method, path.format(id=quote(bad_id, safe="%")), params={"cardId": str(ObjectId())}
    )
    problem = assert_problem(response, 422, "validation_error")
    assert bad_fields(problem) == {field}


def test_a_card_id_in_the_pay_query_that_is_not_an_object_id_is_422(
    client: Client, seed_checkout: SeedCheckout
) -> None:
    checkout = seed_checkout(client.user_id)
    problem = assert_problem(client.pay(checkout["_id"], "abc"), 422, "validation_error")
    assert bad_fields(problem) == {"cardId"}


def test_an_uppercase_object_id_is_read_as_the_same_id(client: Client) -> None:
    card = client.add_card()
    response = client.call("GET", f"/get/{card['id'].upper()}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == card["id"]


# -- Idempotency-Key ---------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_sent_again_answer_with_the_same_job(
    client: Client, mongo: Database[dict[str, Any]]
) -> None:
    number = luhn_number()
    body = card_body(spaced(number))
    headers = {"Idempotency-Key": f"add-{ObjectId()}"}
    first = client.call("POST", "/add", json=body, headers=headers)
    assert first.status_code == 202, first.text
    job = client.wait(first)
    assert job["status"] == "succeeded", job

    again = client.call("POST", "/add", json=body, headers=headers)
    assert again.status_code in (200, 202), again.text
    assert again.json()["id"] == job["id"]
    assert again.json()["status"] == "succeeded"
    assert again.headers["Location"] == f"{API}/jobs/{job['id']}"
    assert jobs_of(mongo, client.user_id) == 1
    assert len(cards_with_number(mongo, number)) == 1


def test_five_concurrent_adds_with_one_idempotency_key_give_one_job_and_one_card(
    client: Client, mongo: Database[dict[str, Any]]
) -> None:
    number = luhn_number()
    body = card_body(number)
    key = f"add-{ObjectId()}"

    def send(_: int) -> requests.Response:
        # One session per thread: requests.Session is not thread-safe.
        with requests.Session() as session:
            return session.post(
                f"{client.base}{API}/add",
                json=body,
                headers={"Authorization": f"Bearer {client.token}", "Idempotency-Key": key},
                timeout=60,
            )

    with ThreadPoolExecutor(max_workers=5) as pool:
        responses = list(pool.map(send, range(5)))

    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    job_ids = {r.json()["id"] for r in responses}
    assert len(job_ids) == 1
    job = client.wait(responses[0])
    assert job["status"] == "succeeded", job
    assert jobs_of(mongo, client.user_id) == 1
    assert len(cards_with_number(mongo, number)) == 1


def test_an_idempotency_key_reused_with_another_body_is_422(
    client: Client, mongo: Database[dict[str, Any]]
) -> None:
    key = f"add-{ObjectId()}"
    body = card_body()
    first = client.wait(client.call("POST", "/add", json=body, headers={"Idempotency-Key": key}))
    assert first["status"] == "succeeded", first
    for other in (card_body(), {**body, "money": 101}, {**body, "expireDate": "11/39"}):
        response = client.call("POST", "/add", json=other, headers={"Idempotency-Key": key})
        assert_problem(response, 422, "idempotency_key_reused")
    assert jobs_of(mongo, client.user_id) == 1


def test_an_add_sent_again_with_another_cvv_is_the_same_request_and_no_stored_hash_holds_the_cvv(
    client: Client, mongo: Database[dict[str, Any]], settings: Settings
) -> None:
    # The CVV is in no stored digest: a digest that held it beside the values
    # it was made from would give it back in 1,000 tries to whoever has the key.
    key = f"cvv-{ObjectId()}"
    body = card_body(cvv="123")
    first = client.wait(client.call("POST", "/add", json=body, headers={"Idempotency-Key": key}))
    assert first["status"] == "succeeded", first
    for cvv in ("456", 789):
        again = client.call("POST", "/add", json={**body, "cvv": cvv}, headers={"Idempotency-Key": key})
        assert again.status_code in (200, 202), again.text
        assert again.json()["id"] == first["id"]
    assert jobs_of(mongo, client.user_id) == 1

    # Both stored digests are made, under the request-hash key, from nothing
    # but what is stored beside them.
    job = mongo.jobs.find_one({"_id": ObjectId(first["id"])})
    assert job is not None
    expected = request_hash(
        request_hash_key(settings), {"type": "card.add", "path": f"{API}/add", **job["params"]}
    )
    assert job["requestHash"] == expected
    records = list(mongo.idempotency_keys.find({"jobId": first["id"]}))
    assert [record["requestHash"] for record in records] == [expected]


def test_the_same_idempotency_key_from_another_user_is_independent(
    make_client: Callable[..., Client], mongo: Database[dict[str, Any]]
) -> None:
    key = f"shared-{ObjectId()}"
    alice, bob, carol = make_client(), make_client(), make_client()
    alice_body = card_body()
    alice_job = alice.wait(alice.call("POST", "/add", json=alice_body, headers={"Idempotency-Key": key}))
    assert alice_job["status"] == "succeeded", alice_job

    # Bob sending Alice's exact request under her key is not a replay of her job.
    copy = bob.call("POST", "/add", json=alice_body, headers={"Idempotency-Key": key})
    assert alice_job["id"] not in copy.text
    assert add_outcome(bob, copy)[0] == "duplicate"

    # Carol's own request under the same key makes her own job.
    carol_response = carol.call("POST", "/add", json=card_body(), headers={"Idempotency-Key": key})
    assert carol_response.status_code == 202, carol_response.text
    carol_job = carol.wait(carol_response)
    assert carol_job["id"] != alice_job["id"]
    assert carol_job["status"] == "succeeded", carol_job
    assert carol_job["result"]["cardUserId"] == carol.user_id
    assert jobs_of(mongo, alice.user_id) == 1
    assert jobs_of(mongo, carol.user_id) == 1


def test_an_idempotent_delete_replayed_after_the_card_is_gone_answers_with_the_same_job(
    client: Client,
) -> None:
    card = client.add_card(money=5)
    headers = {"Idempotency-Key": f"del-{card['id']}"}
    first = client.wait(client.call("DELETE", f"/delete-card/{card['id']}", headers=headers))
    assert first["status"] == "succeeded"
    replay = client.call("DELETE", f"/delete-card/{card['id']}", headers=headers)
    assert replay.status_code in (200, 202)
    assert replay.json()["id"] == first["id"]
    assert client.call("DELETE", f"/delete-card/{card['id']}").status_code == 404
