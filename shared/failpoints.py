"""Fault injection for crash tests: named points where a worker dies or stalls.

A test names points in PAYMENT_FAILPOINTS (allowed only with PAYMENT_ENV=test).
The first time a point is reached for a given key (a job, an event), in any
process, the point fires: at ``NAME`` the process sends itself SIGKILL, as an
OOM kill would; at ``stall:NAME`` it sleeps, so that a test can kill the whole
worker node while the task is in flight.  "First time" is recorded by creating
a marker file exclusively, so the redelivered task goes through.  In any other
configuration a failpoint does nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)

STALL_SECONDS = 60


def _first_time(settings: Settings, name: str, key: str) -> bool:
    scope = hashlib.sha256(f"{settings.mongo_url}|{settings.broker_key_prefix}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"payment-failpoints-{scope}"
    folder.mkdir(exist_ok=True)
    marker = folder / hashlib.sha256(f"{name}|{key}".encode()).hexdigest()
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def failpoint(settings: Settings, name: str, key: str) -> None:
    if not settings.failpoints:
        return
    if name in settings.failpoints and _first_time(settings, name, key):
        log.warning("failpoint %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
    if f"stall:{name}" in settings.failpoints and _first_time(settings, f"stall:{name}", key):
        log.warning("failpoint %s: stalling for %ss", name, STALL_SECONDS)
        time.sleep(STALL_SECONDS)
