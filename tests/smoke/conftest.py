"""The worker image on pytest-celery's containers: Redis as broker, MongoDB, the image of the Dockerfile.

These tests need a Docker engine; where none answers, every test here is
skipped with that reason (the rest of the suite does not need one).  Run them
with ``make test-smoke``.  pytest-celery builds the service's image from the
Dockerfile, starts a Redis broker and a MongoDB container on a network of the
test, and runs ``celery -A workers.celery_app worker`` in the image; the test
process talks to the worker through the broker, like the API does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celery
import docker
import pytest
from docker.errors import DockerException
from pytest_celery import CeleryBrokerCluster, CeleryWorkerContainer, RedisTestBroker
from pytest_docker_tools import build, container, fxtr

import celeryconfig
from tests.environment import ROOT, TEST_ENV

#: The queues a worker of the service consumes (celeryconfig.task_queues).
QUEUES = celeryconfig.ALL_QUEUES


def _docker_engine_missing() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except DockerException as exc:
        return f"no Docker engine answers ({type(exc).__name__}): the smoke suite needs one"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    smoke = [item for item in items if item.path.is_relative_to(ROOT / "tests" / "smoke")]
    if not smoke:
        return
    reason = _docker_engine_missing()
    if reason:
        for item in smoke:
            item.add_marker(pytest.mark.skip(reason=reason))


class PaymentWorkerContainer(CeleryWorkerContainer):
    """The service's worker process in the service's own image."""

    @classmethod
    def version(cls) -> str:
        return str(celery.__version__)

    @classmethod
    def worker_name(cls) -> str:
        return "payment_smoke"

    @classmethod
    def worker_queue(cls) -> str:
        return QUEUES

    @classmethod
    def command(cls, *args: str, **_kwargs: Any) -> list[str]:
        return [
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            f"--loglevel={cls.log_level()}",
            "-n",
            f"{cls.worker_name()}@%h",
            "-Q",
            cls.worker_queue(),
            *args,
        ]


#: The image every process of the service runs (the Dockerfile at the root).
payment_image = build(path=str(ROOT), tag="payment-service/worker:smoke")

#: The database the worker's tasks use.
smoke_mongo = container(image="mongo:7", network="{default_pytest_celery_network.name}")

default_worker_container = container(
    image="{payment_image.id}",
    environment=fxtr("default_worker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=PaymentWorkerContainer,
    timeout=120,
    command=fxtr("default_worker_command"),
)


@pytest.fixture
def default_worker_container_cls() -> type[CeleryWorkerContainer]:
    return PaymentWorkerContainer


@pytest.fixture(scope="session")
def default_worker_container_session_cls() -> type[CeleryWorkerContainer]:
    return PaymentWorkerContainer


@pytest.fixture
def default_worker_env(celery_worker_cluster_config: dict[str, Any], smoke_mongo: Any) -> dict[str, str]:
    """The service's settings in the container: the test's secrets, the broker and MongoDB of this test."""
    env = PaymentWorkerContainer.initial_env(celery_worker_cluster_config)
    return {
        **{k: v for k, v in TEST_ENV.items() if k not in {"CELERY_KEY_PREFIX", "KAFKA_TOPIC_PREFIX"}},
        "CELERY_BROKER_URL": env["CELERY_BROKER_URL"],
        "MONGO_URL": f"mongodb://{smoke_mongo.name}:27017/payments_smoke",
        "KAFKA_URI": "kafka.invalid:9092",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def celery_broker_cluster(celery_redis_broker: RedisTestBroker) -> Iterator[CeleryBrokerCluster]:
    """Redis only: the service's broker."""
    cluster = CeleryBrokerCluster(celery_redis_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster() -> None:
    """No backend container: the service keeps its few results on the broker (create_celery)."""
    return
