"""Charges through the public API, against no-op tasks of the same workers.

    make stack-up && .venv/bin/python -m bench.charge_latency [--charges 200] [--concurrency 8]

Starts its own API (gunicorn) and two worker nodes (as ``make dev``) on a
private database and broker prefix, with the checkout stand-in in-process;
the servers (Redis, MongoDB-protocol server, Kafka) must be running.

A charge is timed from the client's ``POST /pay`` to the ``task-succeeded``
event of its ``payments.charge`` task; the baseline, a no-op
``system.ping``, from its send to its own ``task-succeeded`` event: both
ends are seen the same way (bench/stack.py says why).  Every job is checked
to have succeeded afterwards.  ``make bench`` (``python -m bench``) runs this
and the rest; this module alone prints the charge figures.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import urllib3
from bson import ObjectId
from urllib3.util.retry import Retry

from bench.common import run_env, summary, table
from bench.stack import Stack, TaskTimes


def card_body() -> dict[str, Any]:
    from shared.pan import luhn_valid

    body = "4" + "".join(random.choice("0123456789") for _ in range(14))  # noqa: S311 - test data
    pan = next(body + c for c in "0123456789" if luhn_valid(body + c))
    return {
        "cardHolderName": "Bench",
        "cardNumber": pan,
        "expireDate": "12/39",
        "cvv": "123",
        "money": 100000,
    }


#: How often a client sends a POST again that was answered 503 (the database
#: did not answer in time, on a machine loaded by others), half a second apart.
RETRIES_503 = 5


@dataclass
class Charge:
    """One charge as the client and the task events saw it (time.time() seconds)."""

    posted: float
    accepted: float  # the 202 arrived
    task: TaskTimes

    @property
    def latency(self) -> float:
        assert self.task.seen is not None
        return self.task.seen - self.posted


@dataclass
class Client:
    http: urllib3.HTTPConnectionPool
    headers: dict[str, str]
    card_id: str
    user: str


class Charger:
    """Clients with a card each, charging through the stack's API."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.clients: list[Client] = []
        self.job_ids: list[str] = []
        self.count = 0
        self.retried = 0  # POSTs answered 503 and sent again (reported beside the figures)
        self._lock = threading.Lock()

    def client(self, i: int) -> Client:
        from devstack.tokens import make_token

        while len(self.clients) <= i:
            user = str(ObjectId())
            token = make_token(
                user, ["default"], 60 * 60, secret=self.stack.settings.jwt_secret.get_secret_value()
            )
            headers = {"Authorization": f"Bearer {token}"}
            # One kept-alive connection per client, on urllib3 itself: a lean load
            # generator (requests cost the bench twice the CPU per charge, taken
            # from the service on the same two cores).  A kept-alive connection
            # the API closed while this client waited for its charge fails at its
            # next use before the request is read: open a new one (a request
            # that was processed twice would fail the check).
            http = urllib3.HTTPConnectionPool(
                "127.0.0.1",
                self.stack.port,
                maxsize=1,
                block=True,
                retries=Retry(total=2, connect=2, read=2, status=0, allowed_methods=None),
            )
            job = http.request(
                "POST",
                f"{self.stack.path}/add",
                json=card_body(),
                headers={**headers, "Prefer": "wait=30"},
                timeout=40,
            ).json()
            if job.get("status") != "succeeded":
                raise RuntimeError(f"card not added: {job}")
            self.clients.append(Client(http, headers, job["result"]["id"], user))
        return self.clients[i]

    def one(self, client: Client) -> Charge:
        checkout = self.stack.store.put(
            {"userId": client.user, "totalPrice": 1.25, "isActive": True, "products": []}
        )
        posted = time.time()
        for attempt in range(RETRIES_503 + 1):
            response = client.http.request(
                "POST",
                f"{self.stack.path}/pay/{checkout['_id']}?cardId={client.card_id}",
                headers=client.headers,
                timeout=30,
            )
            if response.status != 503 or attempt == RETRIES_503:
                break
            with self._lock:
                self.retried += 1  # the database did not answer in time: a client tries again
            time.sleep(0.5)
        accepted = time.time()
        if response.status != 202:
            raise RuntimeError(f"pay answered {response.status}: {response.data.decode(errors='replace')}")
        job_id = response.json()["id"]
        task = self.stack.events.wait(job_id, timeout=300)
        with self._lock:
            self.job_ids.append(job_id)
            self.count += 1
        return Charge(posted, accepted, task)

    def run(self, count: int, concurrency: int) -> tuple[list[Charge], float]:
        """``count`` charges from ``concurrency`` clients at once; the charges and the wall time."""
        clients = [self.client(i) for i in range(concurrency)]
        per_client = [
            count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)
        ]
        t0 = time.time()
        with ThreadPoolExecutor(concurrency) as pool:
            batches = pool.map(
                lambda i: [self.one(clients[i]) for _ in range(per_client[i])], range(concurrency)
            )
            done = [c for batch in batches for c in batch]
        wall = max(c.task.seen or 0 for c in done) - t0
        self.check()
        return done, wall

    def check(self) -> None:
        """Every job charged so far succeeded (a failed charge would make a fast one)."""
        from shared.models import Job

        ids, self.job_ids = self.job_ids, []
        ended = Job.objects(id__in=ids, status="succeeded").count()
        if ended != len(ids):
            raise RuntimeError(f"{len(ids) - ended} of {len(ids)} charges did not succeed")


