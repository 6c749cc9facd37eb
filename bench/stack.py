"""The processes of one benchmark run, and the task events that tell when a task ended.

Every figure of the benchmarks sees a task's end the same way: by the
``task-succeeded`` event its worker publishes (the service's workers publish
task events anyway, for Flower).  A charge and a no-op ``system.ping`` are
thus timed alike: from the client's send to the worker's report, with no
polling interval on either side and no extra load on the API or the database
(HTTP polling of the job every 5 ms by eight clients would add its own reads
to the charge's; the result backend is not written for charges at all).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

import celeryconfig
from bench.common import NotReady, children, wait_until, worker_command
from devstack.checkout_standin import CheckoutStore, create_standin

ROOT = Path(__file__).resolve().parent.parent
QUEUES = celeryconfig.ALL_QUEUES
_JOB_ID = re.compile(r"[0-9a-f]{24}")
_EVENT_ID = re.compile(r"'event_id': '([^']+)'")


@dataclass
class TaskTimes:
    """What the events of one task tell: wall-clock times (time.time()) of each state."""

    name: str = ""
    key: str = ""  # the job id of a job task, the event id of a refund task, else the task id
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    ended: float | None = None
    runtime: float | None = None
    seen: float | None = None  # when this process learnt the end
    failed: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class TaskEvents:
    """Follows the task events of one run's broker prefix in a background thread."""

    def __init__(self, celery: Any) -> None:
        self.celery = celery
        self.tasks: dict[str, TaskTimes] = {}
        self.by_key: dict[str, TaskTimes] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: Any = None
        threading.Thread(target=self._run, daemon=True, name="task-events").start()
        if not self._ready.wait(30):
            raise NotReady("the task event receiver did not connect")

    def _run(self) -> None:
        with self.celery.connection() as conn:
            self._receiver = self.celery.events.Receiver(conn, handlers={"*": self._on})
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def expect(self, key: str) -> TaskTimes:
        """The record a caller waits on for ``key`` (made now if no event came yet)."""
        with self._lock:
            task = self.by_key.get(key)
            if task is None:
                task = self.by_key[key] = TaskTimes(key=key)
            return task

    def _on(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if not kind.startswith("task-") or "uuid" not in event:
            return
        uuid = event["uuid"]
        with self._lock:
            task = self.tasks.get(uuid)
            if task is None:
                name = event.get("name") or ""
                key = self._key(name, event) or uuid
                task = self.by_key.get(key)
                if task is None or task.done.is_set():  # a new task (or a resend of an ended job)
                    task = TaskTimes(key=key)
                    if key not in self.by_key:
                        self.by_key[key] = task
                task.name = name
                self.tasks[uuid] = task
        stamp = float(event.get("timestamp", time.time()))
        if kind == "task-sent":
            task.sent = stamp
        elif kind == "task-received":
            task.received = stamp
        elif kind == "task-started":
            task.started = stamp
        elif kind in ("task-succeeded", "task-failed"):
            task.ended, task.runtime = stamp, event.get("runtime")
            task.failed = kind == "task-failed"
            task.seen = time.time()
            task.done.set()

    @staticmethod
    def _key(name: str, event: dict[str, Any]) -> str | None:
        if name.startswith(("payments.", "cards.")):
            found = _JOB_ID.search(str(event.get("args", "")))
            return found.group(0) if found else None
        if name.startswith("refunds."):
            found = _EVENT_ID.search(str(event.get("kwargs", "")))
            return found.group(1) if found else None
        return None

    def wait(self, key: str, timeout: float = 60) -> TaskTimes:
        task = self.expect(key)
        if not task.done.wait(timeout):
            raise TimeoutError(f"no end of task {key} within {timeout} s")
        return task

    def wait_all(self, keys: Iterable[str], timeout: float = 120) -> list[TaskTimes]:
        deadline = time.monotonic() + timeout
        return [self.wait(k, max(0.1, deadline - time.monotonic())) for k in keys]

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """The API, worker nodes, bridges and checkout stand-in of one benchmark run.

    Worker nodes run one pool process each (as ``make dev``); :meth:`workers`
    and :meth:`bridges` grow or shrink them and wait until exactly that many
    answer, or raise :class:`NotReady`: no figure is ever reported for fewer
    processes than it says.
    """

    def __init__(self, run: str, env: dict[str, str], *, api: bool = True) -> None:
        self.run = run
        self.store = CheckoutStore()
        standin = make_server("127.0.0.1", 0, create_standin(self.store), threaded=True)
        threading.Thread(target=standin.serve_forever, daemon=True).start()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.standin = standin
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "WEB_BIND": f"127.0.0.1:{self.port}",
            "CHECKOUT_SERVICE_URL": f"http://127.0.0.1:{standin.server_port}",
        }
        os.environ.update(self.env)
        from shared import db
        from shared.kafka import ensure_topics
        from shared.settings import load_settings
        from workers.app import create_celery

        self.settings = load_settings()
        db.connect(self.settings)
        ensure_topics(self.settings)
        self.celery = create_celery(self.settings)
        logging.getLogger().setLevel(logging.WARNING)
        self.events = TaskEvents(self.celery)
        self.api: subprocess.Popen[bytes] | None = None
        self.worker_procs: list[subprocess.Popen[bytes]] = []
        self.bridge_procs: list[subprocess.Popen[bytes]] = []
        self._nodes = 0
        self.path = "/api/payment"
        if api:
            bin_dir = Path(sys.executable).parent
            self.api = _start(
                [str(bin_dir / "gunicorn"), "--config", "python:web.gunicorn_conf", "web.wsgi:app"],
                self.env,
            )
            wait_until(
                "the API answers /healthz",
                lambda: requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok,
                60,
            )

    # -- worker nodes and bridges --------------------------------------------------

    def workers(self, count: int) -> None:
        """Run exactly ``count`` worker nodes of one pool process each."""
        while len(self.worker_procs) > count:
            self._stop(self.worker_procs.pop())
        while len(self.worker_procs) < count:
            self._nodes += 1
            self.worker_procs.append(_start(worker_command(f"w{self._nodes}-{self.run}", QUEUES), self.env))
        self._wait_workers(count)

    def _wait_workers(self, count: int) -> None:
        def answering() -> bool:
            names = {name for reply in self.celery.control.ping(timeout=1.0) for name in reply}
            return len(names) == count

        wait_until(f"{count} worker nodes answer a ping", answering, 90)
        if any(proc.poll() is not None for proc in self.worker_procs):
            raise NotReady("a worker node exited")

    def bridges(self, count: int) -> None:
        """Run exactly ``count`` refund bridges, all members of the group with partitions."""
        while len(self.bridge_procs) > count:
            self._stop(self.bridge_procs.pop())
        while len(self.bridge_procs) < count:
            self.bridge_procs.append(_start([sys.executable, "-m", "workers.bridge"], self.env))
        wait_until(f"{count} bridges hold partitions of the refund topics", lambda: self._group(count), 90)

    def _group(self, count: int) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        admin = KafkaAdminClient(**self.settings.kafka_client_options)
        try:
            name = self.settings.topic(self.settings.bridge_group_id)
            group: dict[str, Any] = admin.describe_groups([name])[name]
        except KafkaError as exc:
            if exc.retriable:  # no coordinator for the group yet (a fresh broker)
                return False
            raise
        finally:
            admin.close()
        members = group.get("members") or []
        if group.get("group_state") != "Stable" or len(members) != count:
            return False
        return all(_assigned(member) for member in members)

    # -- processes ---------------------------------------------------------------

    def api_worker_pids(self) -> list[int]:
        return children(self.api.pid) if self.api is not None else []

    def pool_pids(self) -> list[int]:
        """The pool processes (the ones that run tasks) of the worker nodes."""
        return [pid for proc in self.worker_procs for pid in children(proc.pid)]

    def node_pids(self) -> list[int]:
        return [proc.pid for proc in self.worker_procs]

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        from bench.common import drop_run

        for proc in [*self.bridge_procs, *self.worker_procs, *([self.api] if self.api else [])]:
            self._stop(proc)
        self.events.close()
        self.standin.shutdown()
        drop_run(self.run, {k: self.env[k] for k in ("MONGO_URL", "CELERY_BROKER_URL")}, self.settings)


def _assigned(member: dict[str, Any]) -> bool:
    """Whether a consumer group member holds at least one partition."""
    parts = (member.get("member_assignment") or {}).get("assigned_partitions") or []
    return any(part.get("partitions") for part in parts)
