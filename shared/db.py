"""The MongoDB connection of a process (MongoEngine's default alias).

Connections are opened per process, after any fork: gunicorn workers in the
app factory, Celery worker processes in the task base class.  pymongo clients
are not fork-safe, so a process that finds a connection made by its parent
opens its own.
"""

from __future__ import annotations

import os
import threading

import mongoengine
from mongoengine.connection import get_db
from pymongo.database import Database

from shared.settings import Settings

_connected_pid: int | None = None
#: A threaded worker runs its first tasks at once: one of them connects, the others wait for it.
_connect_lock = threading.Lock()


def connect(settings: Settings) -> None:
    """Open (or reopen after a fork) this process's connection; safe to call from many threads."""
    global _connected_pid  # noqa: PLW0603 - one connection per process is process state
    pid = os.getpid()
    if _connected_pid == pid:
        return
    with _connect_lock:
        if _connected_pid != pid:
            _open(settings)
            _connected_pid = pid


def _open(settings: Settings) -> None:
    mongoengine.disconnect_all()
    mongoengine.connect(
        host=settings.mongo_url,
        tz_aware=True,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
        # Retried writes rely on server sessions; conditional updates and
        # unique keys make our writes safe to repeat by hand instead.
        retryWrites=False,
    )
    get_db()  # the client now, under the lock, not lazily by whichever thread comes first


def database() -> Database:  # type: ignore[type-arg]
    """The pymongo database behind the default connection."""
    db: Database = get_db()  # type: ignore[type-arg]
    return db


def ping() -> None:
    """Raise if the database does not answer."""
    database().command("ping")
