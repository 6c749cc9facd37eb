"""Kafka helpers of the worker tests: produce like the order service, read what we publish."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from shared.settings import Settings
from tests.conftest import ROOT


def order_service_bytes(value: dict[str, Any]) -> bytes:
    """The value as kafkajs sends it: JSON.stringify, no spaces."""
    return json.dumps(value, separators=(",", ":")).encode()


def kcat_produce(settings: Settings, topic: str, values: list[dict[str, Any]]) -> list[bytes]:
    """Produce with kcat (librdkafka: not our client): one message a value, no key, no headers."""
    lines = [order_service_bytes(v) for v in values]
    subprocess.run(
        ["kcat", "-P", "-b", ",".join(settings.kafka_bootstrap), "-t", settings.topic(topic)],
        input=b"\n".join(lines) + b"\n",
        check=True,
        timeout=60,
    )
    return lines


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


@contextmanager
def bridge_process(
    env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A refund bridge process of this test run (stopped with SIGKILL if still running).

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
                proc.kill()
                proc.wait()


def handed_over(log: Path) -> list[str]:
    """The event ids a bridge logged as handed over, in order."""
    ids = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == "refund event handed over":
                ids.append(entry["event_id"])
    return ids
