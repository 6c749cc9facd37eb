"""How many times one charge asks the database: the API's POST, the worker's task, a job poll.

Issue 10: the MongoDB-protocol server burned about 40 ms of CPU per charge
while one conditional update costs 0.15 ms; the round trips are the cost.
Every command a pymongo client of this process sends is counted by a
``CommandListener`` while one step runs in this process: the API through
Flask's test client (its task is captured, not sent), the task run eagerly
through its real Celery task class (``jobs.run``, the charge, the accepted
event), then one poll of the job.  The bounds are today's counts: a change
that adds a round trip fails here, and says which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pymongo import monitoring

from shared import db
from shared.models import Job
from shared.services import outbox
from shared.settings import Settings
from tests.helpers import Client, token_for
from web import create_app

#: Upper bounds of round trips; the counts before issue 10's cuts are in the README.
MAX_API_POST_PAY = 1  # insert the job holding an open-job slot (the cap); Celery's send is Redis
MAX_CHARGE_TASK = 9
MAX_JOB_POLL = 1


class Commands(monitoring.CommandListener):
    """Every command this process's clients send while ``recording`` is on."""

    def __init__(self) -> None:
        self.recording = False
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.recording:
            return
        target = event.command.get(event.command_name)
        with self._lock:
            self.seen.append(
                f"{event.command_name} {target}" if isinstance(target, str) else event.command_name
            )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @contextmanager
    def count(self) -> Iterator[list[str]]:
        self.seen = []
        self.recording = True
        try:
            yield self.seen
        finally:
            self.recording = False


_COMMANDS = Commands()


@pytest.fixture(scope="module")
def commands(settings: Settings) -> Commands:
    """The listener, on a connection opened after it was registered (pymongo listens from then on)."""
    monitoring.register(_COMMANDS)
    db._connected_pid = None  # reopen this process's connection, now with the listener
    db.connect(settings)
    return _COMMANDS


class CapturingSender:
    """The API's task sender, keeping the tasks for the test to run here."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str]]] = []

    def send_task(self, name: str, args: Any = None, **_options: Any) -> None:
        self.sent.append((name, list(args or [])))


def test_one_charge_asks_the_database_a_bounded_number_of_times(
    settings: Settings,
    payment_celery: Any,
    commands: Commands,
    topics: list[str],
    seed_checkout: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import workers.tasks.cards
    import workers.tasks.payments  # noqa: F401 - registers the tasks run below

    # This test's app, by name: a task object alone runs with the process's current app.
    add_card, charge = payment_celery.tasks["cards.add"], payment_celery.tasks["payments.charge"]
    sender = CapturingSender()
    app = create_app(settings, sender)
    http = app.test_client()
    user = Client("", None)
    headers = {"Authorization": f"Bearer {token_for(user.user_id)}"}
    card = http.post(
        "/api/payment/add",
        json={
            "cardHolderName": "A B",
            "cardNumber": _number(),
            "expireDate": "12/39",
            "cvv": "123",
            "money": 100,
        },
        headers=headers,
    ).get_json()
    add_card.apply(args=sender.sent.pop()[1])
    card_id = Job.objects.get(id=card["id"]).resourceId
    # A warm process: the first use of each collection creates its indexes.
    warm = seed_checkout(user.user_id, total="1.00")
    http.post(f"/api/payment/pay/{warm['_id']}?cardId={card_id}", headers=headers)
    charge.apply(args=sender.sent.pop()[1])
    assert outbox.wait_for_publisher(timeout=15)
    checkout = seed_checkout(user.user_id, total="12.50")

    with commands.count() as api_post:
        response = http.post(f"/api/payment/pay/{checkout['_id']}?cardId={card_id}", headers=headers)
    assert response.status_code == 202, response.get_json()
    name, args = sender.sent.pop()
    assert name == "payments.charge"

    with commands.count() as task:
        result = charge.apply(args=args)
        assert outbox.wait_for_publisher(timeout=15)  # the accepted event's mark, off the task's path
    assert result.successful(), result.traceback

    with commands.count() as poll:
        job = http.get(response.headers["Location"], headers=headers).get_json()
    assert job["status"] == "succeeded", job

    with capsys.disabled():
        print(f"\nround trips: POST /pay {len(api_post)} {api_post}")
        print(f"round trips: payments.charge {len(task)} {task}")
        print(f"round trips: GET /jobs/<id> {len(poll)} {poll}")
    assert len(api_post) <= MAX_API_POST_PAY, api_post
    assert len(task) <= MAX_CHARGE_TASK, task
    assert len(poll) <= MAX_JOB_POLL, poll


def _number() -> str:
    from tests.helpers import luhn_number

    return luhn_number()
