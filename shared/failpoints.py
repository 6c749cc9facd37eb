"""Fault injection for crash tests: named points where a worker kills itself.

A test names points in PAYMENT_FAILPOINTS (allowed only with PAYMENT_ENV=test);
at such a point the process sends itself SIGKILL on a job's first attempt, as
a power cut or an OOM kill would, and the broker redelivers the task.  In any
other configuration a failpoint does nothing.
"""

from __future__ import annotations

import logging
import os
import signal

from shared.settings import Settings

log = logging.getLogger(__name__)


def failpoint(settings: Settings, name: str, attempt: int) -> None:
    if name in settings.failpoints and attempt == 1:
        log.warning("failpoint %s: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
