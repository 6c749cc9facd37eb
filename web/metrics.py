"""Prometheus metrics of the API: requests by route template and status, and their latency.

The API runs as several gunicorn worker processes, so the metrics use
prometheus_client's multiprocess mode: ``web.gunicorn_conf`` gives every run a
fresh ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this module, each
worker writes its counts to its own files there, and the gunicorn master
serves the sum of all of them on its own port (``API_METRICS_PORT``, see
:func:`serve_multiprocess`): never on the public API port, so the proxy in
front of the API never exposes it.  Without that directory (a single-process
server, the tests' in-process apps) the counts live in this process.
"""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

#: The route label of a request no route matched (unbounded paths never become labels).
UNMATCHED = "<unmatched>"


@cache
def api_metrics() -> tuple[Counter, Histogram]:
    """The API's metrics, made on first use.

    prometheus_client picks its value store (in memory, or multiprocess
    files) when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``; the
    ``web`` package is imported before ``web.gunicorn_conf`` sets it, so
    nothing imports prometheus_client before an app is built.
    """
    from prometheus_client import Counter, Histogram

    requests = Counter(
        "payment_http_requests_total",
        "HTTP requests answered by the API, by method, route template and status.",
        ["method", "route", "status"],
    )
    latency = Histogram(
        "payment_http_request_duration_seconds",
        "Time from a request's arrival in the app to its answer, by method and route template.",
        ["method", "route"],
        # From a cached read to a write that waited (Prefer: wait) for its job.
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    )
    return requests, latency


def init_metrics(app: Flask) -> None:
    """Count every answer of ``app``, refusals of the rate limiter included (call before it)."""
    requests, latency = api_metrics()

    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("metrics_started")
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        requests.labels(request.method, route, str(response.status_code)).inc()
        if started is not None:
            latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response


def serve_multiprocess(port: int, address: str) -> None:
    """Serve the sum of every worker process's metrics on ``address:port`` (in the gunicorn master)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=address, registry=registry)


def worker_exited(pid: int) -> None:
    """Let the files of a dead gunicorn worker be merged, not counted as live (gunicorn's child_exit)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
