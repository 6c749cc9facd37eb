"""Real Celery workers on the real Redis broker."""

from __future__ import annotations

import pytest

from tests.conftest import start_worker, stop_worker
from tests.support import wait_until


def test_a_worker_process_runs_a_task_sent_by_name(celery_app, celery_worker) -> None:
    import os

    result = celery_app.send_task("system.ping").get(timeout=20)
    assert result["pong"] is True
    assert result["pid"] != os.getpid()


@pytest.mark.slow
def test_tasks_spread_over_worker_nodes_started_separately(celery_app, celery_worker) -> None:
    second = start_worker("w2", concurrency=1)
    try:

        def nodes() -> set[str]:
            return {name for reply in celery_app.control.ping(timeout=1) for name in reply}

        wait_until(
            lambda: any(n.startswith("w2-") for n in nodes()),
            timeout=60,
            message="second worker node answers",
        )
        pids: set[int] = set()
        for _ in range(5):
            results = [celery_app.send_task("system.ping") for _ in range(30)]
            pids |= {r.get(timeout=30)["pid"] for r in results}
            if len(pids) >= 3:
                break
        # two pool processes of w1 and at least the one of w2
        assert len(pids) >= 3, pids
    finally:
        stop_worker(second)
