"""Kafka helpers of the worker tests: produce like the order service, read what we publish."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from shared.settings import Settings
from tests.environment import ROOT


def order_service_bytes(value: dict[str, Any]) -> bytes:
    """The value as kafkajs sends it: JSON.stringify, no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def kcat_produce(
    settings: Settings, topic: str, values: list[dict[str, Any]] | list[Any], partition: int | None = None
) -> list[bytes]:
    """Produce with kcat (librdkafka: not our client): one message a value, no key, no headers.

    A value given as bytes is sent as it is (a malformed message).  With
    ``partition``, every message goes to that partition (in order, so a
    test knows their offsets on a topic of its own).
    """
    lines = [v if isinstance(v, bytes) else order_service_bytes(v) for v in values]
    where = [] if partition is None else ["-p", str(partition)]
    subprocess.run(
        ["kcat", "-P", "-b", ",".join(settings.kafka_bootstrap), "-t", settings.topic(topic), *where],
        input=b"\n".join(lines) + b"\n",
        check=True,
        timeout=60,
    )
    return lines


class SteadyProducer:
    """The order service sending while something happens to the bridge.

    ``start()`` sends ``events`` in batches of ``batch`` with ``pause``
    seconds between them until ``release()``, then the last ``hold_back`` of
    them.  Whatever the test does before it releases (a bridge joining,
    leaving, killed) happens while events keep coming, however long it takes
    on a loaded machine, and events still come after it; the number sent
    follows from that, not from a count fixed for the slowest machine.  If
    all but the last ``hold_back`` are sent before the release, the stream
    pauses until it.  ``finish()`` waits for the last ones and returns every
    event sent; ``stop()`` ends it (no more batches, the held-back ones sent
    if it is still waiting, the thread joined).
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        events: list[dict[str, Any]],
        *,
        batch: int,
        pause: float,
        hold_back: int,
    ) -> None:
        self._settings, self._topic, self._events = settings, topic, events
        self._batch, self._pause, self._split = batch, pause, len(events) - hold_back
        self._released, self._stopped = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._sent: list[dict[str, Any]] = []

    def _send(self, events: list[dict[str, Any]]) -> None:
        kcat_produce(self._settings, self._topic, events)
        self._sent.extend(events)

    def _produce(self) -> None:
        for start in range(0, self._split, self._batch):
            if self._stopped.is_set() or self._released.is_set():
                break
            self._send(self._events[start : min(start + self._batch, self._split)])
            self._released.wait(self._pause)
        if self._released.wait(timeout=120):
            self._send(self._events[self._split :])

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        self._released.set()

    def finish(self) -> list[dict[str, Any]]:
        """Every event sent, once the held-back ones are (call after ``release()``)."""
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the producer did not finish"
        return list(self._sent)

    def stop(self) -> None:
        self._stopped.set()
        self._released.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)


def read_topic(settings: Settings, topic: str, timeout_ms: int = 5000) -> list[Any]:
    """Every record of a topic from the beginning, until it stays quiet for ``timeout_ms``."""
    consumer = KafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=timeout_ms,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def read_to_end(settings: Settings, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every record of a topic up to the end offsets it has now (none if there is no such topic).

    Fails (AssertionError) if those records are not read within ``timeout_s``.

    Unlike :func:`read_topic`, it does not stop at the first quiet moment: on
    a loaded machine a new consumer's first fetch can come later than any
    quiet period, and a record already written would be missed.
    """
    name = settings.topic(topic)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not read to its end within {timeout_s}s")
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@contextmanager
def bridge_process(
    env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A refund bridge process of this test run, stopped at the end if still running.

    It is stopped with SIGTERM, so that it leaves its consumer group at once:
    a SIGKILLed member keeps its partitions until its session expires (45 s by
    default), and the next bridge of the group (the next test's) would wait
    that long.  SIGKILL only if it lingers; a test that means to kill a bridge
    does it itself.

    With ``log``, its log lines (JSON, one a line) are written to that file.
    """
    with contextlib.ExitStack() as stack:
        err: Any = subprocess.DEVNULL if log is None else stack.enter_context(log.open("ab"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.bridge"],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def handed_over(log: Path) -> list[str]:
    """The event ids a bridge logged as handed over, in order."""
    ids = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == "refund batch handed over":
                ids.extend(entry["event_ids"])
    return ids


def batches_handed_over(log: Path) -> list[int]:
    """How many events each batch a bridge logged as handed over held, in order."""
    return [
        entry["events"]
        for entry in (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        if entry.get("msg") == "refund batch handed over"
    ]


def event_ids(settings: Settings, count: int) -> list[str]:
    """The ids of the first ``count`` events on partition 0 of the product topic of ``settings``."""
    topic = settings.topic(settings.topic_product_refunded)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        [described] = admin.describe_topics([topic])
    finally:
        admin.close()
    return [f"{topic}:{described['topic_id']}:0:{offset}" for offset in range(count)]
