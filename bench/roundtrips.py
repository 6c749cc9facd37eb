"""The MongoDB round trips and the steps of one charge, one refund and one job poll, in this process.

Runs the service's own code in the benchmark's process, so that a pymongo
``CommandListener`` sees every command (name, collection, duration) and
wrappers time the other steps (the checkout service's HTTP call, the Kafka
send and its acknowledgement):

- **charge, API**: ``POST /pay/<checkout>`` through the Flask app (test
  client; the task is recorded instead of sent);
- **charge, task**: ``payments.charge`` run eagerly on that job;
- **job poll**: ``GET /jobs/<id>`` through the Flask app;
- **refund, bridge**: a real Kafka record handed over as the bridge hands
  over a polled batch (``RefundBridge.prepare`` and ``hand_over``; the task
  recorded instead of sent);
- **refund, task**: ``refunds.apply_batch`` run eagerly on it.

The step breakdown is the median (and p99) over ``count`` repetitions of
each step, in the order the code runs them; "python and the rest" is the
total less the timed steps.  Last comes the CPU time of the thread that ran
the step (``time.thread_time``; the checkout stand-in's server thread and
the Kafka client's sender thread are not in it): the figure to compare two
versions of the code by, since it hardly moves with the machine's other
load, where the wall times here and the throughput of the real processes do.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bson import ObjectId

from bench.common import Command, CommandCounter, by_command, percentile, table

COUNTER = CommandCounter()
#: Each charge pays 100 units of 0.01, so that one payment can take the refunds.
UNITS: dict[str, Any] = {"productId": "u", "quantity": 100, "price": 0.01, "sellerId": "s"}
#: Refund events of one payment in the batch measured as a burst's poll hands them over.
REFUND_BATCH = 20


class Recorder:
    """Stands in for the Celery app as a task sender: keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], dict[str, Any]]] = []

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **_options: Any) -> Any:
        self.sent.append((name, list(args or []), dict(kwargs or {})))
        return _Sent(uuid.uuid4().hex)


@dataclass
class _Sent:
    id: str


