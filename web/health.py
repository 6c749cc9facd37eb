"""Liveness and readiness probes (outside the API's base path, no token)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from shared.readiness import readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and serving requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """MongoDB, Redis and Kafka answer; 503 names the ones that do not."""
    checks = readiness(current_app.config["SETTINGS"])
    ready = all(result == "ok" for result in checks.values())
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503
