"""Fault injection for crash tests: named points where a worker dies or stalls.

A test names points in PAYMENT_FAILPOINTS (allowed only with PAYMENT_ENV=test).
The first time a point is reached for a given key (a job, an event), in any
process, the point fires: at ``NAME`` the process sends itself SIGKILL, as an
OOM kill would; at ``stall:NAME`` it sleeps, so that a test can kill the whole
worker node while the task is in flight; at ``fail:NAME`` it raises a
transient error (:class:`~shared.errors.ServiceUnavailable`) on the first
``TASK_MAX_RETRIES + 1`` passes, so the task runs out of its retries for real
and only a later run (the recovery sweep's) gets through.  A point named
``NAME@SUFFIX`` (any of the three forms) fires only for keys ending with
``SUFFIX``: one event of a batch, say.  Passes are counted
by creating marker files exclusively, so a redelivered task goes through.  In
any other configuration a failpoint does nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

from shared.errors import ServiceUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

STALL_SECONDS = 60


def _marker(settings: Settings, name: str, key: str, n: int) -> Path:
    scope = hashlib.sha256(f"{settings.mongo_url}|{settings.broker_key_prefix}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"payment-failpoints-{scope}"
    folder.mkdir(exist_ok=True)
    return folder / hashlib.sha256(f"{name}|{key}|{n}".encode()).hexdigest()


def _passes(settings: Settings, name: str, key: str) -> int:
    """Count this pass of ``name`` for ``key`` in any process; return its number (1 first)."""
    n = 1
    while True:
        try:
            os.close(os.open(_marker(settings, name, key, n), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            n += 1
            continue
        return n


def _first_time(settings: Settings, name: str, key: str) -> bool:
    try:
        os.close(os.open(_marker(settings, name, key, 1), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _armed(settings: Settings, point: str, key: str) -> bool:
    """``point`` is named for every key, or (``point@SUFFIX``) for keys ending with ``SUFFIX``."""
    for named in settings.failpoints:
        base, _, suffix = named.partition("@")
        if base == point and key.endswith(suffix):
            return True
    return False


def failpoint(settings: Settings, name: str, key: str) -> None:
    if not settings.failpoints:
        return
    if _armed(settings, name, key) and _first_time(settings, name, key):
        log.warning("failpoint %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
    if _armed(settings, f"stall:{name}", key) and _first_time(settings, f"stall:{name}", key):
        log.warning("failpoint %s: stalling for %ss", name, STALL_SECONDS)
        time.sleep(STALL_SECONDS)
    if _armed(settings, f"fail:{name}", key) and _passes(settings, f"fail:{name}", key) <= (
        settings.task_max_retries + 1
    ):
        log.warning("failpoint %s: failing as if the database were away", name)
        raise ServiceUnavailable(f"failpoint {name}")
