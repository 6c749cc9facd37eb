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

The shop's services read on their own, larger budget
(``RATE_LIMIT_SERVICE_READS``): a token whose ``userType`` holds ``service``,
and a token-less ``GET /find`` from ``FIND_TOKENLESS_NETWORKS``.  The order
service reads every payment it is told of from one address, and answers a
429 by losing the order for good (it commits its offset anyway), so its reads
must never share a per-address budget with anything else.
"""

from __future__ import annotations

from flask import Flask, current_app, g, request
from flask_jwt_extended import get_jwt
from flask_limiter import Limiter

from shared.settings import Settings
from web import api
from web.auth import from_trusted_network, verify_token

#: Methods of the API that change something (each becomes a job).
WRITE_METHODS = ["POST", "DELETE", "PUT", "PATCH"]
READ_METHODS = ["GET", "HEAD"]
#: The blueprints whose routes are limited (the OpenAPI document lists their 429).
LIMITED_BLUEPRINTS = (api.bp,)


def _caller() -> str:
    """The key a request is counted under: its verified user, else its address.

    A service (token or trusted network) gets a key of its own kind, which
    :func:`_reads_budget` gives the services' budget.
    """
    if "rate_limit_caller" in g:
        return str(g.rate_limit_caller)
    try:
        verify_token(optional=True)
        claims = get_jwt()
    except Exception:  # noqa: BLE001 - any bad token: authenticate() answers 401 in the view
        claims = {}
    user_id, user_types = claims.get("userId"), claims.get("userType")
    if isinstance(user_id, str) and user_id:
        kind = "service" if isinstance(user_types, list) and "service" in user_types else "user"
        caller = f"{kind}:{user_id.lower()}"
    elif request.endpoint == "payment.find_payment" and from_trusted_network():
        caller = f"service-network:{request.remote_addr}"
    else:
        caller = f"addr:{request.remote_addr or 'unknown'}"
    g.rate_limit_caller = caller
    return caller


def _reads_budget() -> str:
    settings: Settings = current_app.config["SETTINGS"]
    if _caller().startswith("service"):
        return settings.rate_limit_service_reads
    return settings.rate_limit_reads


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
    for blueprint in LIMITED_BLUEPRINTS:
        limiter.shared_limit(settings.rate_limit_writes, scope="writes", methods=WRITE_METHODS)(blueprint)
        limiter.shared_limit(_reads_budget, scope="reads", methods=READ_METHODS)(blueprint)
    app.extensions["rate_limiter"] = limiter
    return limiter
