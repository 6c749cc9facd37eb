"""What the benchmarks share: a private world on the running servers, percentiles,
a pacing schedule, a MongoDB command counter, readiness that fails loudly, and
the goals of issue 10 as ratios."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import monitoring

from devstack import servers


def run_env(run: str) -> dict[str, str]:
    """The environment of a benchmark run: its own database, broker prefix and topics."""
    return {
        "PAYMENT_ENV": "development",
        "MONGO_URL": f"mongodb://127.0.0.1:{servers.MONGO_PORT}/{run}",
        "JWT_SEC": "bench-jwt-secret-0123456789abcdefghijkl",
        "CARD_FINGERPRINT_KEY": "bench-card-fingerprint-key-0123456789abcdef",
        "KAFKA_URI": f"127.0.0.1:{servers.KAFKA_PORT}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{servers.REDIS_PORT}/0",
        "CELERY_KEY_PREFIX": f"{run}:",
        "KAFKA_TOPIC_PREFIX": f"{run}.",
        "LOG_LEVEL": "WARNING",
        # The benchmarks measure charges and refunds, not the per-user limits.
        "RATE_LIMIT_WRITES": "100000/minute",
        "RATE_LIMIT_READS": "1000000/minute",
        "OPEN_JOBS_PER_USER": "10000",
        # No metrics servers: they would compete with `make dev`'s for the ports.
        "API_METRICS_PORT": "0",
        "BRIDGE_METRICS_PORT": "0",
    }


def worker_command(node: str, queues: str, concurrency: int = 1) -> list[str]:
    """A worker node as ``make dev`` runs them: ``concurrency`` pool processes, fair scheduling."""
    celery = str(Path(sys.executable).parent / "celery")
    return [
        celery,
        "-A",
        "workers.celery_app",
        "worker",
        "--concurrency",
        str(concurrency),
        "-O",
        "fair",
        "-Q",
        queues,
        "-n",
        f"{node}@%h",
        "--loglevel",
        "WARNING",
    ]


# -- statistics ---------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..1) of ``values``."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    """n, median and p99 of durations in seconds, in milliseconds."""
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
    }


# -- pacing by the clock --------------------------------------------------------


def schedule(rate: float, count: int, start: float) -> list[float]:
    """The absolute send times of ``count`` events at ``rate`` per second from ``start``.

    An absolute schedule: a send that runs late does not push the later ones
    back, so the achieved rate is ``rate`` whatever each send costs.
    """
    return [start + i / rate for i in range(count)]


def paced(
    rate: float,
    count: int,
    send: Callable[[int], object],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> float:
    """Call ``send(i)`` at ``rate`` per second by the clock; return the achieved rate."""
    start = clock()
    for i, at in enumerate(schedule(rate, count, start)):
        delay = at - clock()
        if delay > 0:
            sleep(delay)
        send(i)
    elapsed = clock() - start
    return (count - 1) / elapsed if count > 1 and elapsed > 0 else float(count)


# -- readiness that fails loudly ----------------------------------------------------


class NotReady(RuntimeError):
    """The benchmark's processes did not all come up: no figure may be reported."""


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.3) -> None:
    """Wait until ``check()`` holds; raise :class:`NotReady` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001, S110 - a server still starting: check again
            pass
        if time.monotonic() >= deadline:
            raise NotReady(f"not ready after {timeout:.0f} s: {what}")
        time.sleep(interval)


# -- MongoDB round trips ------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One MongoDB command (``kind`` "mongo") or another timed step ("http", "kafka")."""

    name: str
    collection: str
    seconds: float
    thread: int
    end: float = 0.0  # time.perf_counter() when it ended
    kind: str = "mongo"

    @property
    def label(self) -> str:
        return f"{self.name} {self.collection}".strip()


class CommandCounter(monitoring.CommandListener):
    """Every MongoDB command of this process's clients: name, collection, duration.

    Register it (``monitoring.register``) before any client is created: pymongo
    gives a client the listeners registered when it was made.  Only commands
    that ran while :meth:`recording` is on are kept.
    """

    IGNORED = frozenset({"hello", "ismaster", "isMaster", "endSessions", "ping"})

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], tuple[str, str]] = {}
        self.commands: list[Command] = []
        self.on = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on or event.command_name in self.IGNORED:
            return
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else event.database_name
        with self._lock:
            self._pending[(event.request_id, event.operation_id or 0)] = (event.command_name, collection)

    def _done(self, event: monitoring.CommandSucceededEvent | monitoring.CommandFailedEvent) -> None:
        with self._lock:
            found = self._pending.pop((event.request_id, event.operation_id or 0), None)
            if found is not None:
                self.commands.append(
                    Command(
                        found[0],
                        found[1],
                        event.duration_micros / 1e6,
                        threading.get_ident(),
                        time.perf_counter(),
                    )
                )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._done(event)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._done(event)

    @contextlib.contextmanager
    def span(self, kind: str, name: str) -> Iterator[None]:
        """Time a step that is not a MongoDB command (an HTTP call, a Kafka send)."""
        if not self.on:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            with self._lock:
                self.commands.append(Command(name, "", t1 - t0, threading.get_ident(), t1, kind))

    def record(self, work: Callable[[], Any]) -> tuple[Any, list[Command]]:
        """Run ``work`` with recording on; its result and the commands it sent."""
        with self._lock:
            self.commands = []
            self._pending.clear()
        self.on = True
        try:
            result = work()
        finally:
            self.on = False
        with self._lock:
            return result, list(self.commands)


