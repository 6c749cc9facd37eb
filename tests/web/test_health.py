"""Health and readiness probes over real HTTP, against the real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.conftest import make_settings
from tests.support import ServedApp, free_port
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


def test_readyz_is_503_and_names_the_dependency_that_does_not_answer() -> None:
    closed = free_port()
    settings = make_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{closed}/0")
    served = ServedApp(create_app(settings))
    try:
        response = requests.get(f"{served.url}/readyz", timeout=15)
    finally:
        served.close()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["mongo"] == "ok"
    assert body["checks"]["redis"].startswith("ConnectionError")


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
