"""The isolated world of this test process: its run id, environment, settings and worker processes.

Each pytest process (each xdist worker) gets its own database, Redis key
prefix and Kafka topic prefix, so two runs, or two workers of one run, never
see each other's data.  The root conftest applies ``TEST_ENV`` to the process
environment before any test module is imported; the server addresses come
from ``devstack.servers`` (``DEVSTACK_*_PORT``), which is how ``make
test-unit`` points them at closed ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import celeryconfig
from devstack import servers
from shared.settings import Settings
from tests.support import stop_group

ROOT = Path(__file__).resolve().parent.parent
TEST_QUEUES = celeryconfig.ALL_QUEUES


def _run_id() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"t{uuid.uuid4().hex[:8]}{worker}"


RUN_ID = _run_id()

#: The environment of this test process and of every process it starts.
TEST_ENV = {
    "PAYMENT_ENV": "test",
    "MONGO_URL": f"mongodb://127.0.0.1:{servers.MONGO_PORT}/{RUN_ID}",
    "JWT_SEC": "test-jwt-secret-0123456789abcdefghijkl",
    "CARD_FINGERPRINT_KEY": "test-card-fingerprint-key-0123456789abcdef",
    "KAFKA_URI": f"127.0.0.1:{servers.KAFKA_PORT}",
    "CELERY_BROKER_URL": f"redis://127.0.0.1:{servers.REDIS_PORT}/0",
    "CELERY_KEY_PREFIX": f"{RUN_ID}:",
    "KAFKA_TOPIC_PREFIX": f"{RUN_ID}.",
    "CELERY_VISIBILITY_TIMEOUT": "20",
    "FLOWER_PASSWORD": "test-flower-password",
    "LOG_LEVEL": "INFO",
    # Tests burst on purpose (races of 50 pays by one user); the tests of the
    # limits themselves build their API with the documented defaults.
    "RATE_LIMIT_WRITES": "100000/minute",
    "RATE_LIMIT_READS": "1000000/minute",
    "OPEN_JOBS_PER_USER": "10000",
    # Metrics servers off: many processes of many runs share loopback; the
    # metrics tests give theirs free ports.
    "API_METRICS_PORT": "0",
    "BRIDGE_METRICS_PORT": "0",
}


def make_settings(**overrides: object) -> Settings:
    """Test settings; never read from a developer's .env file."""
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def start_worker(
    name: str, concurrency: int = 2, queues: str = TEST_QUEUES, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A real Celery worker process on this run's broker prefix and database.

    Its output goes to .stack/logs/test-worker-<name>-<run>.log, for a failing test's post-mortem.
    """
    logs = servers.STACK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"test-worker-{name}-{RUN_ID}.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "-O",
                "fair",
                "-Q",
                queues,
                "-n",
                f"{name}-{RUN_ID}@%h",
                "--without-heartbeat",
                "--without-mingle",
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    stop_group(proc, timeout=30, sig=sig)


def pings(celery: object) -> bool:
    """Whether a worker of this app answers ``system.ping`` (which reaches MongoDB too)."""
    try:
        return bool(celery.send_task("system.ping").get(timeout=2)["pong"])  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not up yet
        return False
