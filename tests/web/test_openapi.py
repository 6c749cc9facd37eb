"""The OpenAPI document is true: it lists every route, every status a route can answer, and is valid."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from flask import Blueprint, Flask
from werkzeug.routing import Rule

import shared
import web
import workers
from shared.errors import CardNotFound, ServiceError, ValidationFailed
from shared.services.views import BASE
from shared.settings import Settings
from tests.helpers import Client, luhn_number
from tests.support import ServedApp
from web import create_app, declare
from web.declare import OPERATIONS
from web.openapi import DOCUMENT_PATH, build_document, errors_of
from web.problems import register_error_handlers
from web.schemas import AddCardRequest, PayRequest

PROBES = ("/healthz", "/readyz")
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def app(settings: Settings, payment_celery: Any) -> Flask:
    return create_app(settings, payment_celery)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document()


def _normalized(path: str) -> str:
    """A Flask rule or an OpenAPI path with each parameter written `{}`."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def _app_rules(app: Flask) -> Iterator[tuple[str, Rule]]:
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(f"{BASE}/") or rule.rule in PROBES:
            for method in sorted((rule.methods or set()) - IGNORED_METHODS):
                yield method.lower(), rule


def _documented(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


# -- (a) path parameters -------------------------------------------------------------


def test_path_parameters_are_ids_of_24_hex_digits_and_named_in_each_path(document: dict[str, Any]) -> None:
    for _method, path, operation in _documented(document):
        names = re.findall(r"\{([^}]+)\}", path)
        declared = [p for p in operation.get("parameters", []) if p.get("in") == "path"]
        assert [p["name"] for p in declared] == names, path
        for parameter in declared:
            assert parameter["required"] is True
            assert parameter["schema"]["pattern"] == "^[0-9a-fA-F]{24}$"


# -- (b) each operation answers what its route declares, and only that ------------


def _documented_problems(operation: dict[str, Any]) -> set[tuple[int, str]]:
    return {
        (int(status), code)
        for status, response in operation["responses"].items()
        for code in response.get("x-problem-codes", [])
    }


def test_every_route_under_the_base_path_is_documented_with_its_declared_responses_and_vice_versa(
    app: Flask, document: dict[str, Any]
) -> None:
    declared = {op.endpoint: op for op in OPERATIONS}
    documented = {(method, _normalized(path)): op for method, path, op in _documented(document)}
    seen = set()
    for method, rule in _app_rules(app):
        key = (method, _normalized(rule.rule))
        assert rule.endpoint in declared, f"{rule.rule} has no declaration (web.declare.operation)"
        assert key in documented, f"{method} {rule.rule} is not in the document"
        op, answer = declared[rule.endpoint], documented[key]
        assert (op.method, _normalized(op.path)) == key
        statuses = {reply.status for reply in op.replies} | {source.status for source in errors_of(op)}
        assert {int(status) for status in answer["responses"]} == statuses, key
        assert _documented_problems(answer) == {(source.status, source.code) for source in errors_of(op)}, key
        for reply in op.replies:
            content = answer["responses"][str(reply.status)]["content"]
            assert list(content) == [reply.media_type], key
        seen.add(key)
    assert set(documented) - seen == set(), "documented operations the app does not have"
    assert {key for key in seen if key[1].startswith(f"{BASE}/")} >= {
        ("post", f"{BASE}/add"),
        ("get", f"{BASE}/docs"),
        ("get", DOCUMENT_PATH),
    }


def test_writes_and_reads_declare_the_errors_their_declarations_imply(document: dict[str, Any]) -> None:
    add = document["paths"][f"{BASE}/add"]["post"]
    get = document["paths"][f"{BASE}/get/{{cardId}}"]["get"]
    # body -> 400/413/422; POST with a token -> 401/403 csrf; limited blueprint -> 429
    assert {(400, "bad_request"), (413, "request_entity_too_large"), (403, "csrf_rejected")} <= (
        _documented_problems(add)
    )
    # id in the path -> 422 and the 404 of an id holding a "/"; GET -> no csrf
    assert {(422, "validation_error"), (404, "not_found"), (429, "rate_limited")} <= _documented_problems(get)
    assert (403, "csrf_rejected") not in _documented_problems(get)


def test_a_view_that_answers_an_error_it_does_not_declare_is_reported() -> None:
    bp = Blueprint("undeclared_test", __name__)

    @declare.operation(
        bp, "/t/<thing_id>", "GET", summary="t", description="t", tag="t", replies=(), auth=None
    )
    def read_thing(thing_id: str) -> str:
        raise CardNotFound(f"No card {thing_id}.") if thing_id.startswith("a") else ValidationFailed()

    try:
        test_app = Flask(__name__)
        register_error_handlers(test_app)
        test_app.register_blueprint(bp)
        client = test_app.test_client()
        assert client.get(f"/t/{'b' * 24}").status_code == 422  # declared (an id parameter)
        assert test_app.extensions.get("undeclared_errors", set()) == set()
        assert client.get(f"/t/{'A' * 24}").status_code == 404
        assert test_app.extensions["undeclared_errors"] == {("undeclared_test.read_thing", "card_not_found")}
        assert client.get("/t/not-an-id").status_code == 422
    finally:
        OPERATIONS[:] = [op for op in OPERATIONS if op.blueprint != bp.name]


#: Entry points: importing them builds an application from the environment.
ENTRY_POINTS = {"web.wsgi", "web.gunicorn_conf", "workers.celery_app", "workers.bridge.__main__"}


def _import_all(package: ModuleType) -> None:
    for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if module.name not in ENTRY_POINTS:
            importlib.import_module(module.name)


def _subclasses(cls: type[ServiceError]) -> Iterator[type[ServiceError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_code_of_the_service_is_in_the_document_with_its_status(document: dict[str, Any]) -> None:
    for package in (shared, web, workers):
        _import_all(package)
    classes: list[type[ServiceError]] = [ServiceError, *_subclasses(ServiceError)]
    assert "checkout_invalid" in {cls.code for cls in classes}  # shared.services.checkout's
    answered = document["components"]["schemas"]["Problem"]["properties"]["code"]["x-codes"]
    outside = {code: entry["status"] for code, entry in document["x-codes-outside-http"].items()}
    missing = {
        f"{cls.__module__}.{cls.__name__}": (cls.code, cls.status)
        for cls in classes
        if answered.get(cls.code) != cls.status and outside.get(cls.code) != cls.status
    }
    assert missing == {}
    text = json.dumps(document)
    assert all(f"`{cls.code}`" in text for cls in classes)


def test_codes_outside_http_are_never_answered_by_any_operation(document: dict[str, Any]) -> None:
    outside = document["x-codes-outside-http"]
    answered = {
        (code, int(status))
        for _method, _path, operation in _documented(document)
        for status, response in operation["responses"].items()
        for code in response.get("x-problem-codes", [])
    }
    assert {(code, entry["status"]) for code, entry in outside.items()} & answered == set()


def test_job_error_codes_are_codes_of_the_service(document: dict[str, Any]) -> None:
    codes = document["components"]["schemas"]["Problem"]["properties"]["code"]["x-codes"]
    by_type = document["components"]["schemas"]["Job"]["properties"]["error"]["x-error-codes"]
    job_types = document["components"]["schemas"]["Job"]["properties"]["type"]["enum"]
    assert set(by_type) == set(job_types)
    assert {code for listed in by_type.values() for code in listed} <= set(codes)


# -- (c) the served document is the generated one, and valid ----------------------


def test_the_served_document_is_the_generated_one_and_needs_no_token(api: ServedApp) -> None:
    response = requests.get(f"{api.url}{DOCUMENT_PATH}", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == build_document()


def test_the_served_document_is_valid_openapi_3_1(api: ServedApp) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}{DOCUMENT_PATH}")
    assert schema.raw_schema["openapi"] == "3.1.0"
    schema.validate()  # the OpenAPI 3.1 meta-schema


def test_every_schema_in_the_document_is_valid_json_schema_2020_12(document: dict[str, Any]) -> None:
    # The OpenAPI meta-schema does not look inside Schema Objects; the JSON
    # Schema meta-schema does.  jsonschema_rs comes with schemathesis.
    assert not jsonschema_rs.meta.is_valid({"type": "money"})
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    for _method, _path, operation in _documented(document):
        for parameter in operation.get("parameters", []):
            if "schema" in parameter:
                jsonschema_rs.meta.validate(parameter["schema"])


def test_the_request_bodies_are_the_request_models_of_web_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for model in (AddCardRequest, PayRequest):
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        generated.pop("$defs", None)
        assert schemas[model.__name__] == generated


# -- real answers conform -----------------------------------------------------------


def test_real_answers_of_a_whole_flow_conform_to_the_document(
    api: ServedApp, make_client: Callable[..., Client], seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    """The fuzzer's fresh user owns nothing; this user's cards, payments and jobs are real."""
    schema = schemathesis.openapi.from_url(f"{api.url}{DOCUMENT_PATH}")
    client: Client = make_client()
    answers: list[tuple[str, str, requests.Response]] = []

    def call(method: str, path: str, template: str, **kwargs: Any) -> requests.Response:
        response = client.call(method, path, **kwargs)
        answers.append((method, f"{BASE}{template}", response))
        return response

    wait = {"Prefer": "wait=20"}
    body = _card_body()
    card_job = call("POST", "/add", "/add", json=body, headers=wait).json()
    assert card_job["status"] == "succeeded", card_job
    card = card_job["result"]
    call("POST", "/add", "/add", json=_card_body(money=1), headers={"Prefer": "wait=0"})
    duplicate = call("POST", "/add", "/add", json=body)
    assert duplicate.status_code == 409, duplicate.text
    call("GET", f"/get/{card['id']}", "/get/{cardId}")
    checkout = seed_checkout(client.user_id, total="10.00")
    paid = call(
        "POST", f"/pay/{checkout['_id']}", "/pay/{checkoutId}", params={"cardId": card["id"]}, headers=wait
    )
    payment = paid.json()["result"]
    again = call(
        "POST", f"/pay/{checkout['_id']}", "/pay/{checkoutId}", json={"cardId": card["id"]}, headers=wait
    )
    assert again.json()["error"]["code"] == "already_paid", again.text
    call("GET", f"/find/{payment['id']}", "/find/{paymentId}")
    call("GET", f"/jobs/{card_job['id']}", "/jobs/{jobId}")
    service: Client = make_client(types=["service"])
    read = service.call("GET", f"/find/{payment['id']}")
    refused = service.call("DELETE", f"/delete-payment/{payment['id']}")
    assert (read.status_code, refused.status_code) == (200, 403), refused.text
    answers += [
        ("GET", f"{BASE}/find/{{paymentId}}", read),
        ("DELETE", f"{BASE}/delete-payment/{{paymentId}}", refused),
    ]
    call("DELETE", f"/delete-payment/{payment['id']}", "/delete-payment/{paymentId}", headers=wait)
    call("DELETE", f"/delete-card/{card['id']}", "/delete-card/{cardId}", headers=wait)
    call("GET", f"/get/{card['id']}", "/get/{cardId}")
    call("GET", "/get/not-an-id", "/get/{cardId}")
    call("GET", f"/get/{'a' * 12}%2F{'b' * 11}", "/get/{cardId}")  # an id with a "/": no route
    call("POST", "/add", "/add", data=b"x" * (65 * 1024), headers={"Content-Type": "application/json"})
    call("POST", "/add", "/add", json=body, headers={"Idempotency-Key": "k" * 256})
    call("POST", "/add", "/add", json=_card_body(), headers={"Idempotency-Key": "same"})
    reused = call("POST", "/add", "/add", json=_card_body(), headers={"Idempotency-Key": "same"})
    assert reused.status_code == 422, reused.text
    call("POST", f"/pay/{checkout['_id']}", "/pay/{checkoutId}")  # no card named
    anonymous = requests.get(f"{api.url}{BASE}/find/{payment['id']}", timeout=10)
    by_cookie = requests.post(
        f"{api.url}{BASE}/add",
        data="{}",
        cookies={"token": client.token},
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert (anonymous.status_code, by_cookie.status_code) == (401, 403), by_cookie.text
    answers += [("GET", f"{BASE}/find/{{paymentId}}", anonymous), ("POST", f"{BASE}/add", by_cookie)]
    for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", DOCUMENT_PATH)):
        answers.append((method, path, requests.request(method, f"{api.url}{path}", timeout=30)))

    seen = {(method, path.removeprefix(BASE), response.status_code) for method, path, response in answers}
    assert seen >= {
        ("POST", "/add", 200),
        ("POST", "/add", 202),
        ("POST", "/add", 400),
        ("POST", "/add", 403),
        ("POST", "/add", 409),
        ("POST", "/add", 413),
        ("POST", "/add", 422),
        ("POST", "/pay/{checkoutId}", 200),
        ("POST", "/pay/{checkoutId}", 422),
        ("GET", "/get/{cardId}", 404),
        ("GET", "/find/{paymentId}", 401),
        ("DELETE", "/delete-payment/{paymentId}", 403),
    }
    for method, path, response in answers:
        operation = schema[path][method]
        documented = operation.definition.raw["responses"]
        assert str(response.status_code) in documented, (method, path, response.status_code, response.text)
        operation.validate_response(response)
    # Every typed error a route answered is one its declaration lists (web.declare).
    assert api.server.app.extensions.get("undeclared_errors", set()) == set()


def _card_body(money: Any = 100) -> dict[str, Any]:
    return {
        "cardHolderName": "Ada Lovelace",
        "cardNumber": luhn_number(),
        "expireDate": "12/39",
        "cvv": "012",
        "money": money,
    }
