"""The Celery application factory and the base class of every task."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from shared import db
from shared.logs import configure_logging, log_context
from shared.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Modules whose tasks every worker registers.
TASK_MODULES = ["workers.tasks.system"]


class PaymentCelery(Celery):
    """A Celery app that carries the typed settings it was built from."""

    settings: Settings


class PaymentTask(Task):
    """Base of every task: process context and the shared delivery defaults.

    The MongoDB connection is opened lazily in the process that runs the task
    (after the worker's fork), never at import.  Tasks that are not idempotent
    keep the defaults (ack on receipt); idempotent ones set ``acks_late``.
    """

    abstract = True
    # Transient failures are retried with exponential backoff and jitter.
    retry_backoff = True
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 8

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        app: PaymentCelery = self.app
        db.connect(app.settings)
        with log_context(task_id=self.request.id, task=self.name):
            return super().__call__(*args, **kwargs)


def create_celery(settings: Settings | None = None) -> PaymentCelery:
    """Build the Celery app from the settings (read from the environment if not given)."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = PaymentCelery("payment_service", task_cls=PaymentTask)
    app.settings = settings
    app.config_from_object("celeryconfig")
    transport_options: dict[str, Any] = {
        "visibility_timeout": settings.broker_visibility_timeout,
    }
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.broker_url,
        broker_transport_options=transport_options,
        result_backend_transport_options=dict(transport_options),
    )
    app.conf.include = TASK_MODULES
    return app
