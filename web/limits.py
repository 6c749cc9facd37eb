"""Per-user rate limits of the API: one token cannot starve the others.

Flask-Limiter counts in the Redis that is already the Celery broker, under the
broker's key prefix, so every API process (and every gunicorn worker) shares
one count per user.  Writes and reads have separate budgets
(``RATE_LIMIT_WRITES``, ``RATE_LIMIT_READS``), each shared by all routes of
the kind: a moving window, so a burst can never spend more than the budget in
any window.  A request over the budget answers 429 ``rate_limited`` with
``Retry-After`` (``web.problems``).

Who is counted: the token's user when the token is valid; otherwise the
client's address, so that requests with forged or expired tokens can never
spend the budget of the user they name.
"""

from __future__ import annotations

from flask import Flask, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_limiter import Limiter

from shared.settings import Settings
from web import api

#: Methods of the API that change something (each becomes a job).
WRITE_METHODS = ["POST", "DELETE", "PUT", "PATCH"]
READ_METHODS = ["GET", "HEAD"]


def _caller() -> str:
    """The key a request is counted under: its verified user, else its address."""
    try:
        verify_jwt_in_request(optional=True)
        user_id = get_jwt().get("userId")
    except Exception:  # noqa: BLE001 - any bad token: authenticate() answers 401 in the view
        user_id = None
    if isinstance(user_id, str) and user_id:
        return f"user:{user_id.lower()}"
    return f"addr:{request.remote_addr or 'unknown'}"


def init_limits(app: Flask, settings: Settings) -> Limiter:
    """Limit the API's routes per caller; health, readiness and the OpenAPI document stay free."""
    limiter = Limiter(
        _caller,
        app=app,
        storage_uri=settings.broker_url,
        # The limits library prefixes its keys with this; ours share the
        # broker's prefix, so test runs (and deployments) stay apart.
        storage_options={"key_prefix": f"{settings.broker_key_prefix}ratelimit"},
        strategy="moving-window",
        # web.problems writes Retry-After on the 429 itself.
        headers_enabled=False,
        # Redis away: requests are not limited rather than all refused (writes
        # fail anyway without the broker; reads of MongoDB go on).
        swallow_errors=True,
    )
    limiter.shared_limit(settings.rate_limit_writes, scope="writes", methods=WRITE_METHODS)(api.bp)
    limiter.shared_limit(settings.rate_limit_reads, scope="reads", methods=READ_METHODS)(api.bp)
    app.extensions["rate_limiter"] = limiter
    return limiter
