"""The task layer on pytest-celery's fixtures: names, routes and delivery options, no server.

Task names are public API: the API sends jobs by name, the refund bridge
sends refund events by name, and the routes of ``celeryconfig`` match them by
prefix.  A renamed task would leave messages in a queue that no code reads.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController
from celery.exceptions import TimeoutError as ResultTimeout

import celeryconfig
from shared.services import jobs
from tests.environment import make_settings
from tests.helpers import PUBLIC_TASKS
from workers import bridge
from workers.app import TASK_MODULES, PaymentTask, create_celery

#: Tasks that are idempotent: acknowledged after they ran, redelivered if their worker dies.
ACK_LATE = {"cards.add", "cards.delete", "payments.charge", "payments.delete"} | {
    "refunds.refund_order",
    "refunds.refund_product",
    "refunds.apply_batch",
}


def _service_tasks(app: Celery) -> dict[str, Any]:
    """The tasks of the service's task modules that the app registered (not Celery's, not the plugin's)."""
    return {name: task for name, task in app.tasks.items() if task.__module__ in TASK_MODULES}


def _queue_of(app: Celery, name: str) -> str:
    route = app.amqp.router.route({}, name)
    return str(route["queue"].name)


def test_the_workers_register_exactly_the_public_task_names(celery_app: Celery) -> None:
    assert set(_service_tasks(celery_app)) == set(PUBLIC_TASKS)


def test_every_task_is_routed_to_its_domain_queue(celery_app: Celery) -> None:
    queues = {queue.name for queue in celeryconfig.task_queues}
    for name, queue in PUBLIC_TASKS.items():
        assert _queue_of(celery_app, name) == queue, name
        assert queue in queues


def test_what_the_api_the_bridge_and_beat_send_by_name_is_a_registered_task(celery_app: Celery) -> None:
    registered = set(_service_tasks(celery_app))
    sent = {
        *jobs.TASKS.values(),
        bridge.REFUND_ORDER_TASK,
        bridge.REFUND_PRODUCT_TASK,
        *(entry["task"] for entry in celeryconfig.beat_schedule.values()),
    }
    assert sent <= registered, sent - registered


def test_idempotent_tasks_ack_late_and_the_others_on_receipt(celery_app: Celery) -> None:
    for name, task in _service_tasks(celery_app).items():
        assert isinstance(task, PaymentTask), name
        late = name in ACK_LATE
        assert (task.acks_late, task.reject_on_worker_lost) == (late, late), name


def test_the_beat_tasks_are_never_retried_by_celery(celery_app: Celery) -> None:
    tasks = _service_tasks(celery_app)
    for entry in celeryconfig.beat_schedule.values():
        assert tasks[entry["task"]].max_retries == 0, entry["task"]


@pytest.fixture(scope="session")
def echo(request: pytest.FixtureRequest, celery_session_app: Celery) -> Any:
    """A task of the test, in the service's maintenance queue, on pytest-celery's session worker.

    Its base is the service's PaymentTask, which opens the process's MongoDB
    connection before it runs (lazily: no server is reached) from the app's settings.
    """
    celery_session_app.settings = make_settings()  # type: ignore[attr-defined]

    @celery_session_app.task(name="system.echo_for_tests", ignore_result=False)
    def echo_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    worker: TestWorkController = request.getfixturevalue("celery_session_worker")
    assert echo_task.name in worker.app.tasks
    return echo_task


def test_a_message_sent_by_name_reaches_a_worker_and_money_arrives_exact(
    celery_session_app: Celery, echo: Any
) -> None:
    assert _queue_of(celery_session_app, echo.name) == "maintenance"
    result = celery_session_app.send_task(
        echo.name, args=["65a1f0c2e4b0a1b2c3d4e5f6"], kwargs={"price": Decimal("0.10")}
    )
    answer = result.get(timeout=10)
    assert answer == {"args": ["65a1f0c2e4b0a1b2c3d4e5f6"], "kwargs": {"price": Decimal("0.10")}}
    assert isinstance(answer["kwargs"]["price"], Decimal)  # never a binary float on the way


def test_a_worker_refuses_a_pickled_message(celery_session_app: Celery, echo: Any) -> None:
    assert celery_session_app.conf.accept_content == ["json"]
    refused = celery_session_app.send_task(echo.name, args=["pickled"], serializer="pickle")
    with pytest.raises(ResultTimeout):
        refused.get(timeout=2)
    # The worker goes on with JSON messages after refusing it.
    assert echo.delay("json").get(timeout=10) == {"args": ["json"], "kwargs": {}}


def test_the_sweep_for_a_dead_workers_tasks_keeps_kombus_period_unless_set() -> None:
    """kombu scans for the unacknowledged tasks of a dead worker every interval x throttle seconds."""
    default = create_celery(make_settings()).conf.broker_transport_options
    assert (default["unacked_restore_interval"], default["unacked_restore_throttle"]) == (10, 10)
    fast = create_celery(make_settings(CELERY_RESTORE_SECONDS=2)).conf.broker_transport_options
    assert (fast["unacked_restore_interval"], fast["unacked_restore_throttle"]) == (2, 1)
    slow = create_celery(make_settings(CELERY_RESTORE_SECONDS=300)).conf.broker_transport_options
    assert (slow["unacked_restore_interval"], slow["unacked_restore_throttle"]) == (10, 30)
