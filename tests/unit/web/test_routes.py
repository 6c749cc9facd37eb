"""The API's answers that need no worker and no server, through Flask's test client.

Authentication, request parsing and validation happen before a route reaches
MongoDB or the broker, so these answers are the same with every server away
(``make test-unit`` points them at closed ports): a refused request is a
problem+json 4xx, never a 500 and never a wait on a server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.environment import make_settings
from tests.factories import AddCardBodyFactory
from tests.helpers import API, token_for
from web import create_app

#: A fixed id: test ids must be the same in every process of an xdist run.
AN_ID = "65a1f0c2e4b0a1b2c3d4e5f6"


class _NoBroker:
    """A Celery stand-in that fails the test if a route sends a task."""

    def send_task(self, name: str, *_args: Any, **_kwargs: Any) -> None:
        raise AssertionError(f"a refused request sent {name}")


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(make_settings(), _NoBroker())


@pytest.fixture
def http(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for()}"}


def _problem(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem: dict[str, Any] = response.get_json(force=True)
    assert (problem["status"], problem["code"]) == (status, code), problem
    return problem


def _fields(problem: dict[str, Any]) -> set[str]:
    return {error["field"] for error in problem.get("errors", [])}


def test_healthz_answers_with_no_server(http: FlaskClient) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/add"),
        ("GET", f"/get/{AN_ID}"),
        ("POST", f"/pay/{AN_ID}"),
        ("GET", f"/jobs/{AN_ID}"),
    ],
)
def test_a_route_without_a_token_is_a_401_that_asks_for_one(
    http: FlaskClient, method: str, path: str
) -> None:
    response = http.open(f"{API}{path}", method=method, json={})
    _problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_body_that_is_not_json_is_a_400(http: FlaskClient) -> None:
    response = http.post(f"{API}/add", data=b"{not json", headers=_auth())
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


def test_an_invalid_card_is_a_422_naming_every_bad_field(http: FlaskClient) -> None:
    body = AddCardBodyFactory(cardNumber="4242424242424241", cvv="12", expireDate="13/30")
    problem = _problem(http.post(f"{API}/add", json=body, headers=_auth()), 422, "validation_error")
    assert _fields(problem) == {"cardNumber", "cvv", "expireDate"}
    assert body["cardNumber"] not in str(problem)


def test_a_path_id_that_is_not_an_object_id_is_a_422_naming_it(http: FlaskClient) -> None:
    problem = _problem(http.get(f"{API}/get/not-an-id", headers=_auth()), 422, "validation_error")
    assert _fields(problem) == {"cardId"}


def test_a_pay_naming_two_different_cards_is_a_422(http: FlaskClient) -> None:
    response = http.post(
        f"{API}/pay/{ObjectId()}",
        query_string={"cardId": str(ObjectId())},
        json={"cardId": str(ObjectId())},
        headers=_auth(),
    )
    assert _fields(_problem(response, 422, "validation_error")) == {"cardId"}


def test_a_body_over_64_kib_is_a_413_before_it_is_parsed(http: FlaskClient) -> None:
    response = http.post(
        f"{API}/add", data=b" " * (64 * 1024 + 1), headers={**_auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_an_unknown_path_is_a_404_problem(http: FlaskClient) -> None:
    response = http.get(f"{API}/no-such-route", headers=_auth())
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_a_request_decodes_and_checks_its_token_once(
    http: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate limiter (which keys on the user) and the view share one verification of the token."""
    from flask_jwt_extended import view_decorators

    decoded: list[object] = []
    decode = view_decorators._decode_jwt_from_request

    def counted(*args: Any, **kwargs: Any) -> Any:
        decoded.append(args)
        return decode(*args, **kwargs)

    monkeypatch.setattr(view_decorators, "_decode_jwt_from_request", counted)
    body = AddCardBodyFactory(cvv="12")
    _problem(http.post(f"{API}/add", json=body, headers=_auth()), 422, "validation_error")
    assert len(decoded) == 1
    # Without a valid token, nothing is kept: the view verifies again, and refuses.
    decoded.clear()
    _problem(
        http.post(f"{API}/add", json=body, headers={"Authorization": "Bearer not.a.token"}),
        401,
        "unauthorized",
    )
    _problem(http.post(f"{API}/add", json=body), 401, "unauthorized")
    assert len(decoded) == 4
