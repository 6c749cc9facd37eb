"""The checkout client: pooled urllib3 calls that behave as the requests session they replace did.

Every test talks to a real local HTTP server in a thread (``http.server``),
never to a mock: one stands in for the checkout service, recording each
request (its path, headers and the client's port, which tells connections
apart), another for a proxy.

The environment's proxies and CA bundle are worked out once per service
address, not on each call as requests would (a walk through every
environment variable, twice).  A call must still take the proxy the
environment names, NO_PROXY must still keep a host off it, and TLS must be
verified against the bundle the environment names (else certifi's).
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import CheckoutNotFound, CheckoutUnavailable
from shared.services import checkout
from tests.environment import make_settings

CHECKOUT = {"_id": "c1", "userId": "u1", "isActive": True, "totalPrice": 5.3, "products": []}
PATH = "/api/checkouts/getCheckout/"
#: Environment variables that would send a test's calls elsewhere than it means.
ROUTING = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


@pytest.fixture(autouse=True)
def _fresh_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No proxy or CA bundle from the developer's environment; no pool left by another test."""
    for name in ROUTING:
        monkeypatch.delenv(name, raising=False)
    yield
    for manager in checkout._managers.values():
        manager.clear()  # its kept-alive connections
    checkout._managers.clear()


# -- a checkout service -------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    port: int
    headers: dict[str, str]


class _ServiceServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the crowd connects at once: no SYN dropped and retried a second later
    seen: list[Seen]
    release: threading.Event
    crowd: threading.Barrier

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up (a timeout)
            super().handle_error(request, client_address)


