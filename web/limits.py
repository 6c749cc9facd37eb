"""Per-user rate limits of the API: one token cannot starve the others.

The counts are kept in the Redis that is already the Celery broker, under the
broker's key prefix, so every API process (and every gunicorn worker) shares
one count per user.  Writes and reads have separate budgets
(``RATE_LIMIT_WRITES``, ``RATE_LIMIT_READS``), each shared by all routes of
the kind: a moving window, so a burst can never spend more than the budget in
any window.  A request over the budget answers 429 ``rate_limited`` with
``Retry-After`` (:class:`shared.errors.RateLimited`, mapped by ``web.problems``).

Who is counted: the token's user when the token is valid; otherwise the
client's address, so that requests with forged or expired tokens can never
spend the budget of the user they name.

The shop's services read on their own, larger budget
(``RATE_LIMIT_SERVICE_READS``): a token whose ``userType`` holds ``service``,
and a token-less ``GET /find`` from ``FIND_TOKENLESS_NETWORKS``.  The order
service reads every payment it is told of from one address, and answers a
429 by losing the order for good (it commits its offset anyway), so its reads
must never share a per-address budget with anything else.

The check is the ``limits`` library's moving window, called directly: one
Redis script per budget a request counts against (one, with a single
budget).  Flask-Limiter, used before, resolved and parsed its limits again
on every request: 0.9 ms of CPU per request over the 0.2 ms the count
itself takes, a third of a job poll's.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, g, request
from flask_jwt_extended import get_jwt
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from shared.errors import RateLimited
from shared.settings import Settings
from web import api
from web.auth import from_trusted_network, verify_token

log = logging.getLogger(__name__)

#: Methods of the API that change something (each becomes a job).
WRITE_METHODS = frozenset({"POST", "DELETE", "PUT", "PATCH"})
READ_METHODS = frozenset({"GET", "HEAD"})
#: The blueprints whose routes are limited (the OpenAPI document lists their 429).
LIMITED_BLUEPRINTS = (api.bp,)
#: How long a request waits for the count in Redis before it goes on unlimited.
COUNT_TIMEOUT_SECONDS = 0.5
#: After Redis failed to answer, requests go on unlimited, without asking it, for this long.
PAUSE_AFTER_FAILURE_SECONDS = 5.0


def _caller() -> str:
    """The key a request is counted under: its verified user, else its address.

    A service (token or trusted network) gets a key of its own kind, which
    reads on the services' budget.
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


class RateLimits:
    """The budgets, parsed once, and the count in Redis they are checked against."""

    def __init__(self, settings: Settings) -> None:
        # The limits library prefixes its keys with this; ours share the
        # broker's prefix, so test runs (and deployments) stay apart.
        # A Redis that takes the connection and never answers costs a request
        # COUNT_TIMEOUT_SECONDS, not forever: the request then goes on unlimited.
        self.storage = RedisStorage(
            settings.broker_url,
            key_prefix=f"{settings.broker_key_prefix}ratelimit",
            wrap_exceptions=True,
            socket_connect_timeout=COUNT_TIMEOUT_SECONDS,
            socket_timeout=COUNT_TIMEOUT_SECONDS,
        )
        self._window = MovingWindowRateLimiter(self.storage)
        # From the shortest window to the longest, the order they are checked in.
        self._writes = sorted(parse_many(settings.rate_limit_writes))
        self._reads = sorted(parse_many(settings.rate_limit_reads))
        self._service_reads = sorted(parse_many(settings.rate_limit_service_reads))
        self._limited = frozenset(bp.name for bp in LIMITED_BLUEPRINTS)
        self._paused_until = 0.0  # after Redis failed to answer (per process; a race only repeats a pause)

    def check(self) -> None:
        """Count this request against its caller's budget; raise :class:`RateLimited` if it is spent."""
        if request.blueprint not in self._limited:
            return  # health, readiness, the OpenAPI document, and URLs that match no route
        if request.method not in WRITE_METHODS | READ_METHODS:
            return  # OPTIONS
        caller = _caller()  # verifies the token once for the view too, counted or not
        if request.method in WRITE_METHODS:
            scope, budget = "writes", self._writes
        else:
            scope = "reads"
            budget = self._service_reads if caller.startswith("service") else self._reads
        if time.monotonic() < self._paused_until:
            return
        try:
            # As Flask-Limiter did: the first budget spent refuses the request,
            # which then counts against none of the longer windows after it.
            spent = next((item for item in budget if not self._window.hit(item, caller, scope)), None)
            if spent is None:
                return
            reset = self._window.get_window_stats(spent, caller, scope).reset_time
        except StorageError:
            # Redis away: not limited rather than all refused (writes fail
            # anyway without the broker; reads of MongoDB go on), and not
            # asked again for a while, so a silent Redis does not cost every
            # request its timeout.
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
            log.warning(
                "rate limits not counted for %g s (Redis did not answer)", PAUSE_AFTER_FAILURE_SECONDS
            )
            return
        raise _limited(spent, reset)

    def close(self) -> None:
        """Close the Redis connections of the count (the process's own; tests build many apps)."""
        self.storage.storage.close()


def _limited(item: RateLimitItem, reset: float) -> RateLimited:
    wait = max(1, math.ceil(reset - time.time()))
    return RateLimited(
        f"At most {item} of these requests per user; retry after {wait} s.",
        extra={"retryAfter": wait},
        retry_after=wait,
    )


def init_limits(app: Flask, settings: Settings) -> RateLimits:
    """Limit the API's routes per caller; health, readiness and the OpenAPI document stay free."""
    limits = RateLimits(settings)
    app.before_request(limits.check)
    app.extensions["rate_limits"] = limits
    return limits
