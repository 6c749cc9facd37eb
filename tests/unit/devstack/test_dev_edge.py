"""`make dev` puts nginx, on loopback, in front of gunicorn (without running it)."""

from __future__ import annotations

import ipaddress
import re
import subprocess

from devstack import dev, servers
from tests.environment import make_settings


def test_make_dev_runs_nginx_on_the_api_port_on_loopback_in_front_of_gunicorn() -> None:
    settings = make_settings(PAYMENT_SERVICE_PORT=8080)
    processes = dev._processes(settings)
    proxy = processes["proxy"]
    config_dir = servers.STACK_DIR / "nginx"
    site = (config_dir / "payment.conf").read_text()
    listen = re.findall(r"^\s*listen\s+(\S+);", site, re.M)
    assert listen == [f"127.0.0.1:{settings.port}"]
    host = listen[0].rsplit(":", 1)[0]
    assert ipaddress.ip_address(host).is_loopback
    assert re.search(rf"^\s*server\s+{re.escape(settings.web_bind)};", site, re.M)
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in site
    # The API behind it trusts exactly the one hop nginx adds.
    assert dev.CHILD_ENV["api"]["TRUSTED_PROXY_HOPS"] == "1"
    assert processes["api"][-1] == "web.wsgi:app"
    check = subprocess.run(
        [proxy[0], "-t", *proxy[1:]], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stderr
