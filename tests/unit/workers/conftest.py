"""pytest-celery's own fixtures, configured like the service, on an in-memory broker.

``celery_app`` (one per test) and ``celery_session_app`` with
``celery_session_worker`` (an in-thread worker for the session) come from
pytest-celery; here they get the service's static options (``celeryconfig``)
and its task base class, with the in-memory transport instead of Redis, so
the task layer is tested with no server.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping
from typing import Any

import pytest

import celeryconfig
from workers.app import TASK_MODULES, PaymentTask

# The task modules are imported once, before any test app exists: pytest-celery
# forgets the shared tasks announced while one of its apps is set up, and
# every app created afterwards registers those imported before.
for _module in TASK_MODULES:
    importlib.import_module(_module)


def _static_options() -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(celeryconfig).items()
        if name.islower()
        and not name.startswith("_")
        and not isinstance(value, types.ModuleType | type)
        and not callable(value)
    }


@pytest.fixture(scope="session")
def celery_config() -> Mapping[str, Any]:
    """``celeryconfig`` as every process of the service loads it, on the in-memory transport.

    Celery prefers the CELERY_BROKER_URL of the environment (the service's
    own setting, which the suite sets) to ``broker_url``, but not to the
    read and write URLs.
    """
    return {
        **_static_options(),
        "broker_url": "memory://",
        "broker_read_url": "memory://",
        "broker_write_url": "memory://",
        "result_backend": "cache+memory://",
        "include": TASK_MODULES,
    }


@pytest.fixture(scope="session")
def celery_parameters() -> Mapping[str, Any]:
    return {"task_cls": PaymentTask}


@pytest.fixture(scope="session")
def celery_includes() -> list[str]:
    """The task modules every worker of the service registers."""
    return TASK_MODULES


@pytest.fixture(scope="session")
def celery_worker_parameters() -> Mapping[str, Any]:
    """The service's queues; no start-up ping (``task_ignore_result`` leaves Celery's own ping no answer)."""
    return {"queues": [queue.name for queue in celeryconfig.task_queues], "perform_ping_check": False}