def ping_latency(stack: Stack, count: int) -> list[float]:
    """One no-op task at a time: send to its ``task-succeeded`` event."""
    times = []
    for _ in range(count):
        t0 = time.time()
        task = stack.events.wait(stack.celery.send_task("system.ping").id, timeout=30)
        assert task.seen is not None
        times.append(task.seen - t0)
    return times


def task_rate(send: Callable[[], str], wait: Callable[[list[str]], list[TaskTimes]], count: int) -> float:
    """Tasks per second: ``count`` sent at once, until the last one's end is seen."""
    t0 = time.time()
    ids = [send() for _ in range(count)]
    ends = wait(ids)
    return count / (max(t.seen or 0 for t in ends) - t0)


def ping_rate(stack: Stack, count: int) -> float:
    return task_rate(
        lambda: stack.celery.send_task("system.ping").id,
        lambda ids: stack.events.wait_all(ids, timeout=120),
        count,
    )


def steps(charges: list[Charge]) -> list[tuple[str, list[float]]]:
    """The steps of distributed charges, from the client's clock and the task events."""

    def of(f: Callable[[Charge], float | None]) -> list[float]:
        return [v for v in (f(c) for c in charges) if v is not None]

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return [
        ("API: POST /pay to 202", of(lambda c: c.accepted - c.posted)),
        ("queue: task sent to received by a node", of(lambda c: diff(c.task.received, c.task.sent))),
        ("queue: received to started in the pool", of(lambda c: diff(c.task.started, c.task.received))),
        ("task run (payments.charge)", of(lambda c: c.task.runtime)),
        ("end event to the client", of(lambda c: diff(c.task.seen, c.task.ended))),
        ("total: POST to end seen", of(lambda c: c.latency)),
    ]


def steps_table(rows: list[tuple[str, list[float]]]) -> str:
    out = []
    for name, values in rows:
        if values:
            s = summary(values)
            out.append([name, s["median_ms"], s["p99_ms"]])
    return table(["step", "median ms", "p99 ms"], out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--charges", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    run = f"bench{uuid.uuid4().hex[:8]}"
    stack = Stack(run, run_env(run))
    try:
        stack.workers(2)
        charger = Charger(stack)
        ping_latency(stack, 20)
        charger.run(20, 1)
        baseline = ping_latency(stack, args.charges)
        alone, _ = charger.run(args.charges, 1)
        rate = ping_rate(stack, args.charges * 2)
        loaded, wall = charger.run(args.charges, args.concurrency)
    finally:
        stack.close()
    print(f"no-op system.ping, one at a time: {summary(baseline)}; {rate:.1f} tasks/s at once")
    print(f"charge, one client: {summary([c.latency for c in alone])}")
    print(
        f"charge, {args.concurrency} clients: {summary([c.latency for c in loaded])}, "
        f"{len(loaded) / wall:.1f} charges/s ({len(loaded) / wall / rate:.2f} x no-op tasks/s)"
    )
    print(steps_table(steps(loaded)))
    ratio = statistics.median(c.latency for c in alone) / statistics.median(baseline)
    print(f"median charge alone / median ping: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
