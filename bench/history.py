"""Does a card's cost grow with its history?  Charge, refund and GET /get on old cards.

    make bench-history [ARGS="--ops 60 --sizes 0,10000,100000"]

Seeds cards with 0, 10,000 and 100,000 earlier payments (each charged, with
its ledger entry; one in ten refunded, with its credit) through the
service's own storage layer, then measures, on each card in turn (one
operation per card per round, so that drift of the shared machine falls on
all of them alike):

- **charge**: the worker's whole job, ``jobs.run`` of ``payments.charge``
  (checkout fetched over HTTP from the in-process stand-in, card debited,
  ledger, payment charged, accepted event acknowledged by Kafka);
- **refund**: ``refunds.refund_product`` of one of those payments (recorded,
  card credited, ledger, refund-applied event acknowledged by Kafka);
- **GET /get**: the card read through the Flask app (token check included);
- **GET /find**: one of the card's payments read the same way.

It runs in this process on a private database and topics of the running
servers, and prints the median and p99 of each, and their ratios to the card
without history.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

from bson import ObjectId
from pymongo.errors import AutoReconnect, BulkWriteError
from werkzeug.serving import make_server

from bench.common import drop_run, percentile, run_env
from devstack.checkout_standin import CheckoutStore, create_standin
from devstack.tokens import make_token

RUN = f"benchhist{uuid.uuid4().hex[:8]}"
ENV = run_env(RUN)
PRICE = Decimal("1.25")
SEED_BATCH = 2000
DUPLICATE_KEY = 11000


class Bench:
    """The service's storage layer, the checkout stand-in and the API app, in this process."""

    def __init__(self) -> None:
        self.store = CheckoutStore()
        standin = make_server("127.0.0.1", 0, create_standin(self.store), threaded=True)
        threading.Thread(target=standin.serve_forever, daemon=True).start()
        self.standin = standin
        os.environ.update({**ENV, "CHECKOUT_SERVICE_URL": f"http://127.0.0.1:{standin.server_port}"})
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        from shared import db
        from shared.kafka import ensure_topics
        from shared.settings import load_settings
        from web import create_app
        from workers.app import create_celery

        self.settings = load_settings()
        db.connect(self.settings)
        ensure_topics(self.settings, partitions=1)
        self.celery = create_celery(self.settings)
        self.web = create_app(self.settings, self.celery).test_client()
        self.user = str(ObjectId())
        self.token = make_token(self.user, ["default"], 120, secret=ENV["JWT_SEC"])
        self.paid: dict[str, list[str]] = {}
        self.last: dict[str, str] = {}

    def close(self) -> None:
        self.standin.shutdown()
        drop_run(RUN, ENV, self.settings)

    # -- seeding -----------------------------------------------------------

    def card(self, history: int) -> str:
        """A card of this user with ``history`` earlier payments."""
        from shared.models import Card

        card = Card(
            id=ObjectId(),
            cardUserId=self.user,
            cardHolderName="Bench History",
            fingerprint=f"bench:{uuid.uuid4().hex}",
            last4="4242",
            brand="visa",
            expireDate="12/39",
            money=Decimal("1000000.00"),
        )
        card.save(force_insert=True)
        card_id = str(card.id)
        for start in range(0, history, SEED_BATCH):
            self._seed(card_id, min(SEED_BATCH, history - start))
        self.paid[card_id] = []
        return card_id

    def _seed(self, card_id: str, count: int) -> None:
        """``count`` charged payments and their ledger entries, one bulk insert per collection.

        One payment (and one refunded payment) and their ledger entries are
        built by the models and encoded by them (``to_mongo``); the copies
        differ only in their ids, their checkout, their job and their token,
        so building 100,000 documents one by one (about 3 ms each) is not
        what the seeding costs.  The two collections are written at once.
        """
        from shared.models import LedgerEntry, Payment, PaymentProduct, PaymentState, PaymentToken, Refund
        from shared.models.base import utcnow

        def template(refunded: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            pid = ObjectId()
            refunds = []
            entries = [
                LedgerEntry(id=f"debit:{pid}", cardId=card_id, kind="debit", amount=PRICE, paymentId=str(pid))
            ]
            if refunded:
                event_id = f"{RUN}.history:template:0:0"
                refunds = [
                    Refund(
                        eventId=event_id,
                        kind="order",
                        amount=PRICE,
                        at=utcnow(),
                        credited=True,
                        published=True,
                    )
                ]
                entries.append(
                    LedgerEntry(
                        id=f"credit:{event_id}",
                        cardId=card_id,
                        kind="credit",
                        amount=PRICE,
                        paymentId=str(pid),
                    )
                )
            payment = Payment(
                id=pid,
                userId=self.user,
                checkoutId=str(ObjectId()),
                creditCardId=card_id,
                products=[
                    PaymentProduct(productId="p", quantity=1, price=PRICE, refundedQuantity=int(refunded))
                ],
                totalPrice=PRICE,
                refunded=refunded,
                refundedAmount=PRICE if refunded else Decimal("0.00"),
                refunds=refunds,
                cardHolderName="Bench History",
                cardNumber="************0000",
                expireDate="12/39",
                paymentStatus=True,
                state=PaymentState.CHARGED,
                jobId=str(ObjectId()),
                acceptedEventPublished=True,
            )
            payment.validate()
            for entry in entries:
                entry.validate()
            return payment.to_mongo().to_dict(), [e.to_mongo().to_dict() for e in entries]

        templates = {refunded: template(refunded) for refunded in (False, True)}
        payments, entries = [], []
        for i in range(count):
            refunded = i % 10 == 0
            raw, raw_entries = templates[refunded]
            pid, job_id = ObjectId(), str(ObjectId())
            doc = {**raw, "_id": pid, "checkoutId": str(ObjectId()), "jobId": job_id}
            token = PaymentToken(
                str(pid),
                0,
                PaymentState.CHARGED,
                job_id,
                int(refunded),
                PRICE if refunded else Decimal("0.00"),
                (int(refunded),),
            )
            doc["token"] = token.dump()
            entries.append({**raw_entries[0], "_id": f"debit:{pid}", "paymentId": str(pid)})
            if refunded:
                event_id = f"{RUN}.history:{uuid.uuid4()}:0:{i}"
                doc["refunds"] = [{**raw["refunds"][0], "eventId": event_id}]
                entries.append({**raw_entries[1], "_id": f"credit:{event_id}", "paymentId": str(pid)})
            payments.append(doc)
        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(_insert_all, Payment._get_collection(), payments),
                pool.submit(_insert_all, LedgerEntry._get_collection(), entries),
            ]
            for future in done:
                future.result()

    # -- the measured operations -------------------------------------------

    def charge(self, card_id: str) -> float:
        from shared.models import Job, status_key
        from shared.services import jobs, payments

        checkout = self.store.put(
            {
                "userId": self.user,
                "totalPrice": float(PRICE),
                "isActive": True,
                "products": [{"productId": "p", "quantity": 1, "price": float(PRICE), "sellerId": "s"}],
            }
        )
        job_id = ObjectId()
        job = Job(
            id=job_id,
            type="payment.pay",
            ownerId=self.user,
            params={"checkoutId": checkout["_id"], "cardId": card_id},
            requestHash="bench",
            statusKey=status_key(job_id, "queued"),
        )
        job.save(force_insert=True)
        t0 = time.perf_counter()
        jobs.run(
            str(job.id),
            lambda j: payments.charge(self.settings, j),
            retention=timedelta(days=self.settings.job_retention_days),
        )
        elapsed = time.perf_counter() - t0
        job.reload()
        if job.status != "succeeded":
            raise RuntimeError(f"charge failed: {job.error}")
        self.paid[card_id].append(str(job.resourceId))
        self.last[card_id] = str(job.resourceId)
        return elapsed

    def refund(self, card_id: str) -> float:
        from shared.services import refunds

        payment_id = self.paid[card_id].pop()
        event_id = f"{self.settings.topic(self.settings.topic_product_refunded)}:{uuid.uuid4()}:0:1"
        t0 = time.perf_counter()
        refunds.refund_product(self.settings, event_id, payment_id, product_id="p", price=PRICE)
        return time.perf_counter() - t0

    def find(self, card_id: str) -> float:
        t0 = time.perf_counter()
        response = self.web.get(
            f"/api/payment/find/{self.last[card_id]}", headers={"Authorization": f"Bearer {self.token}"}
        )
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"GET /find answered {response.status_code}")
        return elapsed

    def read(self, card_id: str) -> float:
        t0 = time.perf_counter()
        response = self.web.get(
            f"/api/payment/get/{card_id}", headers={"Authorization": f"Bearer {self.token}"}
        )
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"GET /get answered {response.status_code}")
        return elapsed