@contextlib.contextmanager
def instrumented(counter: CommandCounter) -> Iterator[None]:
    """Time every HTTP exchange (urllib3) and Kafka send and acknowledgement of this process."""
    from kafka import KafkaProducer
    from kafka.producer.future import FutureRecordMetadata
    from urllib3.connectionpool import HTTPConnectionPool

    originals = [(HTTPConnectionPool, "urlopen"), (KafkaProducer, "send"), (FutureRecordMetadata, "get")]
    saved = [getattr(cls, name) for cls, name in originals]
    http_send, kafka_send, kafka_get = saved

    def timed_http(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        with counter.span("http", f"HTTP {method} checkout"):
            return http_send(self, method, url, *args, **kwargs)

    def timed_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        with counter.span("kafka", "kafka send"):
            return kafka_send(self, *args, **kwargs)

    def timed_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        with counter.span("kafka", "kafka ack wait"):
            return kafka_get(self, *args, **kwargs)

    for (cls, name), timed in zip(originals, (timed_http, timed_send, timed_get), strict=True):
        setattr(cls, name, timed)
    try:
        yield
    finally:
        for (cls, name), original in zip(originals, saved, strict=True):
            setattr(cls, name, original)


@dataclass
class Step:
    """One thing measured ``n`` times: total durations and the steps of each run."""

    name: str
    totals: list[float]
    runs: list[list[Command]]
    #: Events one run stands for (a batch): round trips are shown per event too.
    per: int = 1
    #: CPU seconds of the measuring thread in each run (the process's other
    #: threads, such as the checkout stand-in's server, are not counted).
    cpu: list[float] = field(default_factory=list)

    def add(self, run: Run) -> None:
        self.totals.append(run.seconds)
        self.runs.append(run.commands)
        self.cpu.append(run.cpu)

    def counts(self) -> dict[str, int]:
        return dict(sorted(by_command(self.runs[-1]).items()))

    def round_trips(self) -> int:
        return sum(1 for c in self.runs[-1] if c.kind == "mongo")

    def breakdown(self) -> list[tuple[str, float, float]]:
        """(step, median s, p99 s), in the order of the last run; the rest last."""
        order = [c.label for c in sorted(self.runs[-1], key=lambda c: c.end)]
        same = all([c.label for c in sorted(r, key=lambda c: c.end)] == order for r in self.runs)
        rows: list[tuple[str, float, float]] = []
        if same and self.per == 1:
            for i, label in enumerate(order):
                values = [sorted(r, key=lambda c: c.end)[i].seconds for r in self.runs]
                rows.append((f"{i + 1:>2} {label}", statistics.median(values), percentile(values, 0.99)))
        else:  # the path varied between runs (a retry): sum per label instead
            for label in sorted(set(order)):
                values = [sum(c.seconds for c in r if c.label == label) for r in self.runs]
                rows.append((f"   {label} (all)", statistics.median(values), percentile(values, 0.99)))
        rest = [t - sum(c.seconds for c in r) for t, r in zip(self.totals, self.runs, strict=True)]
        rows.append(("   python and the rest", statistics.median(rest), percentile(rest, 0.99)))
        rows.append(("   total", statistics.median(self.totals), percentile(self.totals, 0.99)))
        if self.cpu:
            rows.append(
                (
                    "   CPU of the service's code (this thread)",
                    statistics.median(self.cpu),
                    percentile(self.cpu, 0.99),
                )
            )
        return rows


@dataclass
class Run:
    """One run of a step: its wall time, its thread's CPU time and its commands."""

    seconds: float
    cpu: float
    commands: list[Command]


def _timed(work: Callable[[], Any]) -> tuple[Any, Run]:
    t0, c0 = time.perf_counter(), time.thread_time()
    result, commands = COUNTER.record(work)
    return result, Run(time.perf_counter() - t0, time.thread_time() - c0, commands)


class InProcess:
    """The service's API (Flask test client) and tasks (run eagerly) in this process."""

    def __init__(self, stack: Any) -> None:
        from bench.charge_latency import card_body
        from devstack.tokens import make_token
        from web import create_app

        self.stack, self.settings, self.celery = stack, stack.settings, stack.celery
        self.celery.loader.import_default_modules()
        self.sender = Recorder()
        self.client = create_app(self.settings, celery=self.sender).test_client()
        self.owner = str(ObjectId())
        token = make_token(self.owner, ["default"], 60, secret=self.settings.jwt_secret.get_secret_value())
        self.headers = {"Authorization": f"Bearer {token}"}
        job_id = self.post("/api/payment/add", card_body())
        self.run_sent()
        self.card_id = self.get(f"/api/payment/jobs/{job_id}")["result"]["id"]

    def post(self, url: str, body: dict[str, Any] | None = None) -> str:
        response = self.client.post(url, json=body, headers=self.headers)
        if response.status_code != 202:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.get_json()}")
        return str(response.get_json()["id"])

    def get(self, url: str) -> dict[str, Any]:
        response = self.client.get(url, headers=self.headers)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.get_json()}")
        body: dict[str, Any] = response.get_json()
        return body

    def run_sent(self) -> None:
        """Run the task the last request would have sent, here and now."""
        name, args, kwargs = self.sender.sent.pop()
        result = self.celery.tasks[name].apply(args=args, kwargs=kwargs)
        if not result.successful():
            raise RuntimeError(f"{name} failed: {result.result!r}")

    def charges(self, count: int) -> dict[str, Step]:
        steps = {name: Step(name, [], []) for name in ("charge API", "charge task", "job poll")}
        for i in range(count + 1):  # the first warms up (indexes, connections)
            checkout = self.stack.store.put(
                {"userId": self.owner, "totalPrice": 1.0, "isActive": True, "products": [UNITS]}
            )
            url = f"/api/payment/pay/{checkout['_id']}?cardId={self.card_id}"
            job_id, api = _timed(partial(self.post, url))
            _, task = _timed(self.run_sent)
            job, poll = _timed(partial(self.get, f"/api/payment/jobs/{job_id}"))
            if job["status"] != "succeeded":
                raise RuntimeError(f"charge did not succeed: {job}")
            if i:
                steps["charge API"].add(api)
                steps["charge task"].add(task)
                steps["job poll"].add(poll)
        return steps

    def refunds(self, count: int) -> dict[str, Step]:
        """Refunds of one unit each of a payment charged by :meth:`charges`."""
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        from shared.models import Payment
        from workers.bridge import RefundBridge

        if count + 1 + REFUND_BATCH > UNITS["quantity"]:
            raise ValueError(f"at most {UNITS['quantity'] - 1 - REFUND_BATCH} repetitions")
        payment = Payment.objects(userId=self.owner, state="charged").first()
        settings = self.settings
        topic = settings.topic(settings.topic_product_refunded)
        producer = KafkaProducer(**settings.kafka_client_options)
        consumer = KafkaConsumer(**settings.kafka_client_options, enable_auto_commit=False)
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_end(partition)
        consumer.position(partition)  # resolved now, before the first record is produced
        bridge = RefundBridge(settings, self.sender, consumer=consumer)
        value = b'{"productId":"u","price":0.01,"cardNumber":"************4242","paymentId":"%s"}'
        steps = {name: Step(name, [], []) for name in ("refund bridge", "refund task")}
        batch = f"refund task, batch of {REFUND_BATCH} (per event)"
        steps[batch] = Step(batch, [], [], per=REFUND_BATCH)
        payload = value % str(payment.id).encode()
        try:
            for i in range(count + 1):
                records = _produce(producer, consumer, topic, partition, payload, count=1)
                _, handed = _timed(partial(_hand_over, bridge, records))
                _, task = _timed(self.run_sent)
                if i:
                    steps["refund bridge"].add(handed)
                    steps["refund task"].add(task)
            # Several records in one poll, as a burst arrives: one batch task.
            records = _produce(producer, consumer, topic, partition, payload, count=REFUND_BATCH)
            _hand_over(bridge, records)
            _, task = _timed(self.run_sent)
            steps[batch].add(task)
        finally:
            producer.close()
            consumer.close()
        return steps


