"""Flower, the operators' view of the workers: ``python -m workers.flower``.

Runs Flower against the service's Celery app with basic auth from the
settings (FLOWER_USER / FLOWER_PASSWORD) on FLOWER_PORT.  Its ``/metrics``
(Prometheus, no auth, like ``/healthcheck``) carries Flower's task metrics
and the queue depth of ``workers.metrics``.
"""

from __future__ import annotations

import sys

from shared.settings import load_settings_or_exit


def main() -> int:
    settings = load_settings_or_exit()
    if settings.flower_password is None:
        print("FLOWER_PASSWORD is not set; refusing to start Flower without auth", file=sys.stderr)
        return 2
    from prometheus_client import REGISTRY

    from workers.app import create_celery
    from workers.metrics import QueueDepth

    app = create_celery(settings)
    # Flower's /metrics serves the default registry: queue depth joins its task metrics.
    REGISTRY.register(QueueDepth(settings))
    password = settings.flower_password.get_secret_value()
    app.start(
        [
            "flower",
            f"--port={settings.flower_port}",
            f"--address={settings.flower_address}",
            f"--basic-auth={settings.flower_user}:{password}",
            # Task arguments are ids only; still, never show them in full.
            "--max_tasks=10000",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
