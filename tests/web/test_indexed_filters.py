"""Every filter on a collection that grows with history is one unique index's keys.

The local MongoDB-protocol server uses an index only for a filter whose keys
are exactly a unique index's keys (mongo-java-server: AbstractUniqueIndex
.canHandle; non-unique indexes are kept but never used); any other filter
scans the whole collection, so a card's charge, refund and reads would cost
in proportion to all payments ever made.  One charge (its job run as the
worker runs it), one refund (handed over to the inbox, touched and settled
as the worker does) and the reads of the payment and the card run in this
process with every command recorded; each filter on ``payments``,
``ledger``, ``jobs`` and ``refund_events`` must be found by an index.
Reads of ``cards`` go by ``_id`` too.  (The card's own conditional updates
filter on several fields: ``cards`` grows with the number of cards, not
with a card's history.)  The open-job cap on submit finds a user's open
jobs by their slots (``openSlot``), one unique index too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import mongoengine
import pytest
from bson import ObjectId
from pymongo import monitoring

from devstack.tokens import make_token
from shared import db
from shared.errors import TooManyOpenJobs
from shared.models import Card, Job, Payment, PaymentState, PaymentToken, RefundEvent
from shared.services import inbox, jobs, payments, refunds
from shared.settings import Settings
from tests.environment import TEST_ENV
from tests.factories import CardFactory
from web import create_app

#: The collections that grow with every payment and refund.
WATCHED = ("payments", "ledger", "jobs", "refund_events")


class Recorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.filters: list[tuple[str, str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command, name = event.command, event.command_name
        collection = command.get(name)
        if not isinstance(collection, str):
            return
        if name in ("find", "count"):
            self.filters.append((collection, name, dict(command.get("filter", command.get("query", {})))))
        elif name == "findAndModify":
            self.filters.append((collection, name, dict(command.get("query", {}))))
        elif name == "update":
            self.filters.extend((collection, name, dict(u["q"])) for u in command["updates"])
        elif name == "delete":
            self.filters.extend((collection, name, dict(d["q"])) for d in command["deletes"])
        elif name == "aggregate":
            self.filters.append((collection, name, {"$aggregate": True}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


class DyingWebProcess:
    """A task sender that sends nothing: the job runs here."""

    def send_task(self, _name: str, _args: Any = None, **_options: Any) -> None:
        return None


@pytest.fixture
def recorder(settings: Settings) -> Iterator[Recorder]:
    """This process's connection, reopened with a listener of every command."""
    recorder = Recorder()
    mongoengine.disconnect_all()
    mongoengine.connect(
        host=TEST_ENV["MONGO_URL"],
        tz_aware=True,
        uuidRepresentation="standard",
        retryWrites=False,
        event_listeners=[recorder],
    )
    db._connected_pid = os.getpid()  # keep this connection for the app under test
    try:
        yield recorder
    finally:
        mongoengine.disconnect_all()
        db._connected_pid = None
        db.connect(settings)  # the suite's own connection again


def unique_key_sets(collection: str) -> set[frozenset[str]]:
    info = db.database()[collection].index_information()
    keys = {frozenset(k for k, _ in spec["key"]) for name, spec in info.items() if spec.get("unique")}
    return keys | {frozenset({"_id"})}


def test_charge_refund_and_reads_filter_what_grows_with_history_by_one_unique_index(
    settings: Settings,
    topics: list[str],
    seed_checkout: Callable[..., dict[str, Any]],
    recorder: Recorder,
) -> None:
    user = str(ObjectId())
    card = CardFactory.create(cardUserId=user)
    checkout = seed_checkout(user, total="59.97")
    job, _ = jobs.submit(
        DyingWebProcess(),
        job_type="payment.pay",
        owner=user,
        params={"checkoutId": checkout["_id"], "cardId": str(card.id)},
        resource_id=None,
        req_hash=uuid.uuid4().hex,
        idempotency_key=None,
    )
    recorder.filters.clear()
    jobs.run(
        str(job.id),
        lambda j: payments.charge(settings, j),
        retention=timedelta(days=settings.job_retention_days),
    )
    payment = Payment.objects.get(checkoutId=checkout["_id"])
    assert payment.state == PaymentState.CHARGED
    event_id = f"{settings.topic(settings.topic_product_refunded)}:{uuid.uuid4()}:0:1"
    inbox.hand_over(DyingWebProcess(), event_id, "refunds.product", {"eventId": event_id})
    inbox.touch(event_id)
    refunds.refund_product(settings, event_id, str(payment.id), product_id="p-1", price=Decimal("19.99"))
    inbox.settle(event_id, "applied")
    web = create_app(settings, DyingWebProcess()).test_client()
    headers = {"Authorization": f"Bearer {make_token(user, ['default'], 10, secret=TEST_ENV['JWT_SEC'])}"}
    assert web.get(f"/api/payment/find/{payment.id}", headers=headers).status_code == 200
    assert web.get(f"/api/payment/get/{card.id}", headers=headers).status_code == 200
    # A second delivery of the refund finds it recorded; as if the first had
    # died before flagging it credited, it looks for the credit's ledger entry.
    Payment.objects(id=payment.id).update_one(set__refunds__0__credited=False)
    refunds.refund_product(settings, event_id, str(payment.id), product_id="p-1", price=Decimal("19.99"))
    assert Payment.objects.get(id=payment.id).refundedAmount == Decimal("19.99")
    assert Job.objects.get(id=job.id).status == "succeeded"
    assert RefundEvent.objects.get(id=event_id).status == "applied"

    reads = [(name, sorted(f)) for c, name, f in recorder.filters if c == "cards" and name == "find"]
    assert reads
    assert all(keys == ["_id"] for _, keys in reads), reads
    seen = [(c, name, f) for c, name, f in recorder.filters if c in WATCHED]
    assert {c for c, _, _ in seen} == set(WATCHED), recorder.filters
    indexed = {c: unique_key_sets(c) for c in WATCHED}
    scans = [(c, name, sorted(f)) for c, name, f in seen if frozenset(f) not in indexed[c]]
    assert scans == [], f"filters no unique index serves: {scans}; indexes: {indexed}"


