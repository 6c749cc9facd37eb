"""The HTTP API: the Flask application factory."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

from flask import Flask, Response, g, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from shared import db
from shared.logs import bind, configure_logging, unbind
from shared.settings import Settings, load_settings
from web import api, health, openapi
from web.auth import init_auth
from web.limits import init_limits
from web.metrics import init_metrics
from web.problems import register_error_handlers


class MoneyJSONProvider(DefaultJSONProvider):
    """Decimal amounts go out as JSON numbers (Flask would write strings).

    Amounts have at most 14 significant digits (<= 999999999999.99), so the
    shortest float repr is exactly their decimal text: 0.30 is written 0.3.
    """

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o)
        return DefaultJSONProvider.default(o)


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
    app.json = MoneyJSONProvider(app)
    app.config.update(
        SETTINGS=settings,
        # Bodies larger than this are refused with 413 before they are parsed.
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    if celery is None:
        from workers.app import create_celery

        celery = create_celery(settings)
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
    return app
