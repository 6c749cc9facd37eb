"""Real Celery workers on the real Redis broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from kombu import Connection

from tests.environment import start_worker, stop_worker
from tests.support import wait_until
from workers import broker
from workers.app import KEEPS_RESULT


def test_a_worker_process_runs_a_task_sent_by_name(payment_celery, payment_worker) -> None:
    import os

    result = payment_celery.send_task("system.ping").get(timeout=20)
    assert result["pong"] is True
    assert result["pid"] != os.getpid()


def test_a_sent_job_leaves_its_sender_subscribed_to_no_result_channel(payment_celery, payment_worker) -> None:
    """Celery's own send subscribes the sender to each task's result: one Redis channel per job, forever."""

    def subscribers(result: Any) -> int:
        channel = payment_celery.backend.get_key_for_task(result.id).decode()
        with redis.Redis.from_url(payment_celery.settings.broker_url) as client:
            return int(dict(client.pubsub_numsub(channel))[channel.encode()])

    job = payment_celery.send_task("outbox.publish_accepted")
    ping = payment_celery.send_task("system.ping")
    assert subscribers(job) == 0
    # A task that keeps its answer still gets it: the check can see a subscription.
    assert subscribers(ping) == 1
    assert ping.get(timeout=20)["pong"] is True


def test_the_tasks_that_keep_their_answer_are_the_ones_senders_keep_it_for(payment_celery) -> None:
    payment_celery.loader.import_default_modules()
    keeping = {
        name
        for name, task in payment_celery.tasks.items()
        if not name.startswith("celery.") and not task.ignore_result
    }
    assert keeping == KEEPS_RESULT


def test_the_broker_channel_builds_one_client_for_its_pool_and_a_new_one_for_a_new_pool(
    payment_celery,
) -> None:
    with payment_celery.connection_for_write() as connection:
        # kombu's own name: Flower reads the broker's kind from this URL.
        assert connection.as_uri().startswith("redis://")
        channel = connection.default_channel
        assert isinstance(channel, broker.Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        channel._disconnect_pools()  # what kombu does on a lost connection
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool
            assert third.ping()


def test_a_rediss_url_gets_the_same_channel_and_keeps_tls() -> None:
    broker.install()
    connection = Connection("rediss://127.0.0.1:6390/0")
    assert connection.get_transport_cls() is broker.Transport
    assert connection.ssl  # kombu turns TLS on by the scheme's name


@pytest.mark.slow
def test_tasks_spread_over_worker_nodes_started_separately(payment_celery, payment_worker) -> None:
    # A name of its own: a session-wide node (w2) answering would prove nothing.
    name = f"spread{uuid.uuid4().hex[:6]}"
    second = start_worker(name, concurrency=1)
    try:

        def node() -> str | None:
            names = {n for reply in payment_celery.control.ping(timeout=1) for n in reply}
            return next((n for n in names if n.startswith(f"{name}-")), None)

        full_name = wait_until(node, timeout=60, message="the new worker node answers")
        stats = payment_celery.control.inspect(destination=[full_name], timeout=5).stats()
        new_pids = set(stats[full_name]["pool"]["processes"])
        assert new_pids
        pids: set[int] = set()
        for _ in range(10):
            results = [payment_celery.send_task("system.ping", ignore_result=False) for _ in range(30)]
            pids |= {r.get(timeout=30)["pid"] for r in results}
            if pids & new_pids and len(pids - new_pids) >= 1:
                break
        # The new node ran some of them, and the first node some others.
        assert pids & new_pids, (pids, new_pids)
        assert pids - new_pids, pids
    finally:
        stop_worker(second)
