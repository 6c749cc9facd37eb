"""The Celery application factory and the base class of every task."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.utils.time import get_exponential_backoff_interval
from pymongo.errors import ConnectionFailure

from shared import db, events
from shared.errors import RefundRejected, ServiceError, ServiceUnavailable
from shared.logs import configure_logging, log_context
from shared.models import Job
from shared.services import inbox, jobs
from shared.services.views import JobResult
from shared.settings import Settings, load_settings
from workers import broker

log = logging.getLogger(__name__)

#: Modules whose tasks every worker registers.
TASK_MODULES = [
    "workers.tasks.system",
    "workers.tasks.cards",
    "workers.tasks.payments",
    "workers.tasks.refunds",
    "workers.tasks.outbox",
    "workers.tasks.maintenance",
]


#: Tasks whose answer is kept (``ignore_result=False`` on the task): operators
#: read ``system.ping``'s (``celery call``, Flower).  The process that sends a
#: task need not have registered it, so the set is written here;
#: tests/workers/test_worker.py checks it against the registered tasks.
KEEPS_RESULT = frozenset({"system.ping"})

#: The work of one Kafka event, and what tells whether its refund is recorded.
EventWork = tuple[Callable[[], Any], Callable[[], bool]]

#: A batch sends the events it has not reached after this long on as a new
#: batch task, well inside the tasks' soft time limit (celeryconfig).
BATCH_TIME_BUDGET_SECONDS = 45.0

#: Events of a batch applied together (each step once for all of them).
BATCH_CHUNK = 100

#: How long a command to the broker waits for Redis to connect or answer; past
#: it the command fails (a send is retried by task_publish_retry_policy).  Well
#: above the workers' BRPOP wait (kombu's brpop_timeout, 1 s), whose answer is
#: read only once it came, and above the 2 s Redis may hold a write while its
#: append-only file's fsync lags.  The API waits less (web.API_BROKER_TIMEOUT_SECONDS).
BROKER_SOCKET_TIMEOUT_SECONDS = 5.0


class PaymentCelery(Celery):
    """A Celery app that carries the typed settings it was built from."""

    settings: Settings

    def send_task(self, name: str, *args: Any, **options: Any) -> Any:
        """Send as Celery does, keeping no result unless the caller asks for one.

        Celery's own ``send_task`` ignores ``task_ignore_result``: with a result
        backend configured, the sender subscribes to every task's result
        channel, one Redis SUBSCRIBE per job, held until the process ends.
        Nothing of ours reads a job's result from Celery (the job document is
        its result), so a send keeps none, unless the task keeps its answer
        (:data:`KEEPS_RESULT`) or the caller says ``ignore_result=False``.
        The flag travels in the message: the worker stores the result or not.
        """
        options.setdefault("ignore_result", name not in KEEPS_RESULT)
        return super().send_task(name, *args, **options)


class PaymentTask(Task):
    """Base of every task: process context and the shared delivery defaults.

    The MongoDB connection is opened lazily in the process that runs the task
    (after the worker's fork), never at import.  Tasks that are not idempotent
    keep the defaults (ack on receipt); idempotent ones set ``acks_late``.
    """

    abstract = True

    @property
    def settings(self) -> Settings:
        app: PaymentCelery = self.app
        return app.settings

    # Transient failures are retried by run_job and run_event with the
    # backoff of _backoff (exponential, capped, full jitter); Celery's own
    # autoretry options are not used.  A task that sets max_retries itself
    # (the beat tasks: 0) overrides this.
    @property
    def max_retries(self) -> int:
        """TASK_MAX_RETRIES."""
        return self.settings.task_max_retries

    @property
    def job_retention(self) -> timedelta:
        """How long an ended job is kept (JOB_RETENTION_DAYS)."""
        return timedelta(days=self.settings.job_retention_days)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        db.connect(self.settings)
        with log_context(task_id=self.request.id, task=self.name):
            return super().__call__(*args, **kwargs)

    def run_job(self, job_id: str, work: Callable[[Job], JobResult]) -> None:
        """Run a job's work; retry transient failures with backoff and jitter.

        Unexpected exceptions are retried too (the work is idempotent, and a
        half-done charge must resume rather than be abandoned).  When the
        retries run out, the job ends failed with the last error, so a client
        never polls a job that will not move again.
        """
        with log_context(job_id=job_id):
            try:
                jobs.run(job_id, work, retention=self.job_retention)
            except Exception as exc:
                if isinstance(exc, ServiceError):
                    error = exc
                elif isinstance(exc, ConnectionFailure):
                    error = ServiceUnavailable(f"The database did not answer: {type(exc).__name__}.")
                else:
                    log.exception("job %s: unexpected error", job_id)
                    error = ServiceError("An unexpected error occurred; it has been logged.")
                self._retry_or_end(job_id, exc, error)

    def _backoff(self) -> int:
        """Seconds before the next retry: exponential, capped, with full jitter."""
        return int(
            get_exponential_backoff_interval(
                factor=1,
                retries=self.request.retries,
                maximum=self.settings.task_retry_backoff_max_seconds,
                full_jitter=True,
            )
        )

    def _retry_or_end(self, job_id: str, exc: Exception, error: ServiceError) -> None:
        if self.request.retries >= self.max_retries:
            log.warning("job %s: retries exhausted: %s", job_id, error.detail)
            jobs.fail(job_id, error, retention=self.job_retention)
            return
        countdown = self._backoff()
        log.info("job %s: %s; retry in %ss", job_id, error.code, countdown)
        raise self.retry(exc=exc, countdown=countdown) from None

    def run_event(
        self,
        event_id: str,
        raw: str | None,
        work: Callable[[], Any],
        recorded: Callable[[], bool] | None = None,
    ) -> None:
        """Apply a Kafka event; set it aside if it can never apply; retry the transient.

        A rejected event changes nothing and goes to the dead-letter topic with
        its reason.  Transient failures retry with backoff and jitter.  When the
        retries run out, an event that ``recorded`` says was not recorded yet
        is dead-lettered (``retries_exhausted``), so that an operator can replay
        it; one that was (or that cannot be told) stays in the inbox, where the
        sweep sends it again: what is recorded is finished, never set aside (a
        replayed dead letter would be a new event, a second refund).  Every
        attempt touches the inbox entry, so the sweep never doubles a live chain.
        """
        with log_context(event_id=event_id):
            try:
                inbox.touch(event_id)
                work()
                inbox.settle(event_id, "applied")
            except RefundRejected as rejected:
                self._reject(event_id, raw, rejected)
            except Exception as exc:
                if not isinstance(exc, ServiceError | ConnectionFailure):
                    log.exception("event %s: unexpected error", event_id)
                if self.request.retries >= self.max_retries:
                    if _may_be_recorded(recorded):
                        log.error(
                            "event %s: recorded, not finished after its retries; the sweep resends it",
                            event_id,
                        )
                        return
                    events.dead_letter(self.settings, _raw(raw), event_id, "retries_exhausted", str(exc))
                    inbox.settle(event_id, "dead_lettered", "retries_exhausted")
                    return
                countdown = self._backoff()
                log.info("event %s: %s; retry in %ss", event_id, exc, countdown)
                raise self.retry(exc=exc, countdown=countdown) from None

    def _reject(self, event_id: str, raw: str | None, rejected: RefundRejected) -> None:
        """The event can never apply: it changed nothing; set it aside with its reason."""
        events.dead_letter(self.settings, _raw(raw), event_id, rejected.code, rejected.detail)
        inbox.settle(event_id, "dead_lettered", rejected.code)

    def run_batch(
        self, batch: list[dict[str, Any]], apply: Callable[[list[dict[str, Any]]], Mapping[str, Any]]
    ) -> None:
        """Apply a batch of Kafka events, each once, as its own per-event task would.

        Each item is a per-event task message (``{"task", "kwargs"}``, the
        kwargs holding the event id).  One read of the inbox starts the batch
        (events already settled are skipped; the others are touched only if
        the hand-over's time is old) and one write ends it (the applied ones
        settled).  In between, ``apply`` applies the events together, in
        chunks of ``BATCH_CHUNK`` (each step once for a chunk: see
        ``shared.services.refunds.apply_many``), and answers per event id:
        the refund-applied event, a :class:`RefundRejected` (the event is
        dead-lettered at once), or a transient error (the event is sent on as
        its own per-event task, which keeps the retry and dead-letter chain of
        ``run_event``, and the batch goes on: no event holds back or repeats
        another).

        If the worker dies mid-batch, the redelivered batch runs again: the
        events it had finished are no-ops by event id, the others resume
        where their steps stopped.  If the message is lost, every event not
        settled is still ``received`` in the inbox, where the sweep sends it
        again on its own.
        """
        started = time.monotonic()
        try:
            done = inbox.begin_batch(e["kwargs"]["event_id"] for e in batch)
        except Exception as exc:  # noqa: BLE001 - the database is away: the batch retries
            self._retry_batch(batch, exc)
            return
        todo: list[dict[str, Any]] = []
        for event in batch:
            event_id = event["kwargs"]["event_id"]
            if event_id not in done:
                done.add(event_id)  # a copy later in the batch changes nothing
                todo.append(event)
        applied: list[str] = []
        rest: list[dict[str, Any]] = []
        for first in range(0, len(todo), BATCH_CHUNK):
            if time.monotonic() - started > BATCH_TIME_BUDGET_SECONDS:
                rest = todo[first:]
                break
            chunk = todo[first : first + BATCH_CHUNK]
            try:
                outcomes = apply(chunk)
            except Exception as exc:  # noqa: BLE001 - unexpected: each event goes on alone
                outcomes = {e["kwargs"]["event_id"]: exc for e in chunk}
            applied.extend(self._conclude(chunk, outcomes))
        try:
            inbox.settle_many(applied, "applied")
        except Exception as exc:  # noqa: BLE001 - the database is away: the batch retries
            # A rerun of the applied events only settles them (they are no-ops by event id).
            finished = set(applied)
            self._retry_batch([e for e in batch if e["kwargs"]["event_id"] in finished] + rest, exc)
            return
        if rest:
            log.warning("batch out of time; %d events sent on as a new batch", len(rest))
            self.app.send_task(self.name, kwargs={"events": rest})

    def _conclude(self, chunk: list[dict[str, Any]], outcomes: Mapping[str, Any]) -> list[str]:
        """Dead-letter the rejected events of a chunk, send the failed ones on; the applied ones' ids."""
        applied = []
        for event in chunk:
            task, kwargs = event["task"], event["kwargs"]
            event_id = kwargs["event_id"]
            outcome = outcomes.get(event_id)
            with log_context(event_id=event_id):
                try:
                    if isinstance(outcome, RefundRejected):
                        self._reject(event_id, kwargs.get("raw"), outcome)
                    elif isinstance(outcome, Exception):
                        raise outcome
                    else:
                        applied.append(event_id)
                except Exception as exc:  # noqa: BLE001 - any failure: the event goes on alone
                    self._hand_on(task, kwargs, exc)
        return applied

    def _hand_on(self, task: str, kwargs: dict[str, Any], exc: Exception) -> None:
        """One event of a batch failed transiently: it goes on as its own per-event task."""
        event_id = kwargs.get("event_id")
        if not isinstance(exc, ServiceError | ConnectionFailure):
            log.exception("event %s: unexpected error in a batch", event_id)
        try:
            self.app.send_task(task, kwargs=kwargs, countdown=1)
        except Exception:  # the broker is away: the event is still received; the sweep sends it
            log.exception("event %s: could not send it on; left to the inbox sweep", event_id)
            return
        log.info("event %s: %s; sent on as %s", event_id, exc, task)

    def _retry_batch(self, batch: list[dict[str, Any]], exc: Exception) -> None:
        """The inbox did not answer: run these events again later, or leave them to the sweep."""
        if self.request.retries >= self.max_retries:
            log.error("batch of %d events: retries exhausted; the inbox sweep resends them", len(batch))
            return
        countdown = self._backoff()
        log.info("batch of %d events: %s; retry in %ss", len(batch), exc, countdown)
        raise self.retry(kwargs={"events": batch}, exc=exc, countdown=countdown) from None


def _may_be_recorded(recorded: Callable[[], bool] | None) -> bool:
    if recorded is None:
        return False
    try:
        return recorded()
    except Exception:  # the database is away: it may be recorded; never set it aside then
        log.exception("could not tell whether the event is recorded")
        return True


def _raw(raw: str | None) -> bytes | None:
    return None if raw is None else raw.encode()


def restore_sweep(seconds: int) -> dict[str, int]:
    """kombu's options for a sweep of the tasks dead workers had taken every ``seconds``.

    A worker calls the sweep every ``unacked_restore_interval`` seconds and
    scans Redis on every ``unacked_restore_throttle``-th call; kombu's
    defaults (10 and 10) scan every 100 s, which the default keeps.
    """
    interval = min(10, seconds)
    return {"unacked_restore_interval": interval, "unacked_restore_throttle": max(1, seconds // interval)}


def create_celery(
    settings: Settings | None = None, *, broker_timeout: float = BROKER_SOCKET_TIMEOUT_SECONDS
) -> PaymentCelery:
    """Build the Celery app from the settings (read from the environment if not given).

    ``broker_timeout``: how long a broker command waits for Redis to connect or answer.
    """
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = PaymentCelery("payment_service", task_cls=PaymentTask)
    app.settings = settings
    app.config_from_object("celeryconfig")
    transport_options: dict[str, Any] = {
        "visibility_timeout": settings.broker_visibility_timeout,
        **restore_sweep(settings.broker_restore_seconds),
    }
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    # The broker's own connections only (the result backend keeps Celery's
    # redis_socket_timeout): without a timeout, a Redis that takes connections
    # and never answers held a send, and the request waiting on it, forever.
    broker_options = {
        **transport_options,
        "socket_timeout": broker_timeout,
        "socket_connect_timeout": broker_timeout,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        # Celery prefers the CELERY_BROKER_URL environment variable to
        # ``broker_url``, but not to these: the settings decide, always.
        broker_read_url=settings.broker_url,
        broker_write_url=settings.broker_url,
        result_backend=settings.broker_url,
        broker_transport_options=broker_options,
        result_backend_transport_options=transport_options,
    )
    # kombu's Redis transport reusing its client objects, under kombu's own names.
    broker.install()
    # The command line's --pool and --concurrency win over these.
    app.conf.worker_pool = settings.worker_pool
    if settings.worker_concurrency is not None:
        app.conf.worker_concurrency = settings.worker_concurrency
    app.conf.include = TASK_MODULES
    return app
