"""Operational tasks: prove that a worker runs and reaches its dependencies."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import shared_task

from shared import db


@shared_task(name="system.ping", ignore_result=False)
def ping() -> dict[str, Any]:
    """Answer from a worker process after checking that MongoDB answers too."""
    db.ping()
    return {"pong": True, "host": socket.gethostname(), "pid": os.getpid()}
