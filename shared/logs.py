"""Structured logging: one JSON object a line, with the request/job context.

Context (request id, job id, task id, user id) is carried in a contextvar so
that every line logged while handling one request or task names it.  Card
numbers and CVVs are never put in a log record by our code; as a last line of
defence the formatter masks whatever can be a card number (12-19 digits
passing the Luhn check, in any grouping) in the message, the traceback and
every field, and leaves every other number alone, so that a task's runtime
("succeeded in 0.0045238s") stays readable.  The context's identifiers (user,
job, task, request, event) are kept whole when they have the shape of an id
(an ObjectId, a UUID, a refund event's topic:topicId:partition:offset): one
in a few thousand random ObjectIds, and more topic ids, hold digits that pass
the Luhn check, and a masked id is a line an operator cannot find.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from shared.pan import scrub_data, scrub_text
from shared.wire import object_id_text

# A request id (UUID hex) or a task id (UUID with dashes); ObjectIds are shared.wire's.
_UUID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A refund event's id: topic:topicId:partition:offset (topic:partition:offset before
# topic ids), made by the bridge from the record's coordinates, never from its content.
_EVENT_ID = re.compile(
    r"[A-Za-z0-9._-]+:(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:)?[0-9]+:[0-9]+"
)
_ID_FIELDS = ("user_id", "job_id", "task_id", "request_id", "event_id", "event_ids")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Add fields to the context until :func:`unbind` (for request hooks)."""
    return _context.set({**(_context.get() or {}), **fields})


def unbind(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


def _is_id(value: object) -> bool:
    """Whether ``value`` has the shape of one of the service's ids (or is a non-empty list of them)."""
    if isinstance(value, list):
        return bool(value) and all(_is_id(item) for item in value)
    if not isinstance(value, str):
        return False
    return (
        object_id_text(value) == value
        or _UUID.fullmatch(value) is not None
        or _EVENT_ID.fullmatch(value) is not None
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub_text(record.getMessage()),
        }
        entry.update(_context.get() or {})
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = scrub_text(self.formatException(record.exc_info))
        ids = {name: entry.pop(name) for name in _ID_FIELDS if _is_id(entry.get(name))}
        return json.dumps({**scrub_data(entry), **ids}, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO about every connection.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
