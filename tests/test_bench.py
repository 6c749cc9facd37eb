"""The benchmark's pure parts, so that ``make bench`` cannot rot between runs.

Percentiles, the clock-paced schedule, the goals' ratios and verdicts, the
readiness that fails loudly, the parsing of task events, the step breakdown,
and the MongoDB command counter on a real client of the shared server.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from pymongo import MongoClient

from bench.common import (
    Command,
    CommandCounter,
    CpuRun,
    Goal,
    NotReady,
    by_command,
    cpu_account,
    paced,
    percentile,
    schedule,
    summary,
    table,
    wait_until,
)
from bench.roundtrips import Step
from bench.stack import TaskEvents


def test_percentile_is_nearest_rank_and_summary_is_in_milliseconds() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(values, 0.5) == pytest.approx(0.051)
    assert percentile(values, 0.99) == pytest.approx(0.099)
    assert percentile(values, 1.0) == pytest.approx(0.100)
    assert percentile([0.2], 0.99) == 0.2
    assert summary([0.010, 0.020, 0.030]) == {"n": 3, "median_ms": 20.0, "p99_ms": 30.0}
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_pacing_holds_the_rate_by_the_clock_whatever_each_send_costs() -> None:
    clock = FakeClock()
    sent: list[float] = []

    def send(_i: int) -> None:  # each send takes 30 ms, as a flushing producer would
        sent.append(clock.now)
        clock.now += 0.030

    achieved = paced(20, 41, send, clock=clock, sleep=clock.sleep)
    # Sleep-then-send would run at 1 / (0.05 + 0.03) = 12.5/s; the schedule keeps 20/s.
    assert sent == pytest.approx(schedule(20, 41, 100.0))
    assert achieved == pytest.approx(20, rel=0.02)


def test_a_late_send_does_not_push_the_later_ones_back() -> None:
    clock = FakeClock()
    sent: list[float] = []

    def send(i: int) -> None:
        sent.append(clock.now)
        clock.now += 0.2 if i == 0 else 0.001  # the first send stalls for four periods

    paced(20, 10, send, clock=clock, sleep=clock.sleep)
    assert sent[5:] == pytest.approx([100.0 + i / 20 for i in range(5, 10)])


def test_goals_print_ratio_raw_figures_and_a_verdict() -> None:
    at_least = Goal("charges / no-op", 40.0, 200.0, 0.4, True, "40.0 / 200.0")
    assert at_least.ratio == pytest.approx(0.2)
    assert not at_least.met
    assert at_least.line() == "MISS  charges / no-op: 0.20 (goal >= 0.4); 40.0 / 200.0"
    at_most = Goal("p99 / median", 60.0, 30.0, 3.0, False, "60 ms / 30 ms")
    assert at_most.met
    assert at_most.line().startswith("PASS  p99 / median: 2.00 (goal <= 3)")
    assert Goal("x", 1.0, 0.0, 1.0, True, "").ratio == float("inf")


def test_the_cpu_account_compares_a_charge_with_what_each_goal_allows() -> None:
    charge = CpuRun(60.0, {"api": 6.0, "workers": 12.0, "mongo": 6.0, "bench": 6.0})  # 30 ms
    noop = CpuRun(250.0, {"api": 0.0, "workers": 6.0, "mongo": 0.0, "bench": 2.0})  # 8 ms
    plain = CpuRun(300.0, {"plain worker": 4.0, "bench": 1.0})
    lines = cpu_account(charge, noop, plain, cores=2, alone_median=0.025)
    rows = lines[0].splitlines()
    assert rows[0].split() == [
        "CPU",
        "ms",
        "per",
        "operation",
        "charge",
        "no-op",
        "task",
        "a",
        "charge",
        "adds",
    ]
    assert rows[2].split() == ["api", "6.00", "0.00", "6.00"]
    assert rows[-1].split() == ["all", "30.0", "8.00", "22.0"]
    assert lines[1] == "cores busy: charges 1.80, no-op tasks 2.00, plain Celery 1.50 of 2"
    # 30 / 8 = 3.75 no-op tasks; 0.4 allows 2.5 x 8 ms x 1.8 / 2.0 cores = 18 ms, 10 beyond a task:
    # at 18 ms a charge would run at 1.8 cores / 18 ms = 100/s, 0.4 of 250.
    assert lines[2] == (
        "a charge takes the CPU of 3.8 no-op tasks of the same workers; the goal of 0.4 allows 18.0 ms "
        "(2.5 tasks at the cores each run kept busy), leaving 10.0 ms for what a charge adds to a task "
        "(it adds 22.0)"
    )
    # 4 x 5 ms x 1.8 / 1.5 cores = 24 ms: 1.8 cores / 24 ms = 75/s, 0.25 of 300.
    assert lines[3] == (
        "a charge takes the CPU of 6.0 plain Celery no-op tasks (5.0 ms each); the goal of 0.25 allows "
        "24.0 ms (4 tasks at the cores each run kept busy)"
    )
    # 8 / (3 x 25 ms) = 107 charges/s: 2 cores / 107 = 18.75 ms per charge, 2.3 no-op tasks.
    assert "needs at least 107 charges/s" in lines[4]
    assert lines[4].endswith("at most 18.8 ms of CPU per charge on 2 cores (2.3 no-op tasks)")


def test_table_aligns_text_left_and_numbers_right() -> None:
    text = table(["what", "ms"], [["a", 1.234], ["bb", 123.46], ["c", "-"]])
    assert text.splitlines() == ["what  ms", "----  -----", "a      1.23", "bb    123.5", "c     -"]


def test_readiness_fails_loudly_naming_what_did_not_come_up() -> None:
    t0 = time.monotonic()
    with pytest.raises(NotReady, match="2 worker nodes answer"):
        wait_until("2 worker nodes answer", lambda: False, timeout=0.3, interval=0.05)
    assert time.monotonic() - t0 < 5
    calls = iter([ConnectionError(), False, True])

    def check() -> bool:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    wait_until("eventually", check, timeout=5, interval=0.01)


def test_task_events_are_keyed_by_job_id_and_event_id() -> None:
    job = "65a1b2c3d4e5f60718293a4b"
    assert TaskEvents._key("payments.charge", {"args": f"['{job}']"}) == job
    kwargs = "{'event_id': 'p.orderService-productFromOrderRefunded:AbC:1:42', 'payment_id': 'x'}"
    assert TaskEvents._key("refunds.refund_product", {"kwargs": kwargs}) == (
        "p.orderService-productFromOrderRefunded:AbC:1:42"
    )
    assert TaskEvents._key("system.ping", {"args": "[]"}) is None


def _command(name: str, collection: str, seconds: float, end: float, kind: str = "mongo") -> Command:
    return Command(name, collection, seconds, 1, end, kind)


def test_step_breakdown_is_in_code_order_with_the_rest_and_the_total() -> None:
    runs = [
        [_command("find", "jobs", 0.001, 1.0), _command("HTTP GET checkout", "", 0.004, 2.0, "http")],
        [_command("find", "jobs", 0.003, 1.0), _command("HTTP GET checkout", "", 0.002, 2.0, "http")],
    ]
    step = Step("charge task", [0.010, 0.010], runs, cpu=[0.004, 0.006])
    rows = step.breakdown()
    assert [r[0].strip() for r in rows] == [
        "1 find jobs",
        "2 HTTP GET checkout",
        "python and the rest",
        "total",
        "CPU of the service's code (this thread)",
    ]
    assert rows[0][1] == pytest.approx(0.002)
    assert rows[2][1] == pytest.approx(0.005)
    assert rows[4][1] == pytest.approx(0.005)
    assert step.round_trips() == 1  # the HTTP call is not a database round trip
    assert step.counts() == {"find jobs": 1}


def test_command_counter_counts_a_real_clients_commands_by_command_and_collection() -> None:
    counter = CommandCounter()
    collection = f"bench_{uuid.uuid4().hex[:8]}"
    with MongoClient(os.environ["MONGO_URL"], event_listeners=[counter]) as client:
        db = client.get_default_database()
        db[collection].insert_one({"_id": 1, "n": 0})  # not recorded: recording is off

        def work() -> int:
            db[collection].update_one({"_id": 1}, {"$inc": {"n": 1}})
            db[collection].find_one({"_id": 1})
            db[collection].find_one({"_id": 1})
            return 7

        result, commands = counter.record(work)
        db[collection].find_one({"_id": 1})  # not recorded either: recording is over
        kept = list(counter.commands)
        db[collection].drop()
    assert result == 7
    assert kept == commands
    assert by_command(commands) == {"update " + collection: 1, "find " + collection: 2}
    assert all(c.seconds > 0 for c in commands)
    assert [c.name for c in sorted(commands, key=lambda c: c.end)] == ["update", "find", "find"]
