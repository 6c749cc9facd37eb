"""Health and readiness probes over real HTTP, against the real servers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from bson import ObjectId

from devstack import servers
from devstack.servers import redis_command
from shared.models import Job
from tests.environment import make_settings
from tests.helpers import Client, token_for
from tests.support import BlackHole, FreezableProxy, ServedApp, free_port, wait_until
from web import create_app


@pytest.fixture(scope="module")
def api(settings) -> Iterator[ServedApp]:  # type: ignore[no-untyped-def]
    served = ServedApp(create_app(settings))
    yield served
    served.close()


def test_healthz_answers_without_a_token(api: ServedApp) -> None:
    response = requests.get(f"{api.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_each_dependency_ok_when_all_answer(api: ServedApp, topics: list[str]) -> None:
    response = requests.get(f"{api.url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"mongo": "ok", "redis": "ok", "kafka": "ok"}}


def _served(**overrides: object) -> ServedApp:
    return ServedApp(create_app(make_settings(**overrides)))


def test_readyz_is_503_and_tells_only_a_caller_with_a_token_why() -> None:
    closed = free_port()
    served = _served(CELERY_BROKER_URL=f"redis://127.0.0.1:{closed}/0")
    try:
        anonymous = requests.get(f"{served.url}/readyz", timeout=15)
        with_token = requests.get(
            f"{served.url}/readyz", headers={"Authorization": f"Bearer {token_for()}"}, timeout=15
        )
        bad_token = requests.get(
            f"{served.url}/readyz", headers={"Authorization": "Bearer x.y.z"}, timeout=15
        )
    finally:
        served.close()
    assert anonymous.status_code == with_token.status_code == bad_token.status_code == 503
    assert anonymous.json() == {
        "status": "not_ready",
        "checks": {"mongo": "ok", "redis": "failed", "kafka": "ok"},
    }
    assert bad_token.json() == anonymous.json()
    # No host, port or error text for an anonymous caller; the reason for one with a token.
    assert str(closed) not in anonymous.text
    assert "127.0.0.1" not in anonymous.text
    detail = with_token.json()["checks"]["redis"]
    assert detail.startswith("ConnectionError")
    assert str(closed) in detail


def test_readyz_answers_within_its_timeout_when_servers_hang() -> None:
    hole = BlackHole()
    served = _served(
        CELERY_BROKER_URL=f"redis://127.0.0.1:{hole.port}/0",
        KAFKA_URI=f"127.0.0.1:{hole.port}",
        READYZ_TIMEOUT_SECONDS=1,
    )
    try:
        t0 = time.monotonic()
        response = requests.get(f"{served.url}/readyz", timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        served.close()
        hole.close()
    assert response.status_code == 503
    assert response.json()["checks"] == {"mongo": "ok", "redis": "failed", "kafka": "failed"}
    assert elapsed < 2.5, f"/readyz took {elapsed:.1f}s"


def _pay_with_the_broker_hung(served: ServedApp, hang: Callable[[], None]) -> tuple[float, Client]:
    """A pay's time to its answer once ``hang`` made the broker stop answering; 503 and nothing kept."""
    client = Client(served.url)
    hang()
    t0 = time.monotonic()
    response = client.pay(str(ObjectId()), str(ObjectId()))
    elapsed = time.monotonic() - t0
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
    assert Job.objects(ownerId=client.user_id).count() == 0  # not queued, so not accepted
    return elapsed, client


def test_a_write_answers_503_within_seconds_and_keeps_nothing_when_the_broker_hangs() -> None:
    # Redis takes the connection and never answers (a partition, a stuck
    # server): the task's send times out and the write is refused, not held.
    hole = BlackHole()
    served = _served(CELERY_BROKER_URL=f"redis://127.0.0.1:{hole.port}/0")
    try:
        elapsed, _ = _pay_with_the_broker_hung(served, lambda: None)
    finally:
        served.close()
        hole.close()
    assert elapsed < 10, f"the write took {elapsed:.1f}s"


def test_a_write_answers_503_when_the_broker_hangs_on_connections_it_already_has() -> None:
    # The API's connections to Redis are open and warm (a pay went through);
    # then Redis stops answering on them.  Each of the send's retries waits
    # web.API_BROKER_TIMEOUT_SECONDS: about 14 s in all (with the workers' 5 s, 42).
    proxy = FreezableProxy(servers.REDIS_PORT)
    served = _served(CELERY_BROKER_URL=f"redis://127.0.0.1:{proxy.port}/0")
    try:
        warm = Client(served.url)
        assert warm.pay(str(ObjectId()), str(ObjectId())).status_code == 202
        elapsed, _ = _pay_with_the_broker_hung(served, proxy.freeze)
    finally:
        served.close()
        proxy.close()
    assert elapsed < 20, f"the write took {elapsed:.1f}s"


def test_readyz_answers_from_a_result_at_most_its_cache_period_old(tmp_path: Path) -> None:
    port = free_port()
    served = _served(CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0", READYZ_CACHE_SECONDS=3)
    redis_server = None
    try:
        assert requests.get(f"{served.url}/readyz", timeout=15).status_code == 503
        redis_server = subprocess.Popen(redis_command(port, tmp_path), stdout=subprocess.DEVNULL)
        wait_until(lambda: servers.port_open(port), timeout=20, message="private redis listens")
        started = time.monotonic()
        # Redis answers now, but the cached answer stands until the period is over ...
        assert requests.get(f"{served.url}/readyz", timeout=15).status_code == 503
        assert time.monotonic() - started < 2
        # ... and then the next call checks again.
        wait_until(
            lambda: requests.get(f"{served.url}/readyz", timeout=15).status_code == 200,
            timeout=10,
            interval=0.5,
            message="/readyz checks again",
        )
        assert time.monotonic() - started >= 1
    finally:
        served.close()
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(timeout=20)


def test_an_unknown_route_is_a_problem_json_404(api: ServedApp) -> None:
    response = requests.get(f"{api.url}/api/payment/nothing-here", timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert body["code"] == "not_found"
    assert body["type"].endswith("/not_found")
    assert "Traceback" not in response.text


def test_a_wrong_method_is_a_problem_json_405_with_allow(api: ServedApp) -> None:
    response = requests.delete(f"{api.url}/healthz", timeout=5)
    assert response.status_code == 405
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "GET" in response.headers["Allow"]
    assert response.json()["code"] == "method_not_allowed"
