"""Failing a charge and debiting it exclude each other (issue 8, hole 3).

Two runs of one charge job, in this process: run A stops (a stall failpoint)
right after it read the payment as pending, before it touches the card; run
B finds too little money and fails the charge; a refund of another payment
puts money back on the card; then run A goes on.  It must not debit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from shared import failpoints
from shared.errors import InsufficientFunds, ServiceError
from shared.models import Card, Job, LedgerEntry, Payment, PaymentState
from shared.services import jobs, payments, refunds
from shared.settings import Settings
from tests.environment import make_settings
from tests.helpers import Client, pay_new_checkout
from tests.support import wait_until


class DyingWebProcess:
    """A task sender that sends nothing: the job runs only where the test runs it."""

    def send_task(self, _name: str, _args: Any = None, **_options: Any) -> None:
        return None


def _pay_job_never_sent(client: Client, checkout: dict[str, Any], card: dict[str, Any]) -> Job:
    """The job of paying ``checkout`` with ``card``, stored as the API stores it; its message is lost."""
    job, _ = jobs.submit(
        DyingWebProcess(),
        job_type="payment.pay",
        owner=client.user_id,
        params={"checkoutId": checkout["_id"], "cardId": card["id"]},
        resource_id=None,
        req_hash=uuid.uuid4().hex,
        idempotency_key=None,
    )
    return job


def test_a_charge_failed_by_one_run_is_not_debited_by_another_run_holding_it_pending(
    settings: Settings,
    client: Client,
    seed_checkout: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    card = client.add_card(money=100)
    first = pay_new_checkout(client, seed_checkout, card["id"], total="59.97")
    assert first["status"] == "succeeded"  # the card now holds 40.03
    checkout = seed_checkout(client.user_id, total="50.00")
    job = _pay_job_never_sent(client, checkout, card)
    monkeypatch.setenv("PAYMENT_FAILPOINTS", "stall:charge.before_debit")
    monkeypatch.setattr(failpoints, "STALL_SECONDS", 6)
    stalling = make_settings()
    outcome: dict[str, Any] = {}

    def run_a() -> None:
        try:
            outcome["a"] = payments.charge(stalling, Job.objects.get(id=job.id))
        except ServiceError as error:
            outcome["a"] = error

    thread = threading.Thread(target=run_a)
    thread.start()
    try:
        # Run A claimed the checkout and, a moment later, stalls before the debit.
        wait_until(lambda: Payment.objects(checkoutId=checkout["_id"]).first(), timeout=30, message="claim")
        time.sleep(1)
        # Run B: the failpoint fired for run A already, so B goes straight through.
        with pytest.raises(InsufficientFunds):
            payments.charge(stalling, Job.objects.get(id=job.id))
        assert Payment.objects.get(checkoutId=checkout["_id"]).state == PaymentState.FAILED
        # A refund lands while run A still holds the payment as pending.
        event_id = f"{settings.topic(settings.topic_order_refunded)}:{uuid.uuid4()}:0:1"
        refunds.refund_order(settings, event_id, first["result"]["id"])
        assert Card.objects.get(id=card["id"]).money == Decimal("100.00")
    finally:
        thread.join(timeout=60)
    assert isinstance(outcome["a"], InsufficientFunds), outcome
    payment = Payment.objects.get(checkoutId=checkout["_id"])
    assert payment.state == PaymentState.FAILED
    assert Card.objects.get(id=card["id"]).money == Decimal("100.00")
    assert LedgerEntry.objects(paymentId=str(payment.id), kind="debit").count() == 0


def test_a_duplicate_delivery_of_a_charge_does_not_reopen_the_charge_another_delivery_failed(
    settings: Settings, client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card = client.add_card(money=10)
    checkout = seed_checkout(client.user_id, total="50.00")
    job = _pay_job_never_sent(client, checkout, card)
    # The job's message delivered twice (sent again while the first copy waited): both
    # start; the second runs to its end first and finds too little money.
    first, second = jobs.start(str(job.id)), jobs.start(str(job.id))
    assert first is not None
    assert second is not None
    assert (first.attempts, second.attempts) == (1, 2)
    with pytest.raises(InsufficientFunds):
        payments.charge(settings, second)
    # Money arrives, then the first copy runs its claim: it must find the refusal, not debit.
    Card.objects(id=card["id"]).update_one(inc__money=Decimal("100.00"), inc__version=1)
    with pytest.raises(InsufficientFunds):
        payments.charge(settings, first)
    payment = Payment.objects.get(checkoutId=checkout["_id"])
    assert payment.state == PaymentState.FAILED
    assert Card.objects.get(id=card["id"]).money == Decimal("110.00")
    assert LedgerEntry.objects(paymentId=str(payment.id), kind="debit").count() == 0