def _produce(
    producer: Any, consumer: Any, topic: str, partition: Any, value: bytes, *, count: int
) -> list[Any]:
    """Produce ``count`` records to partition 0 and poll them back (all of them)."""
    for future in [producer.send(topic, value, partition=0) for _ in range(count)]:
        future.get(timeout=30)
    records: list[Any] = []
    deadline = time.monotonic() + 30
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(timeout_ms=1000).get(partition, []))
    if len(records) != count:
        raise RuntimeError(f"expected {count} refund records, got {len(records)}")
    return records


def _hand_over(bridge: Any, records: list[Any]) -> None:
    """What the bridge does with a polled batch of records (without committing the offsets)."""
    handed = []
    for record in records:
        event = bridge.prepare(record)
        if event is None:
            raise RuntimeError("the refund record was set aside")
        handed.append((record.topic, event))
    bridge.hand_over(handed)


def measure(stack: Any, count: int) -> dict[str, Step]:
    """Run ``count`` charges, job polls and refunds in this process; their steps."""
    here = InProcess(stack)
    with instrumented(COUNTER):
        return {**here.charges(count), **here.refunds(count)}


def report(steps: dict[str, Step]) -> str:
    lines = ["MongoDB round trips (by command and collection):"]
    rows = []
    for step in steps.values():
        counts = ", ".join(f"{k} x{v}" for k, v in step.counts().items())
        trips: Any = step.round_trips()
        if step.per > 1:
            trips = f"{trips / step.per:.2f} ({trips} for {step.per})"
        rows.append([step.name, trips, counts])
    lines.append(table(["what", "round trips", "commands"], rows))
    lines.append("")
    lines.append(f"Steps, in this process (median and p99 of {len(next(iter(steps.values())).totals)}, ms):")
    for step in steps.values():
        lines.append(f"  {step.name}:")
        for label, median, p99 in step.breakdown():
            lines.append(f"    {label:<44} {median * 1000:8.2f} {p99 * 1000:8.2f}")
    return "\n".join(lines)
