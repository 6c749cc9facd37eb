"""Client of the checkout service (another team's; contracts.md).

Calls go through urllib3 directly: requests' layers (sessions, hooks, cookie
jar, prepared requests, the environment walk) cost about 0.65 ms of CPU per
call on a loopback service, more than the HTTP exchange itself.  What the
requests session did, the client still does:

- **pooling**: one urllib3 pool manager per process and service address,
  made after any fork and shared by the process's threads; ``POOL_SIZE``
  kept-alive connections per host, and a call beyond them opens a
  connection of its own instead of waiting (requests'
  ``HTTPAdapter(pool_maxsize=POOL_SIZE)``, non-blocking);
- **no retries** at this layer: a failed call fails the attempt and the
  Celery task retries with backoff;
- **redirects** followed as requests follows a GET's: up to ``MAX_REDIRECTS``
  (requests' 30, its ``Session.max_redirects``), relative or to another
  host, 303 as a GET; one more is ``CheckoutUnavailable``
  (``TooManyRedirects``), as requests' ``TooManyRedirects`` was.  A redirect
  goes the way the service address goes (through its proxy, or direct);
- **proxies** from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
  NO_PROXY), worked out once per service address by requests itself
  (``_environment``): a ``urllib3.ProxyManager`` then, with the proxy URL's
  user and password as ``Proxy-Authorization``, as requests sends them;
- **TLS** verified against the CA bundle requests would use (REQUESTS_CA_BUNDLE,
  CURL_CA_BUNDLE, else certifi's), read when a connection is made;
- **timeout**: ``checkout_timeout_seconds`` to connect and again to read;
- **cookies**: none kept between calls (urllib3 keeps none);
- **headers**: ``Accept: application/json``, ``Accept-Encoding: gzip,
  deflate`` (requests' default; the answer is decoded) and a ``User-Agent``
  naming this service instead of requests'.

A call that fails below HTTP says which urllib3 error it met
(``NewConnectionError``, ``ConnectTimeoutError``, ``ReadTimeoutError``,
``ProtocolError``, ``SSLError``, ``ProxyError``...), where requests' names
(``ConnectionError``, ``ReadTimeout``...) used to be.
"""

from __future__ import annotations

import json
import os
import threading
from decimal import Decimal
from typing import Any

import requests
import urllib3
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_auth_from_url, prepend_scheme_if_needed, select_proxy
from urllib3.exceptions import MaxRetryError, ResponseError

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
#: Redirects followed by a call, as requests followed a GET's (``Session.max_redirects``).
MAX_REDIRECTS = 30

#: No retry of a failed call (connect, read or other errors, statuses, Retry-After);
#: redirects only, the 31st failing the call.
_RETRIES = urllib3.Retry(
    total=None,
    connect=0,
    read=0,
    other=0,
    status=0,
    redirect=MAX_REDIRECTS,
    raise_on_redirect=True,
    raise_on_status=False,
    respect_retry_after_header=False,
)
_HEADERS = {
    "Accept": "application/json",
    "Accept-Encoding": "gzip, deflate",
    "User-Agent": "payment-service (checkout client)",
}

#: Pool managers by (process id, service address).
_managers: dict[tuple[int, str], urllib3.PoolManager] = {}
_managers_lock = threading.Lock()


def _pool_manager(base_url: str) -> urllib3.PoolManager:
    """This process's pool manager for ``base_url``: made after any fork, shared by its threads."""
    key = (os.getpid(), base_url)
    manager = _managers.get(key)
    if manager is None:
        with _managers_lock:
            manager = _managers.get(key)
            if manager is None:
                for other in [k for k in _managers if k[0] != key[0]]:
                    del _managers[other]  # a parent's pooled sockets are not ours to use after a fork
                manager = _managers[key] = _new_pool_manager(base_url)
    return manager


def _new_pool_manager(base_url: str) -> urllib3.PoolManager:
    """A pool manager for ``base_url`` taking the proxy and verifying TLS as the environment says.

    What requests' ``HTTPAdapter`` did on each call, once: the proxy chosen
    for the address's scheme and host (``select_proxy``, ``http://`` when the
    proxy names no scheme), its user and password sent as
    ``Proxy-Authorization``; the CA bundle (a file, or a directory as
    ``ca_cert_dir``) loaded when a connection is made, not before: a bundle
    that cannot be read fails the calls (``SSLError``), not the process.
    """
    proxies, verify = _environment(base_url)
    tls: dict[str, Any] = {"cert_reqs": "CERT_NONE"}
    if verify is not False:
        bundle = DEFAULT_CA_BUNDLE_PATH if verify is True else verify
        where = "ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"
        tls = {"cert_reqs": "CERT_REQUIRED", where: bundle}
    pooling: dict[str, Any] = {"num_pools": 2, "maxsize": POOL_SIZE, "block": False}
    proxy = select_proxy(base_url, proxies)
    if not proxy:
        return urllib3.PoolManager(**pooling, **tls)
    proxy = prepend_scheme_if_needed(proxy, "http")
    user, password = get_auth_from_url(proxy)
    proxy_headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
    return urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **pooling, **tls)


def _environment(base_url: str) -> tuple[dict[str, str], bool | str]:
    """The proxies and the TLS verification the environment gives calls to ``base_url``.

    What requests itself would work out from the environment on each call
    (HTTP(S)_PROXY and NO_PROXY for this host, REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE), which costs a walk through every environment variable,
    twice, per call: here once, for the pool manager of the address
    (:func:`_pool_manager` keeps it for the process).
    """
    with requests.Session() as probe:
        found = probe.merge_environment_settings(base_url, {}, None, None, None)
    verify = found["verify"]
    return dict(found["proxies"]), True if verify is None else verify


def _failure(exc: Exception) -> str:
    """The name of what went wrong below HTTP: the cause urllib3 wraps in MaxRetryError."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        if isinstance(exc.reason, ResponseError):
            return "TooManyRedirects"  # the only ResponseError: _RETRIES retries no status
        return type(exc.reason).__name__
    return type(exc).__name__


def fetch_checkout(settings: Settings, checkout_id: str) -> Checkout:
    """GET the checkout; 404 is final, connection errors and 5xx are retryable."""
    base = str(settings.checkout_service_url).rstrip("/")
    url = f"{base}/api/checkouts/getCheckout/{checkout_id}"
    seconds = settings.checkout_timeout_seconds
    try:
        # The body is read whole (preload_content) and the connection goes back to the pool.
        response = _pool_manager(base).urlopen(
            "GET",
            url,
            headers=_HEADERS,
            timeout=urllib3.Timeout(connect=seconds, read=seconds),
            retries=_RETRIES,
        )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise CheckoutUnavailable(f"The checkout service did not answer: {_failure(exc)}") from exc
    status = response.status
    if status == 404:
        raise CheckoutNotFound(f"No checkout {checkout_id}.")
    if status >= 500 or status == 429:
        raise CheckoutUnavailable(f"The checkout service answered {status}.")
    if status != 200:
        raise CheckoutInvalid(f"The checkout service answered {status}.")
    try:
        # Amounts straight from the JSON text into Decimal, never via float.
        data = json.loads(response.data, parse_float=Decimal)
        return Checkout.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise CheckoutInvalid("The checkout service answered a checkout we cannot read.") from exc
