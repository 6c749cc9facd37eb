"""The API's edge: nginx in front of gunicorn, as `make dev` and compose run it.

Each test module run starts its own gunicorn (the project's gunicorn settings,
on a free loopback port) and its own nginx (devstack/nginx/payment.conf.template,
rendered by devstack) in front of it, on the suite's servers.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from bson import ObjectId

from devstack import servers
from tests.environment import ROOT, RUN_ID
from tests.helpers import API, token_for
from tests.support import free_port, stop_group, wait_until

#: The one network allowed to call GET /find without a token here: a loopback
#: address the test can send from, which nginx's own address (127.0.0.1) is not.
TRUSTED_CLIENT = "127.0.0.2"
SLOW_CLIENTS = 200
#: What the issue asks of the API while slow clients hold connections.
ANSWER_WITHIN = 1.0


@dataclass
class Edge:
    proxy_port: int
    api_port: int

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def _gunicorn_behind_nginx(root: Path, web_bind: str, proxy_port: int) -> Iterator[None]:
    """The project's gunicorn (1 worker, 4 threads: easy to stall) on ``web_bind``, nginx in front."""
    logs = servers.STACK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "WEB_BIND": web_bind,
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "4",
        "TRUSTED_PROXY_HOPS": "1",
        "FIND_TOKENLESS_NETWORKS": f"{TRUSTED_CLIENT}/32",
    }
    gunicorn = _start(
        [sys.executable, "-m", "gunicorn", "--config", "python:web.gunicorn_conf", "web.wsgi:app"],
        logs / f"test-edge-gunicorn-{RUN_ID}.log",
        env,
    )
    config = servers.nginx_prepare(root / "nginx", listen=f"127.0.0.1:{proxy_port}", upstream=web_bind)
    nginx = _start(servers.nginx_command(config.parent), logs / f"test-edge-nginx-{RUN_ID}.log", env)
    try:
        yield
    finally:
        stop_group(nginx)
        stop_group(gunicorn)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """gunicorn behind nginx, on free loopback ports (as `make dev` runs them)."""
    found = Edge(free_port(), free_port())
    with _gunicorn_behind_nginx(
        tmp_path_factory.mktemp("edge"), f"127.0.0.1:{found.api_port}", found.proxy_port
    ):
        wait_until(lambda: _answers(f"{found.direct}/healthz"), timeout=60, message="gunicorn answers")
        wait_until(lambda: _answers(f"{found.proxy}/healthz"), timeout=30, message="nginx answers")
        _warm_up(found.proxy)
        yield found


def _warm_up(base: str) -> None:
    """One authenticated GET, so the worker's first MongoDB connection is not what a test measures."""
    response = requests.get(
        f"{base}{API}/find/{ObjectId()}", headers={"Authorization": f"Bearer {token_for()}"}, timeout=60
    )
    assert response.status_code == 404, response.text


def test_behind_nginx_on_a_unix_socket_as_compose_runs_them(tmp_path_factory: pytest.TempPathFactory) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    web_bind = compose["x-app-env"]["WEB_BIND"]
    healthcheck = compose["services"]["api"]["healthcheck"]["test"]
    # A short path (a socket's is limited to 107 bytes) that nginx's workers,
    # which may run as another user, can traverse.
    root = Path(tempfile.mkdtemp(prefix="edge"))
    root.chmod(0o755)
    socket_path = root / "api.sock"
    proxy_port = free_port()
    try:
        with _gunicorn_behind_nginx(root, f"unix:{socket_path}", proxy_port):
            wait_until(socket_path.exists, timeout=60, message="gunicorn's socket")
            wait_until(
                lambda: _answers(f"http://127.0.0.1:{proxy_port}/healthz"),
                timeout=30,
                message="nginx answers",
            )
            # compose's api healthcheck, on this socket instead of the container's.
            probe = [
                part.replace(web_bind.removeprefix("unix:"), str(socket_path)) for part in healthcheck[1:]
            ]
            assert subprocess.run(probe, timeout=30, check=False).returncode == 0
            assert _token_less_find(proxy_port, TRUSTED_CLIENT) == 404
            assert _token_less_find(proxy_port, "127.0.0.1", {"X-Forwarded-For": TRUSTED_CLIENT}) == 401
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- slow clients ------------------------------------------------------------------


