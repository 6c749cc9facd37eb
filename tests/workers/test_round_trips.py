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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from pymongo import monitoring

from shared import db
from shared.models import Card, Job, LedgerEntry, Payment, RefundEvent
from shared.services import inbox, outbox
from shared.settings import Settings
from tests.factories import CardFactory
from tests.helpers import Client, charged_payments, token_for
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


def test_a_waiting_poll_reads_the_job_once_per_interval(
    settings: Settings, commands: Commands, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    """``Prefer: wait=1`` on a job that stays queued: one read by ``_id`` every 0.1 s, no more."""
    app = create_app(settings, CapturingSender())  # the task is kept here: the job stays queued
    http = app.test_client()
    user = Client("", None)
    headers = {"Authorization": f"Bearer {token_for(user.user_id)}"}
    checkout = seed_checkout(user.user_id, total="1.00")
    card = CardFactory.create(cardUserId=user.user_id)
    location = http.post(f"/api/payment/pay/{checkout['_id']}?cardId={card.id}", headers=headers)
    assert location.status_code == 202, location.get_json()

    with commands.count() as reads:
        response = http.get(location.headers["Location"], headers={**headers, "Prefer": "wait=1"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "queued"
    assert set(reads) == {"find jobs"}, reads
    # The first read, then at most one per 0.1 s of the second waited.
    assert 5 <= len(reads) <= 12, reads


def _number() -> str:
    from tests.helpers import luhn_number

    return luhn_number()


#: Upper bounds of round trips of ``refunds.apply_batch``: one event alone, and
#: per event in a batch of ``BATCH`` events over ``PAYMENTS`` payments (a card each).
MAX_REFUND_BATCH_OF_ONE = 9
MAX_REFUND_PER_EVENT_IN_A_BATCH = 0.25  # 9 for the 40: the count does not grow with the events
BATCH, PAYMENTS = 40, 10


def _handed_batch(settings: Settings, payment_ids: list[str], count: int) -> list[dict[str, Any]]:
    """``count`` one-unit product refunds over the payments, in the inbox as the bridge leaves them."""
    topic = settings.topic(settings.topic_product_refunded)
    handed = []
    for i in range(count):
        event_id = f"{topic}:{uuid.uuid4()}:0:{i}"
        kwargs = {
            "event_id": event_id,
            "payment_id": payment_ids[i % len(payment_ids)],
            "product_id": "u",
            "price": "0.01",
            "raw": "{}",
        }
        handed.append(inbox.Handed(event_id, "refunds.refund_product", kwargs))
    sender = CapturingKwargsSender()
    inbox.hand_over_batch(sender, "refunds.apply_batch", handed)
    events: list[dict[str, Any]] = sender.sent.pop()["events"]
    return events


class CapturingKwargsSender:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, _name: str, kwargs: Any = None, **_options: Any) -> None:
        self.sent.append(dict(kwargs or {}))


def test_refund_events_ask_the_database_a_bounded_number_of_times_alone_and_in_a_batch(
    settings: Settings,
    payment_celery: Any,
    commands: Commands,
    topics: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import workers.tasks.refunds  # noqa: F401 - registers the task run below

    apply_batch = payment_celery.tasks["refunds.apply_batch"]
    payment_ids = charged_payments(PAYMENTS)
    warm = _handed_batch(settings, payment_ids[:1], 1)  # indexes, connections, the producer
    assert apply_batch.apply(kwargs={"events": warm}).successful()

    one = _handed_batch(settings, payment_ids[1:2], 1)
    with commands.count() as alone:
        result = apply_batch.apply(kwargs={"events": one})
    assert result.successful(), result.traceback
    batch = _handed_batch(settings, payment_ids, BATCH)
    with commands.count() as many:
        result = apply_batch.apply(kwargs={"events": batch})
    assert result.successful(), result.traceback

    ids = [e["kwargs"]["event_id"] for e in [*one, *batch]]
    assert {e.status for e in RefundEvent.objects(id__in=ids)} == {"applied"}
    assert LedgerEntry.objects(id__in=[f"credit:{i}" for i in ids]).count() == len(ids)
    per_payment = BATCH // PAYMENTS
    for i, payment_id in enumerate(payment_ids):
        payment = Payment.objects.get(id=payment_id)
        units = per_payment + (i == 0) + (i == 1)  # the warm-up's event, the one alone
        assert len(payment.refunds) == units
        assert all(r.credited and r.published for r in payment.refunds)
        assert payment.refundedAmount == Decimal(units) / 100
        card = Card.objects.get(id=payment.creditCardId)
        assert (card.money, card.inflight) == (Decimal(units) / 100, [])

    with capsys.disabled():
        print(f"\nround trips: refunds.apply_batch of 1 event {len(alone)} {alone}")
        print(
            f"round trips: refunds.apply_batch of {BATCH} events {len(many)},"
            f" {len(many) / BATCH:.2f} per event"
        )
    assert len(alone) <= MAX_REFUND_BATCH_OF_ONE, alone
    assert len(many) / BATCH <= MAX_REFUND_PER_EVENT_IN_A_BATCH, many


def test_accepted_events_handed_over_together_go_in_one_request_and_one_update(
    settings: Settings, commands: Commands, topics: list[str]
) -> None:
    """The charges' publisher thread sends the events that come within its linger together.

    Twenty charged payments handed over at once: every event reaches the
    order service's topic with its payment id as key, every payment is
    marked published, and the marks take at most a few updates of
    ``payments`` (one per batch), not twenty.
    """
    import json

    from tests.workers.kafka_support import read_to_end

    payment_ids = charged_payments(20)
    payments = list(Payment.objects(id__in=payment_ids))
    outbox.publish_soon(settings, payments[0])  # the thread and the producer exist before the count
    assert outbox.wait_for_publisher(timeout=15)
    with commands.count() as marks:
        for payment in payments[1:]:
            assert outbox.publish_soon(settings, payment)
        assert outbox.wait_for_publisher(timeout=15)

    # The topic holds this module's other charges too.
    records = [
        r for r in read_to_end(settings, settings.topic_payment_accepted) if r.key.decode() in payment_ids
    ]
    assert {r.key.decode() for r in records} == set(payment_ids)
    assert {json.loads(r.value)["paymentId"] for r in records} == set(payment_ids)
    assert Payment.objects(id__in=payment_ids, acceptedEventPublished=True).count() == len(payment_ids)
    updates = [c for c in marks if c == "update payments"]
    assert 1 <= len(updates) <= 3, marks
