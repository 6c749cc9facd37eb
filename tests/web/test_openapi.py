"""The OpenAPI document is true: it lists every route, every status a route can answer, and is valid."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from flask import Flask, request
from werkzeug.routing import Rule

import shared
import web
import workers
from shared.errors import CsrfRejected, RateLimited, ServiceError
from shared.services.views import BASE
from shared.settings import Settings
from tests.helpers import Client, luhn_number
from tests.support import ServedApp
from web import api, create_app
from web.openapi import BODY_TOO_LARGE, DOCUMENT_PATH, ROUTE_NOT_FOUND, build_document
from web.schemas import AddCardRequest, PayRequest

PROBES = ("/healthz", "/readyz")
IGNORED_METHODS = {"HEAD", "OPTIONS"}

#: The statuses of the answers that are not errors, by operation.  Writes
#: answer 202 with the job, or 200 when `Prefer: wait` saw it end.
SUCCESS_STATUSES: dict[tuple[str, str], set[int]] = {
    ("post", f"{BASE}/add"): {200, 202},
    ("get", f"{BASE}/get/{{}}"): {200},
    ("delete", f"{BASE}/delete-card/{{}}"): {200, 202},
    ("post", f"{BASE}/pay/{{}}"): {200, 202},
    ("get", f"{BASE}/find/{{}}"): {200},
    ("delete", f"{BASE}/delete-payment/{{}}"): {200, 202},
    ("get", f"{BASE}/jobs/{{}}"): {200},
    ("get", DOCUMENT_PATH): {200},
    ("get", "/healthz"): {200},
    # Not ready is a readiness answer, not a problem.
    ("get", "/readyz"): {200, 503},
}

#: (method, code) pairs the call graph shows but the code's own conditions rule
#: out, each with the reason.
UNREACHABLE = {
    # web.auth.authenticate raises it only when request.method == "POST".
    (method, CsrfRejected.code)
    for method in ("get", "delete")
}


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


# -- (a) every route is documented, and nothing else ------------------------------


def test_every_route_and_method_of_the_app_is_documented_and_nothing_else(
    app: Flask, document: dict[str, Any]
) -> None:
    in_app = {(method, _normalized(rule.rule)) for method, rule in _app_rules(app)}
    in_document = {(method, _normalized(path)) for method, path, _ in _documented(document)}
    assert in_app - in_document == set(), "routes missing from the document"
    assert in_document - in_app == set(), "documented operations the app does not have"
    assert set(SUCCESS_STATUSES) == in_app


def test_path_parameters_are_ids_of_24_hex_digits_and_named_in_each_path(document: dict[str, Any]) -> None:
    for _method, path, operation in _documented(document):
        names = re.findall(r"\{([^}]+)\}", path)
        declared = [p for p in operation.get("parameters", []) if p.get("in") == "path"]
        assert [p["name"] for p in declared] == names, path
        for parameter in declared:
            assert parameter["required"] is True
            assert parameter["schema"]["pattern"] == "^[0-9a-fA-F]{24}$"


# -- (b) every status a route can answer is documented, and only those ------------


def _resolve(node: ast.AST, namespace: dict[str, Any]) -> Any:
    """What a name or a `module.name` in a function's source refers to, if we can tell."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = namespace.get(node.value.id)
        if isinstance(owner, ModuleType):
            return getattr(owner, node.attr, None)
    return None


def _is_ours(obj: Any) -> bool:
    return inspect.isfunction(obj) and obj.__module__.split(".")[0] in {"web", "shared"}


def _reads_body(node: ast.AST, namespace: dict[str, Any]) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in {"get_data", "get_json", "data", "json", "form", "stream"}
        and isinstance(node.value, ast.Name)
        and namespace.get(node.value.id) is request
    )


def raised_by(view: Callable[..., Any]) -> tuple[set[type[ServiceError]], bool]:
    """The ServiceErrors a view can raise, and whether it reads the body.

    Walks the call graph through this project's functions (names a function's
    source calls or passes on, resolved in its module), collecting every
    ServiceError subclass that is constructed along the way.  Flow-insensitive,
    so a superset; :data:`UNREACHABLE` removes what conditions rule out.
    """
    errors: set[type[ServiceError]] = set()
    reads_body = False
    seen: set[Callable[..., Any]] = set()
    stack: list[Callable[..., Any]] = [view]
    while stack:
        func = inspect.unwrap(stack.pop())
        if func in seen:
            continue
        seen.add(func)
        namespace = {**func.__globals__, **inspect.getclosurevars(func).nonlocals}
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        for node in ast.walk(tree):
            reads_body = reads_body or _reads_body(node, namespace)
            if isinstance(node, ast.Call):
                target = _resolve(node.func, namespace)
                if inspect.isclass(target) and issubclass(target, ServiceError):
                    errors.add(target)
            target = _resolve(node, namespace)
            if _is_ours(target):
                stack.append(target)
    return errors, reads_body


def _derived_problems(method: str, rule: Rule, view: Callable[..., Any]) -> set[tuple[int, str]]:
    errors, reads_body = raised_by(view)
    derived = {(cls.status, cls.code) for cls in errors}
    if reads_body:
        derived.add((BODY_TOO_LARGE.status, BODY_TOO_LARGE.code))
    if rule.arguments:
        # Werkzeug's router: an id with a "/" in it matches no rule.
        derived.add((ROUTE_NOT_FOUND.status, ROUTE_NOT_FOUND.code))
    if rule.endpoint.startswith(f"{api.bp.name}."):
        # web.limits: the rate limiter answers before any view of the API blueprint runs.
        derived.add((RateLimited.status, RateLimited.code))
    return {(status, code) for status, code in derived if (method, code) not in UNREACHABLE}


def _documented_problems(operation: dict[str, Any]) -> set[tuple[int, str]]:
    return {
        (int(status), code)
        for status, response in operation["responses"].items()
        for code in response.get("x-problem-codes", [])
    }


def test_each_operation_lists_exactly_the_errors_its_code_can_raise(
    app: Flask, document: dict[str, Any]
) -> None:
    operations = {(method, _normalized(path)): op for method, path, op in _documented(document)}
    mismatches = {}
    for method, rule in _app_rules(app):
        key = (method, _normalized(rule.rule))
        derived = _derived_problems(method, rule, app.view_functions[rule.endpoint])
        documented = _documented_problems(operations[key])
        if derived != documented:
            mismatches[key] = {"undocumented": derived - documented, "never raised": documented - derived}
    assert mismatches == {}


def test_each_operation_lists_exactly_its_statuses(app: Flask, document: dict[str, Any]) -> None:
    for method, path, operation in _documented(document):
        key = (method, _normalized(path))
        problems = {status for status, _ in _documented_problems(operation)}
        assert {int(s) for s in operation["responses"]} == SUCCESS_STATUSES[key] | problems, key


def test_the_call_graph_walk_finds_errors_raised_deep_in_the_services(app: Flask) -> None:
    # add_card -> _submit -> jobs.submit -> the precheck lambda / _replay.
    errors, reads_body = raised_by(app.view_functions["payment.add_card"])
    assert {cls.code for cls in errors} >= {"duplicate_card", "idempotency_key_reused", "service_unavailable"}
    assert reads_body


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


def _card_body(money: Any = 100) -> dict[str, Any]:
    return {
        "cardHolderName": "Ada Lovelace",
        "cardNumber": luhn_number(),
        "expireDate": "12/39",
        "cvv": "012",
        "money": money,
    }