class SlowClients:
    """Connections that send part of a request's headers, then a byte now and then."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets: list[socket.socket] = []
        for index in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{index}: ".encode())
            self.sockets.append(sock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        while not self._stop.wait(1.0):
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # closed by the server: what a header timeout does
                    sock.send(b"a")

    def stop_trickling(self) -> None:
        self._stop.set()
        self._thread.join()

    def closed_by_server(self) -> int:
        """How many of the connections the server has closed (or answered with an error)."""
        closed = 0
        for sock in self.sockets:
            sock.settimeout(0.01)
            try:
                data = sock.recv(1024)
                closed += data == b"" or data.startswith(b"HTTP/1.1 4")
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        return closed

    def close(self) -> None:
        self.stop_trickling()
        for sock in self.sockets:
            sock.close()


def measure_while_slow_clients_hold(base: str, port: int, rounds: int = 10) -> list[float]:
    """Latencies of /healthz and an authenticated GET while SLOW_CLIENTS hold connections.

    A request that does not answer within ANSWER_WITHIN counts as that long
    plus one second, so a stalled API shows in the figures.
    """
    token = token_for()
    slow = SlowClients(port, SLOW_CLIENTS)
    latencies: list[float] = []
    try:
        time.sleep(1.0)  # the slow clients have each sent a second chunk
        for _ in range(rounds):
            for path, headers in (
                ("/healthz", {}),
                (f"{API}/find/{ObjectId()}", {"Authorization": f"Bearer {token}"}),
            ):
                t0 = time.monotonic()
                try:
                    response = requests.get(f"{base}{path}", headers=headers, timeout=ANSWER_WITHIN)
                    assert response.status_code in (200, 404), response.text
                    latencies.append(time.monotonic() - t0)
                except requests.Timeout:
                    latencies.append(ANSWER_WITHIN + 1)
            time.sleep(0.2)
    finally:
        slow.close()
    return latencies


@pytest.mark.slow
def test_slow_clients_holding_partial_headers_do_not_stall_the_api(edge: Edge) -> None:
    latencies = measure_while_slow_clients_hold(edge.proxy, edge.proxy_port)
    worst = max(latencies)
    print(f"\n{SLOW_CLIENTS} slow clients: {len(latencies)} requests, worst {worst * 1000:.0f} ms")
    assert worst < ANSWER_WITHIN, sorted(latencies)


@pytest.mark.slow
def test_the_proxy_closes_a_connection_whose_headers_do_not_arrive_in_time(edge: Edge) -> None:
    slow = SlowClients(edge.proxy_port, 5)
    try:
        # Trickling a byte a second never completes the headers; nginx's
        # client_header_timeout (10 s) ends each connection.
        t0 = time.monotonic()
        wait_until(lambda: slow.closed_by_server() == 5, timeout=25, interval=0.5, message="nginx closes")
        assert time.monotonic() - t0 < 20
    finally:
        slow.close()


# -- the client's address ----------------------------------------------------------


def _token_less_find(port: int, source: str, headers: dict[str, str] | None = None) -> int:
    """Status of a token-less GET /find of an unknown payment, sent from ``source``.

    404 means the caller was trusted (the route looked); 401 means it was not.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        connection.request("GET", f"{API}/find/{ObjectId()}", headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def test_behind_the_proxy_the_client_address_decides_token_less_find(edge: Edge) -> None:
    # nginx connects from 127.0.0.1, which is not trusted: only the address it
    # passes on lets the trusted client in.
    assert _token_less_find(edge.proxy_port, TRUSTED_CLIENT) == 404
    assert _token_less_find(edge.proxy_port, "127.0.0.1") == 401


@pytest.mark.parametrize(
    "forged",
    [
        {"X-Forwarded-For": TRUSTED_CLIENT},
        {"X-Forwarded-For": f"{TRUSTED_CLIENT}, {TRUSTED_CLIENT}"},
        {"X-Real-IP": TRUSTED_CLIENT, "Forwarded": f"for={TRUSTED_CLIENT}"},
    ],
    ids=["x-forwarded-for", "two-hops", "x-real-ip-and-forwarded"],
)
def test_a_forged_forwarded_for_through_the_proxy_gains_nothing(edge: Edge, forged: dict[str, str]) -> None:
    assert _token_less_find(edge.proxy_port, "127.0.0.1", forged) == 401
