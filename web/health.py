"""Liveness and readiness probes (outside the API's base path, no token)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask_jwt_extended import verify_jwt_in_request

from shared.readiness import OK, CachedReadiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and serving requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
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
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503


def _has_valid_token() -> bool:
    try:
        return verify_jwt_in_request(optional=True) is not None
    except Exception:  # noqa: BLE001 - any bad token is simply no token here
        return False
