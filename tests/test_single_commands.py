"""The single commands of shared.models.base send what MongoEngine's querysets send.

``find_one``, ``update_one`` and ``find_one_and_update`` skip the queryset
on the charge's path; each must send the same command document as the
queryset it replaces, answer the same, and raise the same errors.  Every
command of this process is recorded on the real MongoDB-protocol server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId
from mongoengine.errors import NotUniqueError
from pymongo import monitoring

from shared.models import Card, Job, JobStatus
from shared.models.base import find_one, find_one_and_update, update_one
from tests.factories import CardFactory


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.recording = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording and event.command_name in ("find", "update", "findAndModify"):
            fields = ("filter", "projection", "limit", "updates", "query", "update", "fields", "new")
            self.sent.append({k: event.command[k] for k in fields if k in event.command})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = Commands()
monitoring.register(COMMANDS)  # before the test's connection exists (documents)


@pytest.fixture
def card(documents: None) -> Iterator[Card]:
    card: Card = CardFactory.create(
        cardHolderName="Ada", money=Decimal("30.30"), inflight=["debit:a:b"], version=3
    )
    yield card
    card.delete()


def sent_by(run: Callable[[], Any]) -> tuple[Any, list[dict[str, Any]]]:
    COMMANDS.sent, COMMANDS.recording = [], True
    try:
        return run(), COMMANDS.sent
    finally:
        COMMANDS.recording = False


def test_find_one_sends_and_answers_what_only_first_does(card: Card) -> None:
    fields = ("version", "money", "deletedAt", "inflight")
    ours, ours_sent = sent_by(lambda: find_one(Card, {"id": str(card.id)}, *fields))
    theirs, theirs_sent = sent_by(lambda: Card.objects(id=str(card.id)).only(*fields).first())
    assert ours_sent == theirs_sent
    assert ours_sent[0]["filter"] == {"_id": card.id}
    # Fields left out get their defaults on both (the timestamps: now, when the document is built).
    loaded = ("_id", "version", "money", "deletedAt", "inflight", "cardHolderName")
    assert {k: ours.to_mongo().get(k) for k in loaded} == {k: theirs.to_mongo().get(k) for k in loaded}
    assert (ours.version, ours.money, ours.inflight, ours.cardHolderName) == (
        3,
        Decimal("30.30"),
        ["debit:a:b"],
        None,
    )
    whole, _ = sent_by(lambda: find_one(Card, {"id": card.id}))
    assert whole.to_mongo() == Card.objects(id=card.id).first().to_mongo()
    assert find_one(Card, {"id": ObjectId()}) is None


def test_update_one_sends_and_answers_what_update_one_does(card: Card) -> None:
    def change(version: int) -> dict[str, Any]:
        return {"push_all__inflight": [f"v{version}"], "inc__version": 1, "inc__money": Decimal("-1.10")}

    ours, ours_sent = sent_by(lambda: update_one(Card, {"id": card.id, "version": 3}, **change(3)))
    theirs, theirs_sent = sent_by(lambda: Card.objects(id=card.id, version=4).update_one(**change(4)))
    assert (ours, theirs) == (True, 1)
    assert ours_sent[0]["updates"][0]["q"] == theirs_sent[0]["updates"][0]["q"] | {"version": 3}
    assert ours_sent[0]["updates"][0]["u"] == {
        **theirs_sent[0]["updates"][0]["u"],
        "$push": {"inflight": {"$each": ["v3"]}},
    }
    stored = Card.objects(id=card.id).first()
    assert (stored.version, stored.money, stored.inflight) == (5, Decimal("28.10"), ["debit:a:b", "v3", "v4"])
    # A filter that matches nothing changes nothing and says so.
    assert update_one(Card, {"id": card.id, "version": 3}, inc__version=1) is False
    assert Card.objects(id=card.id).first().version == 5


def test_update_one_raises_what_mongoengine_raises_on_a_duplicate_key(card: Card) -> None:
    other = Card.objects(id=card.id).first()
    other.id, other.fingerprint = ObjectId(), f"f-{ObjectId()}"
    other.save(force_insert=True)
    try:
        with pytest.raises(NotUniqueError):
            update_one(Card, {"id": other.id}, set__fingerprint=card.fingerprint)
        with pytest.raises(NotUniqueError):
            Card.objects(id=other.id).update_one(set__fingerprint=card.fingerprint)
    finally:
        other.delete()


def test_find_one_and_update_answers_the_document_after_the_update(documents: None) -> None:
    job = Job(id=ObjectId(), type="charge", ownerId=str(ObjectId()), status=JobStatus.QUEUED, params={})
    job.statusKey = f"{job.id}:queued"
    job.save(force_insert=True)
    try:
        keys = [f"{job.id}:queued", f"{job.id}:running"]
        ours, ours_sent = sent_by(
            lambda: find_one_and_update(
                Job, {"statusKey__in": keys}, set__status=JobStatus.RUNNING, inc__attempts=1
            )
        )
        theirs, theirs_sent = sent_by(
            lambda: Job.objects(statusKey__in=keys).modify(
                new=True, set__status=JobStatus.RUNNING, inc__attempts=1
            )
        )
        assert ours_sent == theirs_sent
        assert (ours.status, ours.attempts, theirs.attempts) == (JobStatus.RUNNING, 1, 2)
        assert ours.to_mongo() | {"attempts": 2} == theirs.to_mongo()
        assert find_one_and_update(Job, {"statusKey": "none:queued"}, inc__attempts=1) is None
    finally:
        job.delete()