def _insert_all(collection: Any, documents: list[dict[str, Any]], attempts: int = 5) -> None:
    """Insert every document; a batch cut off by a busy server is sent again, what arrived skipped.

    On a loaded shared machine the client's monitor can time out while the
    server is busy with a large batch, and the client then cancels the batch.
    """
    for attempt in range(attempts):
        try:
            collection.insert_many(documents, ordered=False)
            return
        except BulkWriteError as exc:
            if any(error.get("code") != DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise
            return  # the rest arrived; these had arrived before the cut
        except AutoReconnect:
            if attempt == attempts - 1:
                raise
            time.sleep(2)


def rounds(cards: dict[int, str], op: Callable[[str], float], count: int) -> dict[int, list[float]]:
    """``count`` rounds of one operation on every card, the cards' order turning each round."""
    times: dict[int, list[float]] = {size: [] for size in cards}
    order = list(cards)
    for i in range(count):
        for size in order[i % len(order) :] + order[: i % len(order)]:
            times[size].append(op(cards[size]))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=60, help="measured operations of each kind per card")
    parser.add_argument("--sizes", default="0,10000,100000", help="earlier payments on each card")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # A stopped run (Ctrl-C, timeout) still drops its database and topics.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench()
    report: dict[str, Any] = {"ops_per_card": args.ops}
    try:
        t0 = time.perf_counter()
        cards = {}
        for size in sizes:
            cards[size] = bench.card(size)
            print(
                f"card with {size:,} earlier payments seeded at {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
            )
        report["seed_seconds"] = round(time.perf_counter() - t0, 1)
        warm = 5
        rounds(cards, bench.charge, warm)
        rounds(cards, bench.refund, warm)
        rounds(cards, bench.read, warm)
        rounds(cards, bench.find, warm)
        measured = {
            "charge": rounds(cards, bench.charge, args.ops),
            "refund": rounds(cards, bench.refund, args.ops),
            "get": rounds(cards, bench.read, args.ops),
            "find": rounds(cards, bench.find, args.ops),
        }
    finally:
        bench.close()
    base = sizes[0]
    for name, by_size in measured.items():
        rows = {}
        for size, values in by_size.items():
            median, p99 = statistics.median(values), percentile(values, 0.99)
            base_median = statistics.median(by_size[base])
            base_p99 = percentile(by_size[base], 0.99)
            rows[str(size)] = {
                "median_ms": round(median * 1000, 2),
                "p99_ms": round(p99 * 1000, 2),
                "ratio_median": round(median / base_median, 2),
                "ratio_p99": round(p99 / base_p99, 2),
            }
        report[name] = rows
    print(json.dumps(report, indent=2))
    print(f"\n{'operation':<10}{'history':>9}{'median ms':>11}{'p99 ms':>9}{'x median':>10}{'x p99':>8}")
    for name in measured:
        for size, row in report[name].items():
            print(
                f"{name:<10}{int(size):>9,}{row['median_ms']:>11}{row['p99_ms']:>9}"
                f"{row['ratio_median']:>10}{row['ratio_p99']:>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
