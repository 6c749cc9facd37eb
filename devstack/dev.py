"""``make dev``: the whole service in the foreground, stopped by Ctrl-C.

Starts the servers that are not running (Redis, MongoDB, Kafka), creates the
topics, then runs the API under gunicorn behind nginx (the proxy listens on
PAYMENT_SERVICE_PORT on loopback, gunicorn on WEB_BIND), two Celery worker nodes, the Kafka
refund bridge, Flower and the checkout stand-in, each as a child process
whose output is prefixed with its name.  Ctrl-C (or SIGTERM) stops the
children and then the servers this run started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import celeryconfig
from devstack import servers

if TYPE_CHECKING:
    from shared.settings import Settings

ROOT = servers.ROOT
PY = sys.executable
BIN = Path(PY).parent

#: Queues the development workers consume.
WORKER_QUEUES = celeryconfig.ALL_QUEUES

#: Settings a child needs whatever .env says: the API sits behind the proxy,
#: so it takes the client's address from the one X-Forwarded-For nginx sets.
CHILD_ENV = {"api": {"TRUSTED_PROXY_HOPS": "1"}}


def _processes(settings: Settings) -> dict[str, list[str]]:
    celery = [str(BIN / "celery"), "-A", "workers.celery_app"]
    worker = [
        *celery,
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "1",
        "-O",
        "fair",
        "-Q",
        WORKER_QUEUES,
    ]
    return {
        "checkout": [
            PY,
            "-m",
            "devstack.checkout_standin",
            "--port",
            "8090",
            "--data",
            str(servers.STACK_DIR / "checkouts.json"),
        ],
        "api": [str(BIN / "gunicorn"), "--config", "python:web.gunicorn_conf", "web.wsgi:app"],
        "proxy": servers.nginx_command(
            servers.nginx_prepare(
                servers.STACK_DIR / "nginx",
                listen=f"{servers.HOST}:{settings.port}",
                upstream=settings.web_bind,
            ).parent
        ),
        "worker1": [*worker, "-n", "worker1@%h"],
        "worker2": [*worker, "-n", "worker2@%h"],
        "beat": [
            *celery,
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(servers.STACK_DIR / "celerybeat-schedule"),
        ],
        "bridge": [PY, "-m", "workers.bridge"],
        "flower": [PY, "-m", "workers.flower"],
    }


def _pump(name: str, stream: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{name:9}| {line.decode(errors='replace')}")
        sys.stdout.flush()


def ensure_env_file() -> None:
    env = ROOT / ".env"
    if not env.exists():
        shutil.copy(ROOT / ".env.example", env)
        servers.log("created .env from .env.example (development values)")


def run() -> int:
    ensure_env_file()
    from shared.settings import load_settings

    # DEVSTACK_SECURE=1: every process authenticates to Kafka and Redis.
    os.environ.update(servers.secure_env())
    settings = load_settings()
    t0 = time.monotonic()
    record = servers.STACK_DIR / "run" / "dev-started"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        servers.up(list(servers.SERVERS), record=record)
        _create_topics()
        for name, command in _processes(settings).items():
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **CHILD_ENV.get(name, {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            children[name] = proc
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
        _wait_for_api(settings.port, children)
        _banner(settings, time.monotonic() - t0)
        while not stopping.is_set():
            for name, proc in children.items():
                if proc.poll() is not None:
                    servers.log(f"{name} exited with {proc.returncode}; stopping everything")
                    stopping.set()
            stopping.wait(0.5)
        return 0
    except (servers.StackError, subprocess.CalledProcessError) as exc:
        servers.log(f"error: {exc}")
        return 1
    finally:
        servers.log("stopping")
        for proc in children.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                servers.log(f"{name} did not stop in time; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
        servers.down(record=record)
        servers.log("stopped")


def _create_topics() -> None:
    """The topics, and on the secure stack the ACLs, created as Kafka's admin."""
    command = [PY, "-m", "workers.topics"]
    env = dict(os.environ)
    if servers.SECURE:
        command += ["--grant", servers.KAFKA_SERVICE, servers.KAFKA_ORDER_SERVICE]
        env.update(
            KAFKA_SASL_USERNAME=servers.KAFKA_ADMIN,
            KAFKA_SASL_PASSWORD=servers.KAFKA_USERS[servers.KAFKA_ADMIN],
        )
    subprocess.run(command, cwd=ROOT, check=True, env=env)


def _wait_for_api(port: int, children: dict[str, subprocess.Popen[bytes]]) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if children["api"].poll() is not None:
            raise servers.StackError("the API exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise servers.StackError("the API did not answer /healthz within 60s")


def _banner(settings: Settings, seconds: float) -> None:
    port, flower_port, flower_user = settings.port, settings.flower_port, settings.flower_user
    metrics = [
        f"API http://{settings.metrics_address}:{settings.api_metrics_port}/metrics"
        if settings.api_metrics_port
        else "",
        f"Flower http://127.0.0.1:{flower_port}/metrics",
        f"bridge http://{settings.metrics_address}:{settings.bridge_metrics_port}/metrics"
        if settings.bridge_metrics_port
        else "",
    ]
    print(
        f"""
==============================================================================
 payment service is up ({seconds:.1f}s)
   API        http://127.0.0.1:{port}/api/payment   (health: /healthz, /readyz)
   Flower     http://127.0.0.1:{flower_port}   (user {flower_user}, password FLOWER_PASSWORD in .env)
   checkout   http://127.0.0.1:8090   (development stand-in; seed with POST /_standin/checkouts)
   metrics    {"   ".join(m for m in metrics if m)}
   MongoDB    mongodb://127.0.0.1:{servers.MONGO_PORT}   Redis redis://127.0.0.1:{servers.REDIS_PORT}
   Kafka      127.0.0.1:{servers.KAFKA_PORT}
 a token:     TOKEN=$(.venv/bin/python -m devstack token)
 try:         curl -s http://127.0.0.1:{port}/readyz
 Ctrl-C stops everything.
==============================================================================
""",
        flush=True,
    )
