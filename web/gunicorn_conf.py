"""gunicorn settings of the API (``--config python:web.gunicorn_conf``)."""

from shared.settings import load_settings

_settings = load_settings()  # fails fast, naming the bad variable, before any worker forks

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
