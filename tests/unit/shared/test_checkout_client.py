"""The checkout client reads the environment's proxies once, and still goes through them.

requests would walk every environment variable twice on each call to find
HTTP_PROXY, NO_PROXY and the CA bundle; the client works them out once per
service address instead.  A call must still take the proxy the environment
names, and NO_PROXY must still keep a host off it: a local HTTP server
stands in for the proxy and records what reaches it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from shared.services import checkout
from tests.environment import make_settings

CHECKOUT = {"_id": "c1", "userId": "u1", "isActive": True, "totalPrice": 5.3, "products": []}


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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Proxy.seen = []
    checkout._environment.cache_clear()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        for session in checkout._sessions.values():
            session.close()  # its kept-alive connection to the proxy
        checkout._sessions.clear()
        server.shutdown()
        server.server_close()
        checkout._environment.cache_clear()


def test_a_call_goes_through_the_proxy_the_environment_names(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
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
