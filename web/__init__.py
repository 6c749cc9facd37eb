"""The HTTP API: the Flask application factory."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from shared import db, wire
from shared.logs import bind, configure_logging, unbind
from shared.settings import Settings, load_settings
from web import api, docs, health, openapi
from web.auth import init_auth
from web.limits import init_limits
from web.metrics import init_metrics
from web.problems import register_error_handlers

#: How long the API's broker commands (a job's send, its task-sent event) wait
#: for Redis to connect or answer.  A send is retried (task_publish_retry_policy,
#: riding out a restart), each attempt waiting this long on a Redis that takes
#: connections and never answers: a write then answers 503 after about 14 s
#: on connections the API already had (tests/web/test_health.py), not 42 as
#: with the workers' 5 s.  A timed-out send may still have been
#: delivered; its job was deleted then, and the task ignores a job it cannot find.
API_BROKER_TIMEOUT_SECONDS = 1.0


class WireJSONProvider(DefaultJSONProvider):
    """Answers are written by ``shared.wire.dumps``: amounts exact, keys in the models' order."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        # Flask asks for compact separators in answers, json.dumps' own elsewhere.
        return wire.dumps(obj, separators=kwargs.get("separators") or (", ", ": "), default=self.default)


def _log_requests(app: Flask) -> None:
    """Every log line of a request names it; one summary line per request."""
    log = logging.getLogger("web.request")

    @app.before_request
    def _bind() -> None:
        request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
        g.log_token = bind(request_id=request_id)
        g.started = time.monotonic()

    @app.after_request
    def _summary(response: Response) -> Response:
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "fields": {
                    "status": response.status_code,
                    "ms": round((time.monotonic() - g.started) * 1000, 1),
                }
            },
        )
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            unbind(token)


def create_app(settings: Settings | None = None, celery: Any = None) -> Flask:
    """Build the API from the settings (read from the environment if not given)."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.json = WireJSONProvider(app)
    app.config.update(
        SETTINGS=settings,
        # Bodies larger than this are refused with 413 before they are parsed.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    if celery is None:
        from workers.app import create_celery

        celery = create_celery(settings, broker_timeout=API_BROKER_TIMEOUT_SECONDS)
    app.extensions["celery"] = celery
    if settings.trusted_proxy_hops:
        # Behind nginx every peer is the proxy: take the client's address from the
        # X-Forwarded-For the proxy sets (it replaces, never appends to, the client's).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)  # type: ignore[method-assign]
    app.extensions["job_waiters"] = threading.BoundedSemaphore(max(1, settings.web_threads // 2))
    db.connect(settings)
    register_error_handlers(app)
    init_auth(app, settings)
    _log_requests(app)
    init_metrics(app)
    # After the request log's and the metrics' hooks: a refused request is logged and counted too.
    init_limits(app, settings)
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    return app