def test_the_open_job_cap_finds_a_users_open_jobs_by_one_unique_index(recorder: Recorder) -> None:
    """Submitting up to the cap and past it reads the user's slots by ``openSlot``, never counts jobs."""
    user = str(ObjectId())

    def submit() -> None:
        jobs.submit(
            DyingWebProcess(),
            job_type="payment.pay",
            owner=user,
            params={"checkoutId": str(ObjectId()), "cardId": str(ObjectId())},
            resource_id=None,
            req_hash=uuid.uuid4().hex,
            idempotency_key=None,
            open_limit=3,
        )

    recorder.filters.clear()
    for _ in range(3):
        submit()
    with pytest.raises(TooManyOpenJobs):
        submit()
    on_jobs = [(name, f) for c, name, f in recorder.filters if c == "jobs"]
    assert any(name == "find" for name, _ in on_jobs), recorder.filters  # the held slots were read
    indexed = unique_key_sets("jobs")
    scans = [(name, sorted(f)) for name, f in on_jobs if frozenset(f) not in indexed]
    assert scans == [], f"filters no unique index serves: {scans}; indexes: {indexed}"


def test_documents_stored_before_the_keys_get_them_on_first_touch(
    settings: Settings, topics: list[str], seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    """A payment, a job and an inbox entry of the previous version (no token, no statusKey) still work."""
    db.connect(settings)
    user = str(ObjectId())
    card = CardFactory.create(cardUserId=user)
    job, _ = jobs.submit(
        DyingWebProcess(),
        job_type="payment.pay",
        owner=user,
        params={"checkoutId": seed_checkout(user, total="59.97")["_id"], "cardId": str(card.id)},
        resource_id=None,
        req_hash=uuid.uuid4().hex,
        idempotency_key=None,
    )
    Job.objects(id=job.id).update_one(unset__statusKey=True)  # as the previous version stored it
    jobs.run(str(job.id), lambda j: payments.charge(settings, j), retention=timedelta(days=1))
    stored = Job.objects.get(id=job.id)
    assert (stored.status, stored.statusKey) == ("succeeded", f"{job.id}:succeeded")
    payment = Payment.objects.get(id=stored.resourceId)
    Payment.objects(id=payment.id).update_one(unset__token=True)
    event_id = f"{settings.topic(settings.topic_product_refunded)}:{uuid.uuid4()}:0:1"
    inbox.hand_over(DyingWebProcess(), event_id, "refunds.product", {"eventId": event_id})
    RefundEvent.objects(id=event_id).update_one(unset__statusKey=True)
    inbox.touch(event_id)
    refunds.refund_product(settings, event_id, str(payment.id), product_id="p-1", price=Decimal("19.99"))
    inbox.settle(event_id, "applied")
    refunded = Payment.objects.get(id=payment.id)
    assert refunded.refundedAmount == Decimal("19.99")
    assert refunded.products[0].refundedQuantity == 1
    token = PaymentToken.load(refunded.token)
    assert (token.refunds, token.refunded_amount, token.refunded_quantities) == (1, Decimal("19.99"), (1,))
    assert RefundEvent.objects.get(id=event_id).statusKey == f"{event_id}:applied"
    assert Card.objects.get(id=card.id).money == Decimal("100.00") - Decimal("59.97") + Decimal("19.99")
