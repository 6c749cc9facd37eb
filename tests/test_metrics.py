"""What an operator watches: each metrics endpoint of a locally started stack, scraped and parsed.

The API runs under gunicorn with two worker processes (multiprocess metrics,
served by the master on their own port), the session's real Celery worker
runs the tasks, Flower serves the task metrics and the queue depth, and a
real bridge process consumes the refund topics.  Every scrape is parsed with
Prometheus' text parser.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from bson import ObjectId
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.environment import ROOT, RUN_ID, TEST_ENV, make_settings
from tests.helpers import Client
from tests.support import free_port, stop_group, wait_until
from tests.workers.kafka_support import kcat_produce
from workers.app import create_celery
from workers.metrics import QueueDepth

#: A started stack on the shared servers.
pytestmark = pytest.mark.usefixtures("servers")

#: (metric family name as parsed, sample name, labels) -> value
Samples = dict[tuple[str, str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[set[str], Samples]:
    """The metric families and samples of a Prometheus text endpoint, parsed."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text[:500]
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for sample in family.samples:
            samples[(family.name, sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def value(samples: Samples, sample_name: str, **labels: str) -> float:
    """The sum of the samples of that name whose labels include ``labels``."""
    return sum(
        v
        for (_family, name, sample_labels), v in samples.items()
        if name == sample_name and set(labels.items()) <= set(sample_labels)
    )


def _reachable(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or still booting
        return False


@contextmanager
def process(argv: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen[bytes]]:
    logs = ROOT / ".stack" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"test-metrics-{name}-{RUN_ID}.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_group(proc)


@pytest.mark.slow
def test_the_api_workers_and_bridge_expose_metrics_that_move_with_real_traffic(
    settings: Settings, payment_worker: Any, topics: list[str]
) -> None:
    api_port, api_metrics, flower_port, bridge_metrics = (free_port() for _ in range(4))
    api_env = {
        # gunicorn itself, without the proxy (WEB_BIND is where gunicorn listens).
        "WEB_BIND": f"127.0.0.1:{api_port}",
        "API_METRICS_PORT": str(api_metrics),
        "WEB_CONCURRENCY": "2",
    }
    bridge_env = {
        "BRIDGE_METRICS_PORT": str(bridge_metrics),
        # Its own group and broker prefix: it reads the topics from the start,
        # and the tasks it sends wait where no worker takes them.
        "KAFKA_BRIDGE_GROUP": "metrics",
        "CELERY_KEY_PREFIX": f"{RUN_ID}metrics:",
    }
    api_url = f"http://127.0.0.1:{api_port}"
    urls = {
        "api": f"http://127.0.0.1:{api_metrics}/metrics",
        "flower": f"http://127.0.0.1:{flower_port}/metrics",
        "bridge": f"http://127.0.0.1:{bridge_metrics}/metrics",
    }
    gunicorn = [sys.executable, "-m", "gunicorn", "--config", "python:web.gunicorn_conf", "web.wsgi:app"]
    with (
        process(gunicorn, api_env, "api"),
        process([sys.executable, "-m", "workers.flower"], {"FLOWER_PORT": str(flower_port)}, "flower"),
        process([sys.executable, "-m", "workers.bridge"], bridge_env, "bridge"),
    ):
        wait_until(lambda: _reachable(f"{api_url}/healthz"), timeout=60, message="gunicorn answers")
        for name, url in urls.items():
            wait_until(lambda url=url: _reachable(url), timeout=60, message=f"{name} metrics answer")
        auth = ("admin", TEST_ENV["FLOWER_PASSWORD"])
        wait_until(
            lambda: any(
                RUN_ID in worker
                for worker in requests.get(
                    f"http://127.0.0.1:{flower_port}/api/workers?refresh=1", auth=auth, timeout=10
                ).json()
            ),
            timeout=60,
            interval=0.5,
            message="Flower follows this run's worker",
        )
        _api_families, api_before = scrape(urls["api"])

        # Real traffic: a card added through the API and run by the worker, reads, a miss.
        client = Client(api_url)
        card = client.add_card(money=10)
        for _ in range(3):
            assert client.call("GET", f"/get/{card['id']}").status_code == 200
        assert requests.get(f"{api_url}/api/payment/nowhere/{ObjectId()}", timeout=10).status_code == 404
        kcat_produce(
            settings, settings.topic_order_refunded, [{"paymentId": str(ObjectId()), "refunded": True}]
        )
        subprocess.run(
            [
                "kcat",
                "-P",
                "-b",
                ",".join(settings.kafka_bootstrap),
                "-t",
                settings.topic(settings.topic_product_refunded),
            ],
            input=b"this is not json\n",
            check=True,
            timeout=60,
        )

        # The API: requests by route template and status, and their latency, summed over both workers.
        families, api_after = scrape(urls["api"])
        assert {"payment_http_requests", "payment_http_request_duration_seconds"} <= families
        add = {"sample_name": "payment_http_requests_total", "method": "POST", "route": "/api/payment/add"}
        assert value(api_after, **add, status="202") - value(api_before, **add, status="202") >= 1
        read = {"method": "GET", "route": "/api/payment/get/<card_id>", "status": "200"}
        assert (
            value(api_after, "payment_http_requests_total", **read)
            - value(api_before, "payment_http_requests_total", **read)
            == 3
        )
        assert value(api_after, "payment_http_requests_total", route="<unmatched>", status="404") >= 1
        latency = {"method": "GET", "route": "/api/payment/get/<card_id>"}
        assert value(api_after, "payment_http_request_duration_seconds_count", **latency) >= 3
        assert value(api_after, "payment_http_request_duration_seconds_bucket", le="+Inf", **latency) >= 3

        # The workers, through Flower: tasks by name and outcome, runtime, queue depth.
        def flower_saw_the_card() -> tuple[set[str], Samples] | None:
            families, samples = scrape(urls["flower"])
            succeeded = value(samples, "flower_events_total", task="cards.add", type="task-succeeded")
            return (families, samples) if succeeded >= 1 else None

        families, flower = wait_until(flower_saw_the_card, timeout=30, interval=0.5, message="Flower counts")
        assert {"flower_events", "flower_task_runtime_seconds", "payment_celery_queue_depth"} <= families
        assert value(flower, "flower_task_runtime_seconds_count", task="cards.add") >= 1
        queues = {labels for (family, _n, labels) in flower if family == "payment_celery_queue_depth"}
        assert {dict(labels)["queue"] for labels in queues} == {"payments", "cards", "refunds", "maintenance"}

        # The bridge: lag per partition of each consumed topic, dead letters by reason.
        def bridge_moved() -> tuple[set[str], Samples] | None:
            families, samples = scrape(urls["bridge"])
            dead = value(samples, "payment_bridge_dead_letters_total", reason="not_json")
            handed = value(samples, "payment_bridge_events_total", outcome="handed_over")
            lag_topics = {
                dict(labels).get("topic")
                for (family, _n, labels) in samples
                if family == "payment_bridge_consumer_lag"
            }
            ready = dead >= 1 and handed >= 1 and set(settings.consumed_topics) <= lag_topics
            return (families, samples) if ready else None

        families, bridge = wait_until(bridge_moved, timeout=60, interval=0.5, message="bridge counts")
        assert {
            "payment_bridge_consumer_lag",
            "payment_bridge_dead_letters",
            "payment_refund_dead_letters",
        } <= families
        lags = [v for (family, _n, _labels), v in bridge.items() if family == "payment_bridge_consumer_lag"]
        assert lags
        assert all(lag >= 0 for lag in lags)


def test_queue_depth_counts_the_messages_waiting_in_each_queue(checkout_service: Any) -> None:
    settings = make_settings(broker_key_prefix=f"{RUN_ID}depth:")
    celery = create_celery(settings)
    for _ in range(3):
        celery.send_task("payments.charge", args=[str(ObjectId())])
    celery.send_task("cards.add", args=[str(ObjectId())], priority=6)
    (family,) = QueueDepth(settings).collect()
    depth = {sample.labels["queue"]: sample.value for sample in family.samples}
    assert depth == {"payments": 3, "cards": 1, "refunds": 0, "maintenance": 0}