class _Service(BaseHTTPRequestHandler):
    """The checkout service's route, answering by the id asked for; HTTP/1.1, kept alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between them
    server: _ServiceServer

    def do_GET(self) -> None:
        self.server.seen.append(Seen(self.path, self.client_address[1], dict(self.headers.items())))
        name = self.path.removeprefix(PATH)
        if name == "slow":
            self.server.release.wait(10)
        if name == "crowd":
            self.server.crowd.wait()  # every call of the crowd in flight at once
        if name in {"moved", "loop"}:
            target = PATH + ("c1" if name == "moved" else "loop")
            self._answer(302, b"", {"Location": target})
        elif name.isdigit():
            self._answer(int(name), b'{"error": "as asked"}')
        elif name == "garbage":
            self._answer(200, b"<html>not a checkout</html>")
        elif name == "doubles":
            self._answer(200, DOUBLES)
        elif name == "gzip":
            self._answer(200, gzip.compress(json.dumps(CHECKOUT).encode()), {"Content-Encoding": "gzip"})
        else:
            self._answer(200, json.dumps(CHECKOUT).encode())

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


DOUBLES = (
    b'{"_id":"c1","userId":"u","isActive":true,"totalPrice":30.299999999999997,'
    b'"products":[{"productId":"p","quantity":1,"price":30.299999999999997}]}'
)


@dataclass
class Service:
    url: str
    server: _ServiceServer
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seen(self) -> list[Seen]:
        return self.server.seen

    def settings(self, **overrides: Any) -> Any:
        return make_settings(checkout_service_url=self.url, **overrides)


def _serve(tls: ssl.SSLContext | None = None) -> tuple[_ServiceServer, str]:
    server = _ServiceServer(("127.0.0.1", 0), _Service)
    server.seen = []
    server.release = threading.Event()
    server.crowd = threading.Barrier(checkout.POOL_SIZE + 4, timeout=10)
    scheme = "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_port}"


def _stop(server: _ServiceServer) -> None:
    server.release.set()
    server.crowd.abort()
    server.shutdown()
    server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    server, url = _serve()
    try:
        yield Service(url, server)
    finally:
        _stop(server)


# -- answers ---------------------------------------------------------------------------------------


def test_a_checkout_is_read_with_its_amounts_as_decimals(service: Service) -> None:
    found = checkout.fetch_checkout(service.settings(), "doubles")
    assert (found.id, found.userId, found.isActive) == ("c1", "u", True)
    assert found.totalPrice == Decimal("30.30")
    assert found.products[0].price == Decimal("30.30")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, CheckoutNotFound),
        (500, CheckoutUnavailable),
        (503, CheckoutUnavailable),
        (429, CheckoutUnavailable),
        (400, checkout.CheckoutInvalid),
        (204, checkout.CheckoutInvalid),
        (304, checkout.CheckoutInvalid),
    ],
)
def test_statuses_map_to_errors_as_before(service: Service, status: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        checkout.fetch_checkout(service.settings(), str(status))
    assert len(service.seen) == 1  # no retry at this layer, not even on 429 or 503


def test_an_answer_that_is_not_a_checkout_is_invalid(service: Service) -> None:
    with pytest.raises(checkout.CheckoutInvalid):
        checkout.fetch_checkout(service.settings(), "garbage")


def test_the_call_asks_for_json_names_the_service_and_reads_a_compressed_answer(service: Service) -> None:
    found = checkout.fetch_checkout(service.settings(), "gzip")
    assert found.id == "c1"
    headers = {name.lower(): value for name, value in service.seen[0].headers.items()}
    assert headers["accept"] == "application/json"
    assert headers["user-agent"].startswith("payment-service")
    assert "gzip" in headers["accept-encoding"]
    assert "cookie" not in headers


# -- redirects -------------------------------------------------------------------------------------


def test_a_redirect_is_followed(service: Service) -> None:
    found = checkout.fetch_checkout(service.settings(), "moved")
    assert found.id == "c1"
    assert [s.path for s in service.seen] == [PATH + "moved", PATH + "c1"]


def test_a_redirect_loop_fails_the_call_after_as_many_redirects_as_requests_followed(
    service: Service,
) -> None:
    with pytest.raises(CheckoutUnavailable, match="TooManyRedirects"):
        checkout.fetch_checkout(service.settings(), "loop")
    assert len(service.seen) == checkout.MAX_REDIRECTS + 1 == 31


# -- failures below HTTP -----------------------------------------------------------------------------


def test_a_read_timeout_is_unavailable(service: Service) -> None:
    with pytest.raises(CheckoutUnavailable, match="ReadTimeoutError"):
        checkout.fetch_checkout(service.settings(checkout_timeout_seconds=0.2), "slow")
    assert len(service.seen) == 1  # not retried


def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the with ends: nothing listens there
    settings = make_settings(checkout_service_url=f"http://127.0.0.1:{port}")
    with pytest.raises(CheckoutUnavailable, match="NewConnectionError"):
        checkout.fetch_checkout(settings, "c1")


# -- pooling ---------------------------------------------------------------------------------------


def test_calls_reuse_one_kept_alive_connection(service: Service) -> None:
    settings = service.settings()
    for _ in range(3):
        assert checkout.fetch_checkout(settings, "c1").id == "c1"
    assert len({s.port for s in service.seen}) == 1


def test_pool_size_connections_are_kept_and_calls_beyond_them_do_not_wait(service: Service) -> None:
    """As requests' non-blocking HTTPAdapter(pool_maxsize=POOL_SIZE): more calls at once open more
    connections (a blocking pool would hold them back and the crowd would never gather), and
    POOL_SIZE of them are kept for the next calls."""
    settings = service.settings()
    crowd = checkout.POOL_SIZE + 4

    def one_round() -> set[int]:
        start = len(service.seen)
        with ThreadPoolExecutor(crowd) as pool:
            found = list(pool.map(lambda _: checkout.fetch_checkout(settings, "crowd"), range(crowd)))
        assert [c.id for c in found] == ["c1"] * crowd
        return {s.port for s in service.seen[start:]}

    first = one_round()
    second = one_round()
    assert len(first) == len(second) == crowd
    assert len(first & second) == checkout.POOL_SIZE


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_process_makes_its_own_pool(service: Service) -> None:
    settings = service.settings()
    checkout.fetch_checkout(settings, "c1")
    parents = checkout._pool_manager(service.url)
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            found = checkout.fetch_checkout(settings, "c1")
            own = checkout._pool_manager(service.url)
            code = 0 if found.id == "c1" and own is not parents else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    checkout.fetch_checkout(settings, "c1")  # the parent's pool is still the parent's
    assert checkout._pool_manager(service.url) is parents
    ports = [s.port for s in service.seen]
    assert ports[0] == ports[2] != ports[1]  # the child's call came on a connection of its own


# -- TLS -------------------------------------------------------------------------------------------


def _certificates(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA of our own (its PEM file) and a server context with a certificate it signed for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "checkout test CA")])
    usage = {
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


@pytest.fixture
def tls_service(tmp_path: Path) -> Iterator[Service]:
    ca_file, context = _certificates(tmp_path)
    server, url = _serve(context)
    try:
        yield Service(url, server, extra={"ca_file": ca_file})
    finally:
        _stop(server)


def test_tls_is_verified_against_the_ca_bundle_the_environment_names(
    tls_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_service.extra["ca_file"]))
    assert checkout.fetch_checkout(tls_service.settings(), "c1").id == "c1"


def test_tls_by_default_trusts_certifi_not_a_ca_of_our_own(tls_service: Service) -> None:
    with pytest.raises(CheckoutUnavailable, match="SSLError"):
        checkout.fetch_checkout(tls_service.settings(), "c1")
    assert tls_service.seen == []


def test_a_ca_bundle_that_cannot_be_read_fails_the_call_not_the_process(
    tls_service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(CheckoutUnavailable, match="SSLError"):
        checkout.fetch_checkout(tls_service.settings(), "c1")


# -- proxies ---------------------------------------------------------------------------------------


class _Proxy(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)  # a proxy gets the absolute URL
        body = json.dumps(CHECKOUT).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    _Proxy.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_call_goes_through_the_proxy_the_environment_names(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    settings = make_settings(checkout_service_url="http://checkout.invalid:8090")
    for _ in range(2):  # the second call uses what the first worked out
        found = checkout.fetch_checkout(settings, "c1")
        assert (found.id, found.userId) == ("c1", "u1")
    assert _Proxy.seen == ["http://checkout.invalid:8090/api/checkouts/getCheckout/c1"] * 2


def test_no_proxy_keeps_a_host_off_the_proxy_and_the_ca_bundle_is_the_environments(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("NO_PROXY", "checkout.internal")
    monkeypatch.setenv("no_proxy", "checkout.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/our-ca.pem")
    direct, verify = checkout._environment("http://checkout.internal:8090")
    assert direct == {}
    assert verify == "/etc/ssl/certs/our-ca.pem"
    proxied, _ = checkout._environment("http://checkout.invalid:8090")
    assert proxied.get("http") == proxy


def test_a_host_no_proxy_names_is_called_directly(
    service: Service, proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert checkout.fetch_checkout(service.settings(), "c1").id == "c1"
    assert _Proxy.seen == []
    assert [s.path for s in service.seen] == [PATH + "c1"]
