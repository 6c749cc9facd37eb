"""Refund events per second through the bridge and two workers, and produce-to-applied latency.

    make stack-up && .venv/bin/python -m bench.refund_throughput [--events 1000] [--runs 3]

Starts one refund bridge and two worker nodes (concurrency 1 each, as ``make
dev``) on a private database, broker prefix and topic prefix; the servers must
be running.  Each run produces ``--events`` product-refund events (one unit of
0.01 each, spread over 50 payments) and waits until every one is credited.
Latency is the credit's ledger time minus the Kafka record's CreateTime.
Baseline, in the same run: how many no-op ``system.ping`` tasks the same two
workers complete per second.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bson import ObjectId
from kafka import KafkaProducer

from bench.common import drop_run, percentile, run_env, worker_command

ROOT = Path(__file__).resolve().parent.parent
RUN = f"rbench{uuid.uuid4().hex[:8]}"
ENV = run_env(RUN)
PAYMENTS = 50


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def seed(units: int) -> list[str]:
    """Charged payments of one product each, with ``units`` refundable units of 0.01."""
    from shared.models import Card, Payment, PaymentProduct, PaymentState

    ids = []
    for _ in range(PAYMENTS):
        card = Card(
            cardUserId=str(ObjectId()),
            cardHolderName="Bench",
            fingerprint=uuid.uuid4().hex,
            last4="4242",
            brand="visa",
            expireDate="12/39",
            money=Decimal("0.00"),
        )
        card.save()
        payment = Payment(
            userId=card.cardUserId,
            checkoutId=str(ObjectId()),
            creditCardId=str(card.id),
            products=[PaymentProduct(productId="u", quantity=units, price=Decimal("0.01"))],
            totalPrice=Decimal(units) / 100,
            cardHolderName="Bench",
            cardNumber="************4242",
            expireDate="12/39",
            state=PaymentState.CHARGED,
            paymentStatus=True,
            jobId=str(ObjectId()),
        )
        payment.save()
        ids.append(str(payment.id))
    return ids


def one_run(settings: Any, payment_ids: list[str], events: int, pace: float = 0.0) -> dict[str, float]:
    """Produce ``events`` (all at once, or one every ``pace`` seconds) and wait for every credit."""
    from shared.models import LedgerEntry

    producer = KafkaProducer(**settings.kafka_client_options, linger_ms=5)
    topic = settings.topic(settings.topic_product_refunded)
    started = LedgerEntry.objects.count()
    t0 = time.time()
    futures = []
    for i in range(events):
        value = {
            "productId": "u",
            "price": 0.01,
            "cardNumber": "************4242",
            "paymentId": payment_ids[i % len(payment_ids)],
        }
        futures.append(producer.send(topic, json.dumps(value, separators=(",", ":")).encode()))
        if pace:
            producer.flush()
            time.sleep(pace)
    produced = {f"{topic}:{m.partition}:{m.offset}": m.timestamp / 1000 for m in (f.get(30) for f in futures)}
    producer.close()
    while LedgerEntry.objects.count() - started < events:
        time.sleep(0.05)
    wall = time.time() - t0
    latencies = []
    for entry in LedgerEntry.objects(id__in=[f"credit:{eid}" for eid in produced]).only("id", "at"):
        applied = (
            entry.at.replace(tzinfo=UTC).timestamp() if entry.at.tzinfo is None else entry.at.timestamp()
        )
        latencies.append(applied - produced[entry.id.removeprefix("credit:")])
    return {
        "events_per_s": events / wall,
        "latency_median_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
    }


def ping_rate(celery: Any, count: int) -> float:
    t0 = time.time()
    results = [celery.send_task("system.ping") for _ in range(count)]
    for result in results:
        result.get(timeout=60)
    return count / (time.time() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(ENV)
    from shared import db
    from shared.kafka import ensure_topics
    from shared.settings import load_settings
    from workers.app import create_celery

    settings = load_settings()
    db.connect(settings)
    ensure_topics(settings)
    celery = create_celery(settings)
    logging.getLogger().setLevel(logging.WARNING)
    payment_ids = seed(units=args.events * args.runs + 200)
    procs = [start([sys.executable, "-m", "workers.bridge"])]
    for node in ("r1", "r2"):
        procs.append(start(worker_command(f"{node}-{RUN}", "refunds,maintenance")))
    try:
        deadline = time.time() + 60
        while len(celery.control.ping(timeout=1)) < 2 and time.time() < deadline:
            time.sleep(0.3)
        time.sleep(3)  # the bridge joins its group
        ping_rate(celery, 50)  # warm-up
        baseline = ping_rate(celery, args.events)
        runs = [one_run(settings, payment_ids, args.events) for _ in range(args.runs)]
        # Latency without a backlog: a steady 20 events/s, well under capacity.
        paced = one_run(settings, payment_ids, 200, pace=0.05)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        drop_run(RUN, ENV, settings)
    rates = [r["events_per_s"] for r in runs]
    report = {
        "events_per_run": args.events,
        "runs": [{k: round(v, 1) for k, v in r.items()} for r in runs],
        "median_events_per_s": round(statistics.median(rates), 1),
        "median_latency_median_ms": round(statistics.median(r["latency_median_ms"] for r in runs), 1),
        "median_latency_p99_ms": round(statistics.median(r["latency_p99_ms"] for r in runs), 1),
        "paced_20_per_s": {k: round(v, 1) for k, v in paced.items() if k != "events_per_s"},
        "baseline_ping_tasks_per_s": round(baseline, 1),
        "ratio_refunds_to_ping": round(statistics.median(rates) / baseline, 2),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
