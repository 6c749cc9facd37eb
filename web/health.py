"""Liveness and readiness probes (outside the API's base path, no token)."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, current_app, jsonify
from flask_jwt_extended import verify_jwt_in_request
from pydantic import Field

from shared.readiness import OK, CachedReadiness
from shared.services.views import View
from web.declare import Reply, operation

bp = Blueprint("health", __name__)


class Health(View):
    """The process is up."""

    status: Literal["ok"]


class Readiness(View):
    """Whether MongoDB, Redis and Kafka answer; each check is `ok` or the reason it failed."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(examples=[{"mongo": "ok", "redis": "ok", "kafka": "ok"}])


@operation(
    bp,
    "/healthz",
    "GET",
    summary="Liveness probe",
    description="The process is up and serving requests. No token needed; outside the base path.",
    tag="Operations",
    replies=(Reply(200, "Up.", Health),),
    auth=None,
)
def healthz() -> Response:
    """The process is up and serving requests."""
    return jsonify(Health(status="ok").wire())


@operation(
    bp,
    "/readyz",
    "GET",
    summary="Readiness probe",
    description="MongoDB, Redis and Kafka answer, from a result at most `READYZ_CACHE_SECONDS` old. No "
    "token needed; outside the base path. Why a check failed is shown only to a caller with a valid token.",
    tag="Operations",
    replies=(
        Reply(200, "Ready: every dependency answers.", Readiness),
        Reply(
            503,
            "Not ready: `checks` names the dependency that does not answer (`failed`; "
            "the reason only with a token).",
            Readiness,
        ),
    ),
    auth=None,
)
def readyz() -> tuple[Response, int]:
    """MongoDB, Redis and Kafka answer; 503 names the ones that do not.

    The answer comes from a result at most READYZ_CACHE_SECONDS old.  Why a
    check failed (error text, internal host names) is shown only to a caller
    with a valid token; anyone else reads "failed".
    """
    probe: CachedReadiness = current_app.extensions.setdefault(
        "readiness", CachedReadiness(current_app.config["SETTINGS"])
    )
    checks = probe.get()
    ready = all(result == OK for result in checks.values())
    if not ready and not _has_valid_token():
        checks = {name: OK if result == OK else "failed" for name, result in checks.items()}
    answer = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return jsonify(answer.wire()), 200 if ready else 503


def _has_valid_token() -> bool:
    try:
        return verify_jwt_in_request(optional=True) is not None
    except Exception:  # noqa: BLE001 - any bad token is simply no token here
        return False
