"""The docs page renders the OpenAPI document in a real headless browser, with no internet.

Debian's Chromium loads ``/api/payment/docs`` from a served app and the test
finds every operation of the document on the rendered page.  The browser's
proxy is a closed port on loopback, so a page that needed anything from the
internet (a CDN's script, an online validator) would not render.  Chromium is
part of the stack devstack installs: without it the test fails, it does not skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.settings import Settings
from tests.support import ServedApp
from web import create_app
from web.docs import ASSETS, SCRIPT, STYLE
from web.openapi import build_document

DOCS = "/api/payment/docs"
#: Bounds the browser's run: virtual time for the page's scripts, and a wall-clock limit.
VIRTUAL_TIME_MS = 20_000
BROWSER_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def served(settings: Settings, payment_celery: Any) -> Iterator[ServedApp]:
    app = ServedApp(create_app(settings, payment_celery))
    yield app
    app.close()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is not installed: devstack installs it (`make test`, .ci/run)")
    return found


def _rendered(url: str, profile: Path) -> str:
    """The page's DOM once its scripts ran, as headless Chromium saw it."""
    completed = subprocess.run(
        [
            _chromium(),
            "--headless",
            # As root (CI) Chromium refuses to start sandboxed.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            # No internet: every request off loopback goes to a closed port.
            "--proxy-server=http://127.0.0.1:9",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_the_docs_page_shows_every_operation_of_the_document_in_a_real_browser(
    served: ServedApp, tmp_path: Path
) -> None:
    dom = _rendered(f"{served.url}{DOCS}", tmp_path / "profile")
    document = build_document()
    expected = {
        op["operationId"]: (op["tags"][0], method.upper(), path)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    # Swagger UI gives each operation block the id operations-<tag>-<operationId>
    # (and each tag's section operations-tag-<tag>).
    shown = set(re.findall(r'id="operations-(?!tag-)[^"-]+-([A-Za-z0-9]+)"', dom))
    assert shown == set(expected), dom[:2000]
    for operation_id, (tag, method, path) in expected.items():
        block = dom.split(f'id="operations-{tag}-{operation_id}"', 1)[1][:3000]
        assert f">{method}<" in block, operation_id
        assert path in block.replace("\u200b", ""), operation_id
    assert document["info"]["title"] in dom


def test_the_page_and_its_assets_are_served_by_the_service_itself(served: ServedApp) -> None:
    page = requests.get(f"{served.url}{DOCS}", timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources == [f"{DOCS}/{STYLE}", f"{DOCS}/{SCRIPT}"]
    for name, media_type in ((SCRIPT, "text/javascript"), (STYLE, "text/css")):
        asset = requests.get(f"{served.url}{DOCS}/{name}", timeout=10)
        assert asset.status_code == 200
        assert asset.headers["Content-Type"].startswith(media_type)
        assert asset.content == (ASSETS / name).read_bytes()