def by_command(commands: Iterable[Command]) -> Counter[str]:
    """``{"find jobs": 2, ...}``: how many of each MongoDB command on each collection."""
    return Counter(c.label for c in commands if c.kind == "mongo")


# -- processes --------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(t) for t in text)
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- goals and tables ---------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """One goal of issue 10: ``numerator / denominator`` against ``target``."""

    name: str
    numerator: float
    denominator: float
    target: float
    at_least: bool  # True: the ratio must be >= target; False: <= target
    raw: str

    @property
    def ratio(self) -> float:
        return self.numerator / self.denominator if self.denominator else float("inf")

    @property
    def met(self) -> bool:
        return self.ratio >= self.target if self.at_least else self.ratio <= self.target

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        verdict = "PASS" if self.met else "MISS"
        return f"{verdict}  {self.name}: {self.ratio:.2f} (goal {sign} {self.target:g}); {self.raw}"


@dataclass(frozen=True)
class CpuRun:
    """One measured run: operations per second and the CPU ms per operation of each process group."""

    rate: float
    cpu: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.cpu.values())

    @property
    def cores(self) -> float:
        """The cores the run kept busy: operations per second times CPU seconds per operation."""
        return self.rate * self.total / 1000


def cpu_account(charge: CpuRun, noop: CpuRun, plain: CpuRun, cores: int, alone_median: float) -> list[str]:
    """What the charge goals allow a charge in CPU, against what it takes (ms per charge or task).

    ``charge`` and ``noop`` hold the CPU of every process (the service's, the
    servers', the bench's own) per charge and per no-op task of the same
    workers; ``plain`` the plain Celery worker's run.  A rate is the cores a
    run kept busy over its CPU per operation, so charges at 0.4 of the no-op
    rate may cost 2.5 no-op tasks each, times the ratio of the cores the two
    runs kept busy (1 when both saturate the machine).  The p99 goal asks, by
    Little's law (8 clients always waiting: mean latency = 8 / rate), at
    least ``8 / (3 x alone_median)`` charges/s, so at most ``cores`` over
    that rate in CPU per charge, however the rest is shaped.
    """
    total, task = charge.total, noop.total
    rows = [[k, v, noop.cpu.get(k, 0.0), v - noop.cpu.get(k, 0.0)] for k, v in charge.cpu.items()]
    rows.append(["all", total, task, total - task])
    noop_allows = 2.5 * task * charge.cores / noop.cores
    plain_allows = 4 * plain.total * charge.cores / plain.cores
    p99_rate = 8 / (3 * alone_median)
    return [
        table(["CPU ms per operation", "charge", "no-op task", "a charge adds"], rows),
        f"cores busy: charges {charge.cores:.2f}, no-op tasks {noop.cores:.2f}, "
        f"plain Celery {plain.cores:.2f} of {cores}",
        f"a charge takes the CPU of {total / task:.1f} no-op tasks of the same workers; the goal of 0.4 "
        f"allows {noop_allows:.1f} ms (2.5 tasks at the cores each run kept busy), leaving "
        f"{noop_allows - task:.1f} ms for what a charge adds to a task (it adds {total - task:.1f})",
        f"a charge takes the CPU of {total / plain.total:.1f} plain Celery no-op tasks "
        f"({plain.total:.1f} ms each); the goal of 0.25 allows {plain_allows:.1f} ms "
        "(4 tasks at the cores each run kept busy)",
        f"p99 <= 3 x {alone_median * 1000:.1f} ms with 8 clients needs at least {p99_rate:.0f} charges/s "
        f"(Little's law: mean latency = 8 / rate), at most {1000 * cores / p99_rate:.1f} ms of CPU "
        f"per charge on {cores} cores ({cores / p99_rate * 1000 / task:.1f} no-op tasks)",
    ]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table: text left-aligned, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row, values in zip(cells, rows, strict=True):
        parts = [
            c.rjust(w) if isinstance(v, int | float) else c.ljust(w)
            for c, v, w in zip(row, values, widths, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def drop_run(run: str, env: dict[str, str], settings: Any) -> None:
    """Delete the run's database, Redis keys and topics."""
    import redis
    from kafka import KafkaAdminClient
    from pymongo import MongoClient

    mongo: MongoClient[dict[str, Any]]
    with MongoClient(env["MONGO_URL"]) as mongo:
        mongo.drop_database(run)
    with redis.Redis.from_url(env["CELERY_BROKER_URL"]) as client:
        keys = list(client.scan_iter(f"{run}*"))
        if keys:
            client.delete(*keys)
    admin = KafkaAdminClient(**settings.kafka_client_options)
    try:
        admin.delete_topics(settings.all_topics)
    finally:
        admin.close()


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on loopback ``port`` (Linux; None if not ours to see)."""
    inodes = set()
    for table_file in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table_file).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None
