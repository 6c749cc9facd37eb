"""The development token command and the checkout stand-in keep their contracts."""

from __future__ import annotations

import os
import subprocess
import sys

import jwt
import requests
from bson import ObjectId

from tests.environment import ROOT, TEST_ENV
from tests.support import ServedApp


def test_the_token_command_signs_user_service_shaped_claims() -> None:
    user = str(ObjectId())
    out = subprocess.run(
        [sys.executable, "-m", "devstack", "token", "--user", user, "--type", "admin", "--type", "member"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    claims = jwt.decode(out, TEST_ENV["JWT_SEC"], algorithms=["HS256"])
    assert claims["userId"] == user
    assert claims["userType"] == ["admin", "member"]
    assert claims["exp"] - claims["iat"] == 3600
    assert "sub" not in claims


def test_the_checkout_standin_serves_seeded_checkouts_and_404s_the_rest(
    checkout_service: ServedApp,
) -> None:
    seeded = requests.post(
        f"{checkout_service.url}/_standin/checkouts",
        json={"userId": str(ObjectId()), "totalPrice": 59.97, "products": []},
        timeout=5,
    ).json()
    got = requests.get(f"{checkout_service.url}/api/checkouts/getCheckout/{seeded['_id']}", timeout=5)
    assert got.status_code == 200
    assert got.json()["isActive"] is True
    assert got.json()["totalPrice"] == 59.97
    missing = requests.get(f"{checkout_service.url}/api/checkouts/getCheckout/{ObjectId()}", timeout=5)
    assert missing.status_code == 404
    assert isinstance(missing.json(), str)


def test_the_checkout_standin_injects_the_faults_it_is_asked_for(checkout_service: ServedApp) -> None:
    seeded = requests.post(f"{checkout_service.url}/_standin/checkouts", json={"totalPrice": 1}, timeout=5)
    url = f"{checkout_service.url}/api/checkouts/getCheckout/{seeded.json()['_id']}"
    requests.put(f"{checkout_service.url}/_standin/fault", json={"status": 503, "count": 2}, timeout=5)
    assert [requests.get(url, timeout=5).status_code for _ in range(3)] == [503, 503, 200]
