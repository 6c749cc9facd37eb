"""What the benchmarks share: a private world on the running servers, and percentiles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from devstack import servers


def run_env(run: str) -> dict[str, str]:
    """The environment of a benchmark run: its own database, broker prefix and topics."""
    return {
        "PAYMENT_ENV": "development",
        "MONGO_URL": f"mongodb://127.0.0.1:{servers.MONGO_PORT}/{run}",
        "JWT_SEC": "bench-jwt-secret-0123456789abcdefghijkl",
        "CARD_FINGERPRINT_KEY": "bench-card-fingerprint-key-0123456789abcdef",
        "KAFKA_URI": f"127.0.0.1:{servers.KAFKA_PORT}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{servers.REDIS_PORT}/0",
        "CELERY_KEY_PREFIX": f"{run}:",
        "KAFKA_TOPIC_PREFIX": f"{run}.",
        "LOG_LEVEL": "WARNING",
        # The benchmarks measure charges and refunds, not the per-user limits.
        "RATE_LIMIT_WRITES": "100000/minute",
        "RATE_LIMIT_READS": "1000000/minute",
        "OPEN_JOBS_PER_USER": "10000",
        # No metrics servers: they would compete with `make dev`'s for the ports.
        "API_METRICS_PORT": "0",
        "BRIDGE_METRICS_PORT": "0",
    }


def worker_command(node: str, queues: str) -> list[str]:
    """A worker node as ``make dev`` runs them: one pool process, fair scheduling."""
    celery = str(Path(sys.executable).parent / "celery")
    return [
        celery,
        "-A",
        "workers.celery_app",
        "worker",
        "--concurrency",
        "1",
        "-O",
        "fair",
        "-Q",
        queues,
        "-n",
        f"{node}@%h",
        "--loglevel",
        "WARNING",
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def drop_run(run: str, env: dict[str, str], settings: Any) -> None:
    """Delete the run's database, Redis keys and topics."""
    import redis
    from kafka import KafkaAdminClient
    from pymongo import MongoClient

    mongo: MongoClient[dict[str, Any]]
    with MongoClient(env["MONGO_URL"]) as mongo:
        mongo.drop_database(run)
    with redis.Redis.from_url(env["CELERY_BROKER_URL"]) as client:
        keys = list(client.scan_iter(f"{run}:*"))
        if keys:
            client.delete(*keys)
    admin = KafkaAdminClient(**settings.kafka_client_options)
    try:
        admin.delete_topics(settings.all_topics)
    finally:
        admin.close()
