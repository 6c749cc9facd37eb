"""Fault injection for crash tests: named points where a worker dies or stalls.

A test names points in PAYMENT_FAILPOINTS (allowed only with PAYMENT_ENV=test).
On a job's first attempt, at a point named ``NAME`` the process sends itself
SIGKILL, as an OOM kill would; at a point named ``stall:NAME`` it sleeps, so
that a test can kill the whole worker node while the task is in flight.  In
any other configuration a failpoint does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from shared.settings import Settings

log = logging.getLogger(__name__)

STALL_SECONDS = 60


def failpoint(settings: Settings, name: str, attempt: int) -> None:
    if attempt != 1 or not settings.failpoints:
        return
    if name in settings.failpoints:
        log.warning("failpoint %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
    if f"stall:{name}" in settings.failpoints:
        log.warning("failpoint %s: stalling for %ss", name, STALL_SECONDS)
        time.sleep(STALL_SECONDS)
