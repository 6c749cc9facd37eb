"""gunicorn settings of the API (``--config python:web.gunicorn_conf``)."""

import os
import shutil
import tempfile
from typing import Any

from shared.settings import load_settings

_settings = load_settings()  # fails fast, naming the bad variable, before any worker forks

# Metrics (web.metrics): every run counts from zero in a directory of its own,
# set before any worker imports prometheus_client; the master serves the sum.
_metrics_dir = tempfile.mkdtemp(prefix="payment-api-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


# Loopback or a unix socket only (the settings refuse anything else): gunicorn
# reads headers without a deadline, so only the proxy (nginx) may reach it.
bind = _settings.web_bind
workers = _settings.web_workers
threads = _settings.web_threads
worker_class = "gthread"
# Long enough for `Prefer: wait=30` plus a margin.
timeout = 45
graceful_timeout = 30
accesslog = "-"
# Each worker builds its own app (and database connection) after the fork.
preload_app = False


def when_ready(_server: Any) -> None:
    from web.metrics import serve_multiprocess

    if _settings.api_metrics_port:
        serve_multiprocess(_settings.api_metrics_port, _settings.metrics_address)


def child_exit(_server: Any, worker: Any) -> None:
    from web.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(_server: Any) -> None:
    shutil.rmtree(_metrics_dir, ignore_errors=True)
