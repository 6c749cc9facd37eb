"""Flower shows operators the live workers, behind basic auth."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.environment import ROOT, RUN_ID, TEST_ENV
from tests.support import free_port, wait_until


@pytest.mark.slow
def test_flower_lists_the_live_workers_to_an_authenticated_operator(payment_worker) -> None:
    port = free_port()
    env = {**os.environ, "FLOWER_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.flower"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/workers?refresh=1"
    auth = ("admin", TEST_ENV["FLOWER_PASSWORD"])
    try:

        def workers() -> dict[str, object] | None:
            try:
                response = requests.get(url, auth=auth, timeout=10)
            except requests.ConnectionError:
                return None
            return response.json() if response.ok else None

        # Other nodes of this run (a second worker) may be up too: w1 must be among them.
        listed = wait_until(
            lambda: [n for n in workers() or {} if n.startswith(f"w1-{RUN_ID}")],
            timeout=60,
            interval=0.5,
            message="Flower lists this run's worker",
        )
        assert listed == [n for n in listed if RUN_ID in n]
        # Flower finds the broker's kind from its URL's scheme (redis://) to read the queues.
        lengths = requests.get(f"http://127.0.0.1:{port}/api/queues/length", auth=auth, timeout=10)
        assert lengths.status_code == 200, lengths.text
        names = {queue["name"] for queue in lengths.json()["active_queues"]}
        assert {"payments", "cards", "refunds", "maintenance"} <= names, names
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, auth=("admin", "wrong"), timeout=10).status_code == 401
    finally:
        # Flower did not always exit within 20 s of SIGTERM in a full run on a
        # loaded machine; one still up then is killed and reaped, so that it
        # cannot fail the next test as a leaked process.
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_refuses_to_start_without_a_password() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "workers.flower"],
        cwd="/",
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"FLOWER_PASSWORD is not set" in result.stderr
