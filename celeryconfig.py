"""Static Celery options shared by every process that sends or runs tasks.

What depends on the environment (broker URL, key prefix) is applied on top by
``workers.celery_app.create_celery`` from the typed settings; what is here is
the same everywhere.  Task names are public API: routes match them by prefix.
"""

from celery.schedules import crontab
from kombu.entity import Queue

# Messages carry ids and plain JSON, never pickles.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]

# Job state lives in MongoDB (the Job document); Celery results are kept only
# for the few tasks that ask for them (system.ping).
task_ignore_result = True
result_expires = 3600

# One queue per domain, so operators can scale or pause them separately.
task_queues = (
    Queue("payments"),
    Queue("cards"),
    Queue("refunds"),
    Queue("maintenance"),
)
#: The queues' names, in the form ``celery worker -Q`` takes them: what a
#: worker that serves every queue is started with (make dev, the bench, tests).
ALL_QUEUES = ",".join(queue.name for queue in task_queues)
task_default_queue = "maintenance"
task_routes = {
    "payments.*": {"queue": "payments"},
    "cards.*": {"queue": "cards"},
    "refunds.*": {"queue": "refunds"},
    "outbox.*": {"queue": "maintenance"},
    "system.*": {"queue": "maintenance"},
    "jobs.*": {"queue": "maintenance"},
    "maintenance.*": {"queue": "maintenance"},
}

# A worker takes one message at a time per process: a crash loses (and the
# broker redelivers) at most that one, and long tasks do not hoard others.
worker_prefetch_multiplier = 1
# Delivery contract defaults; tasks that are idempotent opt into acks_late in
# workers.base.
task_acks_late = False
task_reject_on_worker_lost = False
task_time_limit = 120
task_soft_time_limit = 90

# Publishing must not silently fail: retry a lost broker connection.
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3}
broker_connection_retry_on_startup = True

# Flower and `celery events` need task events.
worker_send_task_events = True
task_send_sent_event = True

# Celery beat: the outbox of payment-accepted events is swept every few seconds;
# the money is reconciled once a day.
beat_schedule = {
    "publish-accepted-events": {"task": "outbox.publish_accepted", "schedule": 5.0},
    "requeue-stale-jobs": {"task": "jobs.requeue_stale", "schedule": 60.0},
    # A job whose message may be lost (a Redis crash loses its last second of
    # writes; a worker node killed as it takes a message loses it) is sent
    # again soon, not after the stale sweep's 10 minutes: queued after
    # JOB_UNSTARTED_REQUEUE_SECONDS if the broker restarted since or its queue
    # is empty; running after a broker restart, a task's time limit and longest backoff.
    "requeue-unstarted-jobs": {"task": "jobs.requeue_unstarted", "schedule": 20.0},
    # Reads only; its discrepancies go to the logs as errors.
    "reconcile-daily": {"task": "maintenance.reconcile", "schedule": crontab(hour=3, minute=17)},
    # Backstop of the jobs' TTL index (a server without a TTL monitor).
    "purge-expired-jobs": {"task": "jobs.purge_expired", "schedule": 3600.0},
}

worker_hijack_root_logger = False
enable_utc = True
timezone = "UTC"
