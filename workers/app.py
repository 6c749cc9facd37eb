"""The Celery application factory and the base class of every task."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.utils.time import get_exponential_backoff_interval
from pymongo.errors import ConnectionFailure

from shared import db
from shared.errors import ServiceError, ServiceUnavailable
from shared.logs import configure_logging, log_context
from shared.models import Job
from shared.services import jobs
from shared.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Modules whose tasks every worker registers.
TASK_MODULES = ["workers.tasks.system", "workers.tasks.cards", "workers.tasks.payments"]


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

    @property
    def settings(self) -> Settings:
        app: PaymentCelery = self.app
        return app.settings

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        db.connect(self.settings)
        with log_context(task_id=self.request.id, task=self.name):
            return super().__call__(*args, **kwargs)

    def run_job(self, job_id: str, work: Callable[[Job], dict[str, Any]]) -> None:
        """Run a job's work; retry transient failures with backoff and jitter.

        When the retries run out, the job ends failed with the last transient
        error (503), so a client never polls a job that will not move again.
        """
        with log_context(job_id=job_id):
            try:
                jobs.run(job_id, work)
            except (ServiceError, ConnectionFailure) as exc:
                error = exc if isinstance(exc, ServiceError) else ServiceUnavailable(str(exc))
                if self.request.retries >= self.max_retries:
                    log.warning("job %s: retries exhausted: %s", job_id, error.detail)
                    jobs.fail(job_id, error)
                    return
                countdown = get_exponential_backoff_interval(
                    factor=1, retries=self.request.retries, maximum=self.retry_backoff_max, full_jitter=True
                )
                log.info("job %s: %s; retry in %ss", job_id, error.code, countdown)
                raise self.retry(exc=exc, countdown=countdown) from None


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
