"""The worker image starts, registers the public task names and runs a task against its database."""

from __future__ import annotations

from pytest_celery import CeleryTestSetup

from tests.helpers import PUBLIC_TASKS


def test_the_worker_image_registers_exactly_the_public_task_names(celery_setup: CeleryTestSetup) -> None:
    worker = celery_setup.worker
    replies = celery_setup.app.control.inspect(destination=[worker.hostname()], timeout=10).registered()
    assert replies, "the worker did not answer"
    registered = {name for names in replies.values() for name in names if not name.startswith("celery.")}
    assert registered == set(PUBLIC_TASKS)


def test_the_worker_image_answers_system_ping_after_reaching_mongodb(celery_setup: CeleryTestSetup) -> None:
    app = celery_setup.app
    # The service's worker writes the results it keeps to the broker (create_celery).
    app.conf.result_backend = app.conf.broker_url
    answer = app.send_task("system.ping", queue="maintenance").get(timeout=60)
    assert answer["pong"] is True
