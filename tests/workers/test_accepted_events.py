"""The payment-accepted event: published at least once, only for payments that exist.

The outage test runs a private Kafka broker (the same artifacts and launcher
as the stack's), so that stopping it disturbs no other test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import servers
from shared.kafka import ensure_topics
from shared.models import Payment, PaymentState
from shared.settings import Settings
from tests.environment import ROOT, RUN_ID, make_settings, start_worker, stop_worker
from tests.helpers import Client
from tests.support import ServedApp, free_port, wait_until
from tests.workers.kafka_support import read_topic
from web import create_app
from workers.app import create_celery


def accepted(settings: Settings) -> list[dict[str, Any]]:
    return [
        {"key": r.key, **json.loads(r.value)}
        for r in read_topic(settings, settings.topic_payment_accepted, timeout_ms=1500)
    ]


def test_a_charged_payment_is_announced_with_its_id_on_the_order_services_topic(
    settings: Settings, client: Client, seed_checkout: Callable[..., dict[str, Any]]
) -> None:
    card = client.add_card(money=100)
    checkout = seed_checkout(client.user_id, total="12.50")
    payment = client.wait(client.pay(checkout["_id"], card["id"]))["result"]
    assert settings.topic_payment_accepted == "paymentService-payment-service-accept"
    events = wait_until(
        lambda: [e for e in accepted(settings) if e["paymentId"] == payment["id"]],
        timeout=30,
        message="accepted event",
    )
    assert events[0]["key"] == payment["id"].encode()
    assert events[0]["checkoutId"] == checkout["_id"]
    assert events[0]["totalPrice"] == 12.5
    assert Payment.objects.get(id=payment["id"]).acceptedEventPublished is True


class PrivateKafka:
    """A single-node broker on its own ports and log dir, to stop and start at will."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.controller = free_port(), free_port()
        servers.kafka_prepare(root, self.port, self.controller)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "out.log").open("ab") as out:
            self.proc = subprocess.Popen(
                servers.kafka_command(self.root, heap="384m", short_lived=True),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: servers.kafka_ready(self.port), timeout=90, interval=0.5, message="kafka up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path / "kafka")
    kafka.start()
    yield kafka
    kafka.stop()


@pytest.mark.slow(seconds=50)
def test_a_kafka_outage_delays_accepted_events_but_loses_none_and_invents_none(
    private_kafka: PrivateKafka,
    tmp_path: Path,
    checkout_service: ServedApp,
    seed_checkout: Callable[..., dict[str, Any]],
) -> None:
    env = {"KAFKA_URI": f"127.0.0.1:{private_kafka.port}", "CELERY_KEY_PREFIX": f"{RUN_ID}outage:"}
    settings = make_settings(**env)
    ensure_topics(settings)
    celery = create_celery(settings)
    api = ServedApp(create_app(settings, celery))
    worker = start_worker("outage", concurrency=1, queues="payments,cards,maintenance", env=env)
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "beat",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: celery.control.ping(timeout=1), timeout=60, message="worker answers")
        client = Client(api.url)
        card = client.add_card(money=1000)

        def pay() -> str:
            checkout = seed_checkout(client.user_id, total="10.00")
            job = client.wait(client.pay(checkout["_id"], card["id"]), timeout=90)
            assert job["status"] == "succeeded", job
            return str(job["result"]["id"])

        before = [pay() for _ in range(2)]
        private_kafka.stop()
        during = [pay() for _ in range(3)]  # charges go on while Kafka is away
        assert not any(Payment.objects.get(id=p).acceptedEventPublished for p in during)
        private_kafka.start()

        def announced() -> set[str]:
            return {e["paymentId"] for e in accepted(settings)}

        wait_until(
            lambda: set(before + during) <= announced(),
            timeout=120,
            interval=1,
            message="every accepted payment announced",
        )
        # Only payments that exist and are charged are ever announced.
        for payment_id in announced():
            assert Payment.objects.get(id=payment_id).state == PaymentState.CHARGED
        assert all(Payment.objects.get(id=p).acceptedEventPublished for p in before + during)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        stop_worker(worker)
        api.close()
