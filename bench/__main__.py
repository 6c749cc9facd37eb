"""``make bench``: round trips, step breakdown, goals of issue 10, scaling and memory, in one run.

    make stack-up && .venv/bin/python -m bench [--quick] [--memory-charges 10000] [--refunds-only]

On the running servers, in a private database, broker prefix and topics:

1. **round trips and steps, in this process** (bench/roundtrips.py): the
   MongoDB commands of one charge (API and task), one job poll, one refund
   (bridge and task), by command and collection, and the time of each step;
2. **the service's processes**: gunicorn, two worker nodes of one pool
   process each and one refund bridge (as ``make dev``): first 3,000
   unmeasured charges that warm the servers' JVMs (``--warmup-charges``,
   :func:`warm_servers`), then no-op
   ``system.ping`` one at a time and all at once, charges from one client
   and from eight, bursts of refund events and a steady 20 events/s, each
   with its step breakdown; then a plain 2-process Celery prefork worker
   (bench/noop_app.py) on the same broker;
3. **the goals** of issue 10 as ratios, PASS or MISS (reported, not asserted);
4. **memory**: RSS of an API worker and a Celery pool process after the
   charges so far (the warm-up's included), and after ``--memory-charges``;
5. **scaling**: charges/s and refunds/s with 1, 2 and 4 worker processes
   and with 1 and 2 bridges.

Every task's end is seen by its ``task-succeeded`` event (bench/stack.py).
The machine is shared: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import monitoring

from bench import roundtrips
from bench.common import (
    CpuRun,
    Goal,
    children,
    cpu_account,
    cpu_seconds,
    listener_pid,
    percentile,
    rss_mib,
    run_env,
    summary,
    table,
    wait_until,
)

monitoring.register(roundtrips.COUNTER)  # before any MongoDB client of this process exists


@dataclass(frozen=True)
class Sizes:
    inprocess: int
    alone: int  # one-at-a-time pings and one-client charges
    noop: int  # no-op tasks sent at once
    loaded: int  # charges from 8 clients
    burst: int  # refund events per burst
    bursts: int
    steady: int  # events at 20/s
    scale_charges: int
    scale_refunds: int
    warmup: int  # charges before any charge is measured (warm_servers)


FULL = Sizes(30, 150, 1000, 400, 1000, 1, 200, 160, 300, 3000)
QUICK = Sizes(10, 40, 300, 96, 300, 1, 60, 48, 200, 500)
#: Charges per line of the warm-up table.
WARMUP_BATCH = 500


def say(text: str = "") -> None:
    print(text, flush=True)


def plain_rate(stack: Any, count: int) -> CpuRun:
    """No-op tasks/s of a plain Celery worker with 2 prefork processes on the same broker.

    With the CPU per task of every process in ms (the worker's, the servers',
    this one's), as :func:`all_cpu` counts it.
    """
    from bench.charge_latency import task_rate
    from bench.stack import TaskEvents, _start

    env = {
        **stack.env,
        "BENCH_PLAIN_BROKER": stack.env["CELERY_BROKER_URL"],
        "BENCH_PLAIN_PREFIX": f"{stack.run}-plain:",
    }
    os.environ.update({k: env[k] for k in ("BENCH_PLAIN_BROKER", "BENCH_PLAIN_PREFIX")})
    from bench.noop_app import app

    celery = str(Path(sys.executable).parent / "celery")
    proc = _start(
        [
            *(celery, "-A", "bench.noop_app", "worker", "--concurrency", "2", "-P", "prefork"),
            *("-n", f"plain-{stack.run}@%h", "--loglevel", "WARNING"),
        ],
        env,
    )
    events = TaskEvents(app)
    try:
        wait_until("the plain Celery worker answers", lambda: len(app.control.ping(timeout=1.0)) == 1, 60)
        send = lambda: app.send_task("noop").id  # noqa: E731
        wait = lambda ids: events.wait_all(ids, timeout=120)  # noqa: E731
        task_rate(send, wait, 100)

        def cpu() -> dict[str, float]:
            plain = sum(cpu_seconds(pid) for pid in [proc.pid, *children(proc.pid)])
            return {**server_cpu(), "plain worker": plain, "bench": cpu_seconds(os.getpid())}

        before = cpu()
        rate = task_rate(send, wait, count)
        return CpuRun(rate, per_operation(before, cpu(), count))
    finally:
        stack._stop(proc)
        events.close()


def server_cpu() -> dict[str, float]:
    """CPU seconds so far of the servers (shared with every other user of the machine)."""
    from devstack import servers

    found = {}
    for name, port in (
        ("mongo", servers.MONGO_PORT),
        ("redis", servers.REDIS_PORT),
        ("kafka", servers.KAFKA_PORT),
    ):
        pid = listener_pid(port)
        if pid is not None:
            found[name] = cpu_seconds(pid)
    return found


def server_data(run: str) -> str:
    """What else the MongoDB-protocol server holds: its CPU per command grows with its stored data."""
    from shared import db

    client = db.database().client
    others = [name for name in client.list_database_names() if name not in (run, "admin", "config", "local")]
    documents = sum(client[name].command("dbStats").get("objects", 0) for name in others)
    return (
        f"the MongoDB-protocol server holds {len(others)} other databases, {documents} documents"
        " (a server holding 600 MB of old test data cost 3 x the CPU per charge: drop them first)"
    )


def service_cpu(stack: Any) -> dict[str, float]:
    pids = {"api": stack.api_worker_pids(), "workers": stack.pool_pids() + stack.node_pids()}
    return {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}


def all_cpu(stack: Any) -> dict[str, float]:
    """CPU seconds so far of every process a charge runs through: the service's, the servers', this one's."""
    return {**service_cpu(stack), **server_cpu(), "bench": cpu_seconds(os.getpid())}


def per_operation(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """CPU ms per operation of each process group, between two readings of :func:`all_cpu`."""
    return {k: 1000 * (after[k] - before[k]) / count for k in after if k in before}


def cpu_parts(per: dict[str, float], keys: tuple[str, ...]) -> str:
    """``api 6.1, workers 12.3``: the named groups' CPU ms per operation."""
    return ", ".join(f"{k} {per[k]:.1f}" for k in keys if k in per)


@dataclass
class ChargeRun:
    """Section 2's charge figures: latencies, rates, and the CPU per charge and per no-op task (ms)."""

    alone: list[Any]
    noop: float
    loaded: list[Any]
    charge_rate: float
    charge_cpu: dict[str, float]
    noop_cpu: dict[str, float]


def memory(stack: Any, charger: Any, charges: int) -> None:
    """RSS of the largest API worker and of node 1's pool process, now and every few thousand charges."""
    say("(2 worker nodes; charges from 8 clients, the warm-up's included; each line as it is measured)")
    headers = ["charges so far", "charges/s", "API worker (largest)", "pool process of node 1"]
    say(" | ".join(headers))

    def reading(rate: str) -> None:
        api = max(rss_mib(p) for p in stack.api_worker_pids())
        pool = rss_mib(stack.pool_pids()[0])
        say(f"{charger.count} | {rate} | {api:.1f} | {pool:.1f}")

    reading("-")
    marks = {m for m in (1000, 2000, 5000, 10000, 20000) if charger.count < m < charges}
    for target in sorted(marks | {charges}):
        if charger.count < target:
            done, wall = charger.run(target - charger.count, 8)
            reading(f"{len(done) / wall:.1f}")


def warm_servers(charger: Any, count: int) -> None:
    """``count`` charges from 8 clients before any is measured, a line per batch.

    The servers are JVMs (the MongoDB-protocol server, Kafka) that compile
    their hot code as it runs: on a server just started, the first 400
    charges cost it 27.5 ms of CPU each and the batches after 2,500 about
    5 ms (Kafka 6 ms, then about 1), and the charges/s doubled.  Measured
    cold, charges would be compared with no-op tasks that never touch
    MongoDB.  Each line shows a batch's rate and the servers' CPU per
    charge, so the reader sees whether they had settled.
    """
    if count <= 0:
        say("warm-up: none (--warmup-charges 0)")
        return
    say(f"warm-up: {count} charges from 8 clients, not measured (the servers' JIT; see warm_servers)")
    say(" | ".join(["charges so far", "charges/s", "MongoDB CPU ms per charge", "Kafka CPU ms per charge"]))
    while charger.count < count:
        before = server_cpu()
        done, wall = charger.run(min(WARMUP_BATCH, count - charger.count), 8)
        after = server_cpu()
        per = {k: 1000 * (after[k] - before[k]) / len(done) for k in after if k in before}
        mongo, kafka = per.get("mongo", float("nan")), per.get("kafka", float("nan"))
        say(f"{charger.count} | {len(done) / wall:.1f} | {mongo:.1f} | {kafka:.1f}")


def measure_charges(stack: Any, charger: Any, size: Sizes, pings_alone: bool = False) -> ChargeRun:
    """Section 2's charges: warm-up, one client, the no-op rate, 8 clients, the CPU of each, the steps.

    With ``pings_alone``, no-op pings one at a time are measured after the warm-up too.
    """
    from bench.charge_latency import ping_latency, ping_rate, steps, steps_table

    ping_latency(stack, 20)  # warm-up: connections, pools, indexes
    charger.run(16, 8)
    warm_servers(charger, size.warmup)
    if pings_alone:
        say(f"no-op system.ping, one at a time: {summary(ping_latency(stack, size.alone))}")
    alone, _ = charger.run(size.alone, 1)
    say(f"charge, one client: {summary([c.latency for c in alone])}")
    before = all_cpu(stack)
    noop = ping_rate(stack, size.noop)
    noop_cpu = per_operation(before, all_cpu(stack), size.noop)
    say(f"no-op system.ping, {size.noop} at once: {noop:.1f} tasks/s")
    say(f"  CPU ms per task: {cpu_parts(noop_cpu, tuple(noop_cpu))}")
    before = all_cpu(stack)
    loaded, wall = charger.run(size.loaded, 8)
    charge_rate = len(loaded) / wall
    per = per_operation(before, all_cpu(stack), len(loaded))
    say(f"charge, 8 clients: {summary([c.latency for c in loaded])}, {charge_rate:.1f} charges/s")
    say(f"  CPU ms per charge: {cpu_parts(per, ('api', 'workers'))}")
    say(f"  servers' CPU ms per charge (shared, noisy): {cpu_parts(per, ('mongo', 'redis', 'kafka'))}")
    # The load's side: the 8 clients, the checkout stand-in and the task-event receiver.
    say(f"  this process's CPU ms per charge (clients, checkout stand-in): {cpu_parts(per, ('bench',))}")
    busy = CpuRun(charge_rate, per).cores
    say(f"  all of it: {sum(per.values()):.1f} ms per charge, {busy:.2f} of {os.cpu_count()} cores")
    say("\ncharge steps, one client (ms):")
    say(steps_table(steps(alone)))
    say("\ncharge steps, 8 clients (ms):")
    say(steps_table(steps(loaded)))
    return ChargeRun(alone, noop, loaded, charge_rate, per, noop_cpu)


def run_goals(run: ChargeRun, plain: float) -> tuple[Goal, Goal, Goal]:
    alone_median = statistics.median(c.latency for c in run.alone)
    loaded_p99 = percentile([c.latency for c in run.loaded], 0.99)
    return charge_goals(run.charge_rate, run.noop, plain, loaded_p99, alone_median)


def charge_cpu_account(run: ChargeRun, plain: CpuRun) -> None:
    """What the charge goals allow a charge in CPU, against what it takes (after section 3's goals)."""
    say("\nwhat the charge goals allow a charge in CPU (every process, this run):")
    alone_median = statistics.median(c.latency for c in run.alone)
    charges, noop = CpuRun(run.charge_rate, run.charge_cpu), CpuRun(run.noop, run.noop_cpu)
    for line in cpu_account(charges, noop, plain, os.cpu_count() or 1, alone_median):
        say(line)


def charge_goals(
    charge_rate: float, noop: float, plain: float, loaded_p99: float, alone_median: float
) -> tuple[Goal, Goal, Goal]:
    """Issue 10's three charge goals: the two throughput ratios and the 8-client p99."""
    return (
        Goal(
            "charges/s with 8 clients / no-op tasks/s of the same workers",
            charge_rate,
            noop,
            0.4,
            True,
            f"{charge_rate:.1f} / {noop:.1f}",
        ),
        Goal(
            "charges/s / plain 2-process Celery no-op tasks/s",
            charge_rate,
            plain,
            0.25,
            True,
            f"{charge_rate:.1f} / {plain:.1f}",
        ),
        Goal(
            "charge p99 with 8 clients / median of one client alone",
            loaded_p99,
            alone_median,
            3.0,
            False,
            f"{loaded_p99 * 1000:.1f} ms / {alone_median * 1000:.1f} ms",
        ),
    )


def refund_goals(refund_rate: float, noop: float, burst_p99: float, burst: int) -> tuple[Goal, Goal]:
    """Issue 10's two refund goals: events/s against no-op tasks/s, and the burst's p99."""
    burst_note = "" if burst == 1000 else f" (bursts of {burst}: --quick)"
    return (
        Goal(
            "refund events/s / no-op tasks/s", refund_rate, noop, 1.0, True, f"{refund_rate:.1f} / {noop:.1f}"
        ),
        Goal(
            "burst of 1,000 refunds, all applied: p99 seconds" + burst_note,
            burst_p99,
            1.0,
            3.0,
            False,
            f"p99 {burst_p99:.2f} s",
        ),
    )


def refunds_only(stack: Any, size: Sizes) -> None:
    """The refund part of the bench alone: round trips, no-op baseline, bursts, steady run, goals."""
    from bench.charge_latency import ping_latency, ping_rate
    from bench.refund_throughput import PAYMENTS, one_run, seed

    say("\n== 1. round trips and steps of a refund, in this process ==")
    steps = roundtrips.measure(stack, size.inprocess)
    say(roundtrips.report({k: v for k, v in steps.items() if k.startswith("refund")}))
    say("\n== 2. 2 worker nodes (1 pool process each), 1 bridge ==")
    payment_ids = seed(units=(size.burst * size.bursts + size.steady) // PAYMENTS + 20)
    stack.workers(2)
    stack.bridges(1)
    ping_latency(stack, 20)  # warm-up: connections, pools, indexes
    one_run(stack, payment_ids, 50)  # warm-up of the refund path
    noop = ping_rate(stack, size.noop)
    say(f"no-op system.ping, {size.noop} at once: {noop:.1f} tasks/s")
    bursts = []
    for _ in range(size.bursts):
        cpu0 = service_cpu(stack)["workers"] + bridge_cpu(stack)
        bursts.append(one_run(stack, payment_ids, size.burst))
        cpu = service_cpu(stack)["workers"] + bridge_cpu(stack) - cpu0
        say(
            f"refund burst of {bursts[-1].events}: {bursts[-1].row()}; "
            f"CPU ms per event (workers and bridge): {1000 * cpu / bursts[-1].events:.2f}"
        )
    steady = one_run(stack, payment_ids, size.steady, rate=20)
    say(f"refunds at a steady 20/s (paced by the clock): {steady.row()}")
    say(f"\nrefund steps, burst of {bursts[-1].events} (ms):")
    say(table(["step", "median ms", "p99 ms"], _rows(bursts[-1].steps)))
    refund_rate = statistics.median(b.events_per_s for b in bursts)
    burst_p99 = statistics.median(percentile(b.latencies, 0.99) for b in bursts)
    say("\n== 3. the refund goals of issue 10 (reported, not asserted) ==")
    for goal in refund_goals(refund_rate, noop, burst_p99, size.burst):
        say(goal.line())


def bridge_cpu(stack: Any) -> float:
    return sum(cpu_seconds(p.pid) for p in stack.bridge_procs)


def main() -> int:  # noqa: PLR0915 - one report, in order
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts, no memory run (about 2 min)")
    parser.add_argument(
        "--memory-charges", type=int, default=3000, help="charges before the second RSS reading (e.g. 10000)"
    )
    parser.add_argument("--memory-only", action="store_true", help="only the memory readings (section 5)")
    parser.add_argument(
        "--warmup-charges",
        type=int,
        default=None,
        help="unmeasured charges before section 2 warms the servers (default 3000, --quick 500; 0: none)",
    )
    parser.add_argument(
        "--refunds-only",
        action="store_true",
        help="only the refund part: its round trips, bursts, steady run and goals (with --quick: smaller)",
    )
    parser.add_argument(
        "--charges-only",
        action="store_true",
        help="only the charges of section 2, the plain Celery worker and the charge goals of section 3",
    )
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    if args.warmup_charges is not None:
        size = dataclasses.replace(size, warmup=args.warmup_charges)
    from bench.charge_latency import Charger, ping_rate
    from bench.refund_throughput import PAYMENTS, one_run, seed
    from bench.stack import Stack

    run = f"bench{uuid.uuid4().hex[:8]}"
    begun = time.monotonic()
    say(
        f"make bench{' --quick' if args.quick else ''}: run {run}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} (other users of the machine count too)"
    )
    stack = Stack(run, run_env(run))
    say(server_data(run))
    try:
        if args.memory_only:
            stack.workers(2)
            say("\n== 5. memory (RSS, MiB) ==")
            memory(stack, Charger(stack), args.memory_charges)
            return 0
        if args.refunds_only:
            refunds_only(stack, size)
            return 0
        if args.charges_only:
            say("\n== 2. charges only: 2 worker nodes (1 pool process each) ==")
            stack.workers(2)
            return charges_only(stack, size)
        say("\n== 1. round trips and steps, in this process ==")
        say(roundtrips.report(roundtrips.measure(stack, size.inprocess)))

        say("\n== 2. the service's processes: 2 worker nodes (1 pool process each), 1 bridge ==")
        scale_events = size.scale_refunds * 5
        payment_ids = seed(units=(size.burst * size.bursts + size.steady + scale_events) // PAYMENTS + 20)
        stack.workers(2)
        stack.bridges(1)
        charger = Charger(stack)
        measured = measure_charges(stack, charger, size, pings_alone=True)
        noop, charge_rate = measured.noop, measured.charge_rate
        bursts = []
        for _ in range(size.bursts):
            bursts.append(one_run(stack, payment_ids, size.burst))
            say(f"refund burst of {bursts[-1].events}: {bursts[-1].row()}")
        steady = one_run(stack, payment_ids, size.steady, rate=20)
        say(f"refunds at a steady 20/s (paced by the clock): {steady.row()}")
        say(f"\nrefund steps, burst of {bursts[-1].events} (ms):")
        say(table(["step", "median ms", "p99 ms"], _rows(bursts[-1].steps)))
        say("\nrefund steps, steady 20/s (ms):")
        say(table(["step", "median ms", "p99 ms"], _rows(steady.steps)))
        plain = plain_rate(stack, size.noop)
        say(f"\nplain Celery (2 prefork processes) no-op, {size.noop} at once: {plain.rate:.1f} tasks/s")
        refund_rate = statistics.median(b.events_per_s for b in bursts)
        burst_p99 = statistics.median(percentile(b.latencies, 0.99) for b in bursts)

        say("\n== 3. goals of issue 10 (ratios within this run; reported, not asserted) ==")
        charge = run_goals(measured, plain.rate)
        goals = [charge[0], charge[1], *refund_goals(refund_rate, noop, burst_p99, size.burst), charge[2]]
        for goal in goals:
            say(goal.line())
        charge_cpu_account(measured, plain)

        say("\n== 4. scaling (worker nodes of 1 pool process; bridges) ==")
        rows: list[list[Any]] = [[2, 1, noop, charge_rate, bursts[-1].events_per_s]]

        def measure(workers: int, bridges: int, charges: bool = True) -> None:
            stack.workers(workers)
            stack.bridges(bridges)
            rate = ping_rate(stack, size.noop // 2) if charges else "-"
            done = charger.run(size.scale_charges, 8) if charges else None
            refunds = one_run(stack, payment_ids, size.scale_refunds)
            charged = len(done[0]) / done[1] if done else "-"
            rows.append([workers, bridges, rate, charged, refunds.events_per_s])
            say(f"  {workers} workers, {bridges} bridges: done")

        measure(1, 1)
        measure(4, 1)
        measure(4, 2)
        measure(2, 2, charges=False)
        rows.sort(key=lambda r: (r[1], r[0]))
        say(
            table(
                [
                    "worker processes",
                    "bridges",
                    "no-op tasks/s",
                    "charges/s (8 clients)",
                    "refunds/s (burst)",
                ],
                rows,
            )
        )
        say(f"(refund bursts of {size.scale_refunds} in the scaling rows, of {size.burst} in the 2/1 row)")

        say("\n== 5. memory (RSS, MiB) ==")
        if args.quick:
            say("skipped (--quick)")
        else:
            memory(stack, charger, args.memory_charges)

    finally:
        stack.close()
    say(f"\nbench took {time.monotonic() - begun:.0f} s; load average {os.getloadavg()[0]:.1f}")
    say(f"POSTs answered 503 (database too slow) and sent again by the clients: {charger.retried}")
    return 0


def charges_only(stack: Any, size: Sizes) -> int:
    """The charge figures of sections 2 and 3 alone (``--charges-only``), as the whole run takes them."""
    from bench.charge_latency import Charger

    charger = Charger(stack)
    load = os.getloadavg()[0]
    run = measure_charges(stack, charger, size)
    plain = plain_rate(stack, size.noop)
    say(f"\nplain Celery (2 prefork processes) no-op, {size.noop} at once: {plain.rate:.1f} tasks/s")
    say("\n== 3. charge goals of issue 10 (ratios within this run; reported, not asserted) ==")
    for goal in run_goals(run, plain.rate):
        say(goal.line())
    charge_cpu_account(run, plain)
    say(f"load average: {load:.1f} at the start of the charges, {os.getloadavg()[0]:.1f} at the end")
    return 0


def _rows(steps: list[tuple[str, list[float]]]) -> list[list[Any]]:
    return [[n, summary(v)["median_ms"], summary(v)["p99_ms"]] for n, v in steps if v]


if __name__ == "__main__":
    sys.exit(main())
