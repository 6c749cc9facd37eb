"""A development stand-in for the checkout service (not ours; see contracts.md).

It serves the one route the payment service calls,
``GET /api/checkouts/getCheckout/{id}``, from checkouts seeded over HTTP:

  POST   /_standin/checkouts         body: a checkout document (``_id`` optional)
  DELETE /_standin/checkouts         forget every checkout
  PUT    /_standin/fault             {"status": 503, "count": 2} answers the next
                                     N getCheckout calls with that status

Data lives in memory, or in a JSON file with ``--data FILE``.  ``make dev``
runs it; tests run the same app on a real local HTTP server.  It is never part
of a deployment.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

from bson import ObjectId
from flask import Flask, Response, jsonify, request


class CheckoutStore:
    """Checkouts by id, optionally persisted to a JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._checkouts: dict[str, dict[str, Any]] = {}
        self.fault_status = 0
        self.fault_count = 0
        if path is not None and path.exists():
            self._checkouts = json.loads(path.read_text())

    def put(self, checkout: dict[str, Any]) -> dict[str, Any]:
        checkout = {"_id": str(ObjectId()), "isActive": True, "status": "Pending", **checkout}
        with self._lock:
            self._checkouts[str(checkout["_id"])] = checkout
            self._save()
        return checkout

    def get(self, checkout_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._checkouts.get(checkout_id)

    def clear(self) -> None:
        with self._lock:
            self._checkouts.clear()
            self._save()

    def take_fault(self) -> int:
        with self._lock:
            if self.fault_count <= 0:
                return 0
            self.fault_count -= 1
            return self.fault_status

    def _save(self) -> None:
        if self._path is not None:
            self._path.write_text(json.dumps(self._checkouts, indent=1))


def create_standin(store: CheckoutStore | None = None) -> Flask:
    store = store or CheckoutStore()
    app = Flask(__name__)
    app.config["STORE"] = store

    @app.get("/api/checkouts/getCheckout/<checkout_id>")
    def get_checkout(checkout_id: str) -> Response | tuple[Response, int]:
        fault = store.take_fault()
        if fault:
            return jsonify("injected fault"), fault
        checkout = store.get(checkout_id)
        if checkout is None:
            # The real service answers 404 with a JSON string body.
            return jsonify("Checkout not found"), 404
        return jsonify(checkout)

    @app.post("/_standin/checkouts")
    def seed() -> tuple[Response, int]:
        body = request.get_json(force=True)
        if not isinstance(body, dict):
            return jsonify("a checkout is a JSON object"), 400
        return jsonify(store.put(body)), 201

    @app.delete("/_standin/checkouts")
    def clear() -> tuple[str, int]:
        store.clear()
        return "", 204

    @app.put("/_standin/fault")
    def fault() -> tuple[str, int]:
        body = request.get_json(force=True) or {}
        store.fault_status = int(body.get("status", 503))
        store.fault_count = int(body.get("count", 1))
        return "", 204

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.checkout_standin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data", type=Path, help="JSON file that keeps the checkouts")
    args = parser.parse_args(argv)
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", args.port, create_standin(CheckoutStore(args.data)), threaded=True)


if __name__ == "__main__":
    main()
