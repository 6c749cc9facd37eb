"""A plain Celery app with one no-op task: the ceiling of any Celery pipeline on this machine.

    celery -A bench.noop_app worker --concurrency 2 -P prefork

Celery's defaults (prefork, prefetch 4), JSON, no result backend; the task
events on, since the benchmarks see every task's end by its event.  The
broker and key prefix come from BENCH_PLAIN_BROKER and BENCH_PLAIN_PREFIX.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("plain", broker=os.environ.get("BENCH_PLAIN_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ.get("BENCH_PLAIN_PREFIX", "plain:")},
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """Nothing at all."""
