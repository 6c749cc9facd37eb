"""The stack's Redis keeps queued tasks across a restart, even a hard kill."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from devstack.servers import redis_command
from tests.environment import make_settings
from tests.support import free_port, wait_until
from workers.app import create_celery


def _start(port: int, data: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(redis_command(port, data), stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    wait_until(lambda: _pong(client), timeout=20, message="private redis answers")
    client.close()
    # The answer must be this server's: another test's server may hold the port.
    assert proc.poll() is None, f"the private redis exited ({proc.returncode}): port {port} taken?"
    return proc


def _pong(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
def test_queued_tasks_survive_a_redis_restart(tmp_path: Path, stop_signal: int) -> None:
    port = free_port()
    proc = _start(port, tmp_path)
    try:
        app = create_celery(make_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0"))
        sent = {app.send_task("system.ping").id for _ in range(25)}
        time.sleep(1.5)  # appendfsync everysec: what was acknowledged a second ago is on disk
        proc.send_signal(stop_signal)
        proc.wait(timeout=20)
        # The same data on a port free now: the old one may have been taken meanwhile.
        port = free_port()
        proc = _start(port, tmp_path)
        app = create_celery(make_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0"))
        with app.connection_for_read() as conn, conn.SimpleQueue("maintenance") as queue:
            found = set()
            while len(found) < len(sent):
                message = queue.get(timeout=5)
                found.add(message.headers["id"])
                message.ack()
        assert found == sent
    finally:
        proc.kill()
        proc.wait()
