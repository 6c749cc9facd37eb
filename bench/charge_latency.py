"""How long a charge takes, from POST /pay to the job's end, on the local stack.

    make stack-up && .venv/bin/python -m bench.charge_latency [--charges 200]

Starts its own API (gunicorn) and two worker nodes (as ``make dev`` does) on
a private database and broker prefix, with the checkout stand-in in-process;
the servers (Redis, MongoDB-protocol server, Kafka) must be running.  In the
same run it measures a baseline: the round trip of ``system.ping`` through the
same broker and workers, the floor of any queued job.  Reports medians and
p99s, and the ratio of the charge to that baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from bson import ObjectId
from werkzeug.serving import make_server

from bench.common import drop_run, percentile, run_env, worker_command
from devstack.checkout_standin import CheckoutStore, create_standin
from devstack.tokens import make_token

ROOT = Path(__file__).resolve().parent.parent
RUN = f"bench{uuid.uuid4().hex[:8]}"
ENV = run_env(RUN)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
    }


class Stack:
    """The API, two workers and the checkout stand-in of one benchmark run."""

    def __init__(self) -> None:
        self.store = CheckoutStore()
        standin = make_server("127.0.0.1", 0, create_standin(self.store), threaded=True)
        threading.Thread(target=standin.serve_forever, daemon=True).start()
        self.standin = standin
        self.port = free_port()
        env = {
            **os.environ,
            **ENV,
            "PAYMENT_SERVICE_PORT": str(self.port),
            "CHECKOUT_SERVICE_URL": f"http://127.0.0.1:{standin.server_port}",
        }
        os.environ.update(env)
        bin_dir = Path(sys.executable).parent
        self.procs = [
            subprocess.Popen(
                [str(bin_dir / "gunicorn"), "--config", "python:web.gunicorn_conf", "web.wsgi:app"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        ]
        for node in ("b1", "b2"):
            self.procs.append(
                subprocess.Popen(
                    worker_command(f"{node}-{RUN}", "payments,cards,maintenance"),
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        from shared.kafka import ensure_topics
        from workers.app import create_celery

        self.celery = create_celery()
        ensure_topics(self.celery.settings)  # charges publish their accepted event
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the in-process stand-in
        self.url = f"http://127.0.0.1:{self.port}/api/payment"
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                pings = self.celery.control.ping(timeout=1)
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok and len(pings) >= 2:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the benchmark stack did not come up")

    def close(self) -> None:
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=30)
        self.standin.shutdown()
        drop_run(RUN, ENV, self.celery.settings)


def ping_baseline(stack: Stack, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        stack.celery.send_task("system.ping").get(timeout=30)
        times.append(time.perf_counter() - t0)
    return times


def one_charge(stack: Stack, session: requests.Session, token: str, card_id: str, user: str) -> float:
    checkout = stack.store.put({"userId": user, "totalPrice": 1.25, "isActive": True, "products": []})
    headers = {"Authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    response = session.post(
        f"{stack.url}/pay/{checkout['_id']}", params={"cardId": card_id}, headers=headers, timeout=30
    )
    job_url = f"http://127.0.0.1:{stack.port}{response.headers['Location']}"
    while True:
        job = session.get(job_url, headers=headers, timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            elapsed = time.perf_counter() - t0
            if job["status"] != "succeeded":
                raise RuntimeError(f"charge failed: {job}")
            return elapsed
        time.sleep(0.005)


def charges(stack: Stack, count: int, concurrency: int) -> tuple[list[float], float]:
    """``count`` charges from ``concurrency`` users at once; latencies and wall time."""
    users = []
    for _ in range(concurrency):
        user = str(ObjectId())
        token = make_token(user, ["default"], 60, secret=ENV["JWT_SEC"])
        session = requests.Session()
        body = {
            "cardHolderName": "Bench",
            "cardNumber": _pan(),
            "expireDate": "12/39",
            "cvv": "123",
            "money": 100000,
        }
        job = session.post(
            f"{stack.url}/add",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
            timeout=40,
        ).json()
        users.append((session, token, job["result"]["id"], user))
    per_user = [count // concurrency] * concurrency
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = pool.map(
            lambda i: [one_charge(stack, *users[i]) for _ in range(per_user[i])], range(concurrency)
        )
        latencies = [t for batch in results for t in batch]
    return latencies, time.perf_counter() - t0


def _pan() -> str:
    import random

    from shared.pan import luhn_valid

    body = "4" + "".join(random.choice("0123456789") for _ in range(14))  # noqa: S311 - test data
    return next(body + c for c in "0123456789" if luhn_valid(body + c))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--charges", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    stack = Stack()
    try:
        ping_baseline(stack, 20)  # warm up connections and pools
        charges(stack, 20, 1)
        baseline = ping_baseline(stack, args.charges)
        sequential, _ = charges(stack, args.charges, 1)
        concurrent, wall = charges(stack, args.charges, args.concurrency)
    finally:
        stack.close()
    report = {
        "baseline_system_ping": summary(baseline),
        "charge_sequential": summary(sequential),
        "charge_concurrent": {
            **summary(concurrent),
            "concurrency": args.concurrency,
            "charges_per_s": round(len(concurrent) / wall, 1),
        },
    }
    report["ratio_median_charge_to_ping"] = round(
        report["charge_sequential"]["median_ms"] / report["baseline_system_ping"]["median_ms"], 2
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
