"""Publishing the service's Kafka events: acknowledged by the broker, or an error.

One idempotent ``acks=all`` producer per process (made after any fork, on
first use).  ``publish`` waits for the broker's acknowledgement, so a caller
marks an event sent only once it really is.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from shared import wire
from shared.errors import EventNotPublished
from shared.kafka import producer
from shared.settings import Settings

log = logging.getLogger(__name__)

_producers: dict[int, KafkaProducer] = {}
_producers_lock = threading.Lock()


def _producer(settings: Settings) -> KafkaProducer:
    pid = os.getpid()
    made = _producers.get(pid)
    if made is None:
        with _producers_lock:  # threads of one process share one producer (it is thread-safe)
            made = _producers.get(pid)
            if made is None:
                _producers.clear()  # a parent's producer is not ours to use after a fork
                # linger 0: every publish waits for its acknowledgement, so batching only delays it.
                made = _producers[pid] = producer(settings, max_block_ms=5000, linger_ms=0)
    return made


def encode(value: dict[str, Any]) -> bytes:
    """Compact JSON, amounts and timestamps in their one JSON form (``shared.wire``)."""
    return wire.dumps(value, separators=(",", ":")).encode()


def publish(
    settings: Settings,
    topic: str,
    value: dict[str, Any] | bytes,
    *,
    key: str | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    timeout: float = 15.0,
) -> None:
    """Send one event and wait for Kafka's acknowledgement; EventNotPublished if none came."""
    payload = value if isinstance(value, bytes) else encode(value)
    try:
        future = _producer(settings).send(
            settings.topic(topic), value=payload, key=key.encode() if key else None, headers=headers or []
        )
        future.get(timeout=timeout)
    except KafkaError as exc:
        raise EventNotPublished(f"{topic}: {type(exc).__name__}: {exc}") from exc


def publish_many(
    settings: Settings,
    topic: str,
    items: list[tuple[dict[str, Any], str | None]],
    *,
    timeout: float = 15.0,
) -> list[EventNotPublished | None]:
    """Send several events (value, key) at once, then wait for their acknowledgements together.

    One wait for the lot instead of one per event; the answer says, per
    item and in order, None once Kafka acknowledged it, else the error.  A
    send the producer refuses (no broker within its ``max_block_ms``) fails
    the items after it too, without trying them.
    """
    outcomes: list[EventNotPublished | None] = []
    futures: list[Any] = []
    refused: EventNotPublished | None = None
    for value, key in items:
        if refused is not None:  # Kafka is away: the others would each wait as long again
            futures.append(refused)
            continue
        try:
            futures.append(
                _producer(settings).send(
                    settings.topic(topic), value=encode(value), key=key.encode() if key else None
                )
            )
        except KafkaError as exc:
            refused = EventNotPublished(f"{topic}: {type(exc).__name__}: {exc}")
            futures.append(refused)
    deadline = time.monotonic() + timeout
    for future in futures:
        if isinstance(future, EventNotPublished):
            outcomes.append(future)
            continue
        try:
            future.get(timeout=max(0.001, deadline - time.monotonic()))
            outcomes.append(None)
        except KafkaError as exc:
            outcomes.append(EventNotPublished(f"{topic}: {type(exc).__name__}: {exc}"))
    return outcomes


def now() -> datetime:
    return datetime.now(UTC)


def dead_letter_headers(event_id: str, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Why the message was set aside, and where it came from.

    The event id is ``topic:topicId:partition:offset`` (``topic:partition:offset``
    for events handed over before topic ids were part of it); topic names
    cannot hold a colon.
    """
    topic, *rest = event_id.split(":")
    topic_id = rest[0] if len(rest) == 3 else None
    partition, offset = rest[-2:] if len(rest) >= 2 else ("", "")
    headers = [
        ("reason", reason.encode()),
        ("detail", detail[:1000].encode()),
        ("event-id", event_id.encode()),
        ("source-topic", topic.encode()),
        ("source-partition", partition.encode()),
        ("source-offset", offset.encode()),
    ]
    if topic_id is not None:
        headers.append(("source-topic-id", topic_id.encode()))
    return headers


def dead_letter(settings: Settings, value: bytes | None, event_id: str, reason: str, detail: str) -> None:
    """Set a refund message aside on the dead-letter topic, with why and where it came from.

    The value is the original message, byte for byte; the reason and the
    source coordinates travel in headers.
    """
    publish(
        settings,
        settings.topic_dead_letter,
        value or b"",
        headers=dead_letter_headers(event_id, reason, detail),
    )
    log.warning("refund event dead-lettered", extra={"fields": {"event_id": event_id, "reason": reason}})
