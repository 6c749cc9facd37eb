"""Card data stays out of the broker, Flower and the logs; logs name their job and user."""

from __future__ import annotations

import base64
import io
import json
import logging
import re

import pytest
import redis

from devstack import servers
from shared.logs import JsonFormatter
from shared.settings import Settings
from tests.environment import RUN_ID, make_settings
from tests.helpers import Client, luhn_number
from tests.support import ServedApp, wait_until
from web import create_app
from workers.app import create_celery


def test_a_task_message_carries_the_job_id_and_no_card_data(settings: Settings) -> None:
    # An API on a broker prefix no worker consumes, so the message stays to be read.
    prefix = f"{RUN_ID}quiet:"
    quiet = make_settings(CELERY_KEY_PREFIX=prefix)
    served = ServedApp(create_app(quiet, create_celery(quiet)))
    number = luhn_number()
    try:
        response = Client(served.url).call(
            "POST",
            "/add",
            json={
                "cardHolderName": "Ada Lovelace",
                "cardNumber": number,
                "expireDate": "12/39",
                "cvv": "987",
                "money": 10,
            },
        )
    finally:
        served.close()
    assert response.status_code == 202
    with redis.Redis.from_url(settings.broker_url) as client:
        raw = client.lrange(f"{prefix}cards", 0, -1)
        client.delete(f"{prefix}cards")
    assert len(raw) == 1
    message = json.loads(raw[0])
    body = base64.b64decode(message["body"])
    assert message["headers"]["task"] == "cards.add"
    assert json.loads(body)[0] == [response.json()["id"]]
    for secret in (number, number[:6]):
        assert secret.encode() not in raw[0] + body
    # The CVV's three digits can occur by chance inside an id, a uuid or the
    # base64 body (6b0c28298731...): look for them standing alone, as JSON or
    # a Python repr (argsrepr) would write them.
    assert not re.search(rb"(?<![0-9A-Za-z.+/=])987(?![0-9A-Za-z+/=])", raw[0] + body)
    assert b"cvv" not in (raw[0] + body).lower()


@pytest.mark.slow
def test_worker_logs_are_json_lines_naming_job_task_and_user_without_card_numbers(client: Client) -> None:
    number = luhn_number()
    card = client.add_card(money=10, number=number)
    # Whichever of this run's workers took the task.
    log_files = list((servers.STACK_DIR / "logs").glob(f"test-worker-*-{RUN_ID}.log"))

    def text() -> str:
        return "".join(f.read_text() for f in log_files)

    def lines_for_this_job() -> list[dict[str, object]]:
        found = []
        for line in text().splitlines():
            if line.startswith("{") and client.user_id in line:
                found.append(json.loads(line))
        return found

    lines = wait_until(lines_for_this_job, timeout=20, message="worker log lines of the job")
    assert any(
        line.get("job_id") and line.get("task_id") and line.get("task") == "cards.add" for line in lines
    ), lines
    assert number not in text()
    assert card["last4"] == number[-4:]


def test_api_logs_name_the_request_and_user_and_never_the_card_number(client: Client) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    number = luhn_number()
    try:
        client.add_card(money=10, number=number)
    finally:
        logging.getLogger().removeHandler(handler)
    written = stream.getvalue()
    lines = [json.loads(line) for line in written.splitlines()]
    adds = [line for line in lines if line["msg"].startswith("POST /api/payment/add")]
    assert adds, written[-2000:]
    assert adds[0]["user_id"] == client.user_id
    assert adds[0]["request_id"]
    assert adds[0]["status"] == 202
    assert number not in written
