"""Refund events per second through the bridge and the workers, and produce-to-applied latency.

    make stack-up && .venv/bin/python -m bench.refund_throughput [--events 1000] [--runs 3]

Starts one refund bridge and two worker nodes (one pool process each, as
``make dev``) on a private database, broker prefix and topic prefix, and
waits until the two nodes answer and the bridge holds the topics' partitions
(or fails: no figure is reported for fewer processes than it names).  Each
run produces ``--events`` product-refund events (one unit of 0.01 each,
spread over 50 payments) and waits until every one is credited.  Latency is
the credit's ledger time minus the Kafka record's CreateTime.  Then a steady
20 events/s, paced by the clock (an absolute schedule, each send at its own
time whatever the sends before it cost).  Baseline, in the same run: how
many no-op ``system.ping`` tasks the same workers complete per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any

from bson import ObjectId
from kafka import KafkaProducer

from bench.common import paced, percentile, run_env, summary, table
from bench.stack import Stack

PAYMENTS = 50


def seed(units: int) -> list[str]:
    """Charged payments of one product each, with ``units`` refundable units of 0.01."""
    return charged_payments(PAYMENTS, units)


def charged_payments(count: int, units: int) -> list[str]:
    """``count`` charged payments of ``units`` units of 0.01 (product ``u``), each on its own card (0.00).

    Stored as a charge leaves them (with their token), without a checkout or
    a job: for runs and tests that need many refundable payments quickly.
    """
    from shared.models import Card, Payment, PaymentProduct, PaymentState
    from shared.services import payment_tokens

    ids = []
    for _ in range(count):
        card = Card(
            cardUserId=str(ObjectId()),
            cardHolderName="A B",
            fingerprint=f"charged:{uuid.uuid4().hex}",
            last4="4242",
            brand="visa",
            expireDate="12/39",
            money=Decimal("0.00"),
        )
        card.save(force_insert=True)
        payment = Payment(
            userId=card.cardUserId,
            checkoutId=str(ObjectId()),
            creditCardId=str(card.id),
            products=[PaymentProduct(productId="u", quantity=units, price=Decimal("0.01"))],
            totalPrice=Decimal(units) / 100,
            cardHolderName="A B",
            cardNumber="************4242",
            expireDate="12/39",
            state=PaymentState.CHARGED,
            paymentStatus=True,
            jobId=str(ObjectId()),
        )
        payment.save(force_insert=True)
        payment_tokens.migrate(payment)  # as a charge leaves it: with its token
        ids.append(str(payment.id))
    return ids


@dataclass
class RefundRun:
    events: int
    events_per_s: float
    latencies: list[float]  # produce (CreateTime) to ledger credit
    steps: list[tuple[str, list[float]]]
    produced_per_s: float | None = None  # the paced send rate achieved, for a paced run

    def row(self) -> dict[str, float]:
        s = summary(self.latencies)
        row = {
            "events_per_s": round(self.events_per_s, 1),
            "median_ms": s["median_ms"],
            "p99_ms": s["p99_ms"],
        }
        if self.produced_per_s is not None:
            row["produced_per_s"] = round(self.produced_per_s, 2)
        return row


def one_run(
    stack: Stack, payment_ids: list[str], events: int, rate: float | None = None, stall: float = 120
) -> RefundRun:
    """Produce ``events`` (all at once, or ``rate`` per second by the clock); wait for every credit.

    Fails (TimeoutError) if no credit comes for ``stall`` seconds: a slow machine only
    makes the run longer, a stuck pipeline stops it.
    """
    from shared.models import LedgerEntry

    settings = stack.settings
    producer = KafkaProducer(**settings.kafka_client_options, linger_ms=0 if rate else 5)
    topic = settings.topic(settings.topic_product_refunded)
    started = LedgerEntry.objects(kind="credit").count()
    futures = []

    def send(i: int) -> None:
        value = {
            "productId": "u",
            "price": 0.01,
            "cardNumber": "************4242",
            "paymentId": payment_ids[i % len(payment_ids)],
        }
        futures.append(producer.send(topic, json.dumps(value, separators=(",", ":")).encode()))

    produced_rate = None
    if rate:
        produced_rate = paced(rate, events, send)
    else:
        for i in range(events):
            send(i)
    produced = {(m.partition, m.offset): m.timestamp / 1000 for m in (f.get(30) for f in futures)}
    producer.close()
    applied, moved = 0, time.monotonic()
    while applied < events:
        count = LedgerEntry.objects(kind="credit").count() - started
        if count > applied:
            applied, moved = count, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise TimeoutError(
                f"refunds stalled: {applied} of {events} applied, none in the last {stall:.0f} s"
            )
        time.sleep(0.05)
    credits: dict[tuple[int, int], tuple[str, float]] = {}
    for entry in LedgerEntry.objects(kind="credit").only("id", "at"):
        event_id = entry.id.removeprefix("credit:")
        partition, offset = (int(p) for p in event_id.rsplit(":", 2)[1:])
        if (partition, offset) in produced:
            credits[(partition, offset)] = (event_id, _seconds(entry.at))
    if len(credits) != events:
        raise RuntimeError(f"{len(credits)} credits matched {events} events")
    latencies = [at - produced[key] for key, (_eid, at) in credits.items()]
    first, last = min(produced.values()), max(at for _eid, at in credits.values())
    steps = _steps(stack, produced, credits)
    return RefundRun(events, events / max(last - first, 1e-9), latencies, steps, produced_rate)


def _steps(
    stack: Stack, produced: dict[tuple[int, int], float], credits: dict[tuple[int, int], tuple[str, float]]
) -> list[tuple[str, list[float]]]:
    """Where each refund's time went: the inbox's hand-over time and the task events."""
    from shared.models import RefundEvent

    handed = {
        e.id: _seconds(e.receivedAt)
        for e in RefundEvent.objects(id__in=[eid for eid, _at in credits.values()]).only("id", "receivedAt")
    }
    rows: dict[str, list[float]] = {k: [] for k in ("kafka", "queue", "handoff", "run", "total")}
    for key, (eid, at) in credits.items():
        rows["total"].append(at - produced[key])
        task = stack.events.by_key.get(eid)
        if eid in handed:
            rows["kafka"].append(handed[eid] - produced[key])
        if task is None:
            continue
        if task.started is not None and eid in handed:
            rows["queue"].append(task.started - handed[eid])
        if task.started is not None and task.received is not None:
            rows["handoff"].append(task.started - task.received)
        if task.runtime is not None:
            rows["run"].append(task.runtime)
    return [
        ("Kafka + bridge: produced to handed over (inbox)", rows["kafka"]),
        ("queue: handed over to task started", rows["queue"]),
        ("  of which received to started in the pool", rows["handoff"]),
        ("task run (refunds.refund_product)", rows["run"]),
        ("total: produced to credited (ledger)", rows["total"]),
    ]


def _seconds(at: Any) -> float:
    return float(at.replace(tzinfo=UTC).timestamp() if at.tzinfo is None else at.timestamp())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from bench.charge_latency import ping_rate

    run = f"rbench{uuid.uuid4().hex[:8]}"
    stack = Stack(run, run_env(run), api=False)
    try:
        payment_ids = seed(units=(args.events * args.runs + 400) // PAYMENTS + 10)
        stack.workers(2)
        stack.bridges(1)
        ping_rate(stack, 50)  # warm-up
        baseline = ping_rate(stack, args.events)
        runs = [one_run(stack, payment_ids, args.events) for _ in range(args.runs)]
        steady = one_run(stack, payment_ids, 200, rate=20)
    finally:
        stack.close()
    rates = [r.events_per_s for r in runs]
    print(f"bursts of {args.events}: {[r.row() for r in runs]}")
    print(
        f"median {statistics.median(rates):.1f} events/s; no-op tasks {baseline:.1f}/s; "
        f"ratio {statistics.median(rates) / baseline:.2f}"
    )
    print(f"steady 20/s: {steady.row()}, p99 {percentile(steady.latencies, 0.99) * 1000:.1f} ms")
    print(table(["step (last burst)", "median ms", "p99 ms"], _rows(runs[-1].steps)))
    return 0


def _rows(steps: list[tuple[str, list[float]]]) -> list[list[Any]]:
    return [[n, summary(v)["median_ms"], summary(v)["p99_ms"]] for n, v in steps if v]


if __name__ == "__main__":
    sys.exit(main())
