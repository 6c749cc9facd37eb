"""The HTTP API: the Flask application factory."""

from __future__ import annotations

from flask import Flask

from shared import db
from shared.logs import configure_logging
from shared.settings import Settings, load_settings
from web import health
from web.problems import register_error_handlers


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API from the settings (read from the environment if not given)."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config.update(
        SETTINGS=settings,
        # Bodies larger than this are refused with 413 before they are parsed.
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
    )
    db.connect(settings)
    register_error_handlers(app)
    app.register_blueprint(health.bp)
    return app
