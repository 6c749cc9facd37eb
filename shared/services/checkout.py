"""Client of the checkout service (another team's; contracts.md)."""

from __future__ import annotations

import functools
import json
import os
import threading
from decimal import Decimal
from http.cookiejar import DefaultCookiePolicy

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from requests.adapters import HTTPAdapter

from shared.errors import CheckoutNotFound, CheckoutUnavailable, ServiceError
from shared.money import NeighbourAmount
from shared.settings import Settings


class CheckoutInvalid(ServiceError):
    status, code, title = 502, "checkout_invalid", "The checkout service answered an unusable checkout"
    note = "the checkout service answered something that is not a usable checkout"


class CheckoutProduct(BaseModel):
    model_config = ConfigDict(extra="ignore")
    productId: str
    quantity: int = Field(1, ge=1)
    #: Unit price, a JavaScript double: read by the neighbour cent rule (shared.money).
    price: NeighbourAmount
    sellerId: str | None = None


class Checkout(BaseModel):
    """The fields of a checkout the payment needs; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    id: str = Field(alias="_id")
    userId: str
    basketId: str | None = None
    shipmentId: str | None = None
    address: str | None = None
    isGift: bool = False
    status: str = "Pending"
    isActive: bool
    #: Computed by the checkout service in doubles (5.300000000000001): the neighbour cent rule.
    totalPrice: NeighbourAmount
    products: list[CheckoutProduct] = Field(default_factory=list)


#: Pooled connections kept per process: one per task a worker process runs at once is enough.
POOL_SIZE = 16

_sessions: dict[int, requests.Session] = {}
_sessions_lock = threading.Lock()


def _session() -> requests.Session:
    """This process's HTTP session: kept-alive connections, made after any fork, shared by its threads."""
    pid = os.getpid()
    session = _sessions.get(pid)
    if session is None:
        with _sessions_lock:
            session = _sessions.get(pid)
            if session is None:
                _sessions.clear()  # a parent's pooled sockets are not ours to use after a fork
                session = requests.Session()
                # Calls for different users share the session: it must carry nothing between them.
                session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
                # No retries here: a failed call fails the attempt, and the task retries with backoff.
                adapter = HTTPAdapter(pool_connections=2, pool_maxsize=POOL_SIZE, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                # The environment (proxies, CA bundle) is read once per service
                # address (_environment), not by requests on every call.
                session.trust_env = False
                _sessions[pid] = session
    return session


@functools.lru_cache(maxsize=8)
def _environment(base_url: str) -> tuple[dict[str, str], bool | str]:
    """The proxies and the TLS verification the environment gives calls to ``base_url``.

    What requests itself would work out from the environment on each call
    (HTTP(S)_PROXY and NO_PROXY for this host, REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE), which costs a walk through every environment variable,
    twice, per call: the largest part of a call's CPU on a loopback service.
    """
    with requests.Session() as probe:
        found = probe.merge_environment_settings(base_url, {}, None, None, None)
    verify = found["verify"]
    return dict(found["proxies"]), True if verify is None else verify


def fetch_checkout(settings: Settings, checkout_id: str) -> Checkout:
    """GET the checkout; 404 is final, connection errors and 5xx are retryable."""
    base = str(settings.checkout_service_url).rstrip("/")
    url = f"{base}/api/checkouts/getCheckout/{checkout_id}"
    proxies, verify = _environment(base)
    try:
        response = _session().get(
            url, timeout=settings.checkout_timeout_seconds, proxies=proxies, verify=verify
        )
    except requests.RequestException as exc:
        raise CheckoutUnavailable(f"The checkout service did not answer: {type(exc).__name__}") from exc
    if response.status_code == 404:
        raise CheckoutNotFound(f"No checkout {checkout_id}.")
    if response.status_code >= 500 or response.status_code == 429:
        raise CheckoutUnavailable(f"The checkout service answered {response.status_code}.")
    if response.status_code != 200:
        raise CheckoutInvalid(f"The checkout service answered {response.status_code}.")
    try:
        # Amounts straight from the JSON text into Decimal, never via float.
        data = json.loads(response.content, parse_float=Decimal)
        return Checkout.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise CheckoutInvalid("The checkout service answered a checkout we cannot read.") from exc
