"""Entry point of the refund bridge: ``python -m workers.bridge``."""

from __future__ import annotations

import signal
import sys
import threading

from shared.logs import configure_logging
from shared.settings import load_settings_or_exit


def main() -> int:
    # SIGTERM/SIGINT: finish the record in hand, commit it, leave the group.
    # Installed first, so that a stop during start-up is graceful too.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    settings = load_settings_or_exit()
    configure_logging(settings.log_level)
    from shared import db
    from workers.app import create_celery
    from workers.bridge import RefundBridge, metrics

    db.connect(settings)  # the refund inbox
    if settings.bridge_metrics_port:
        metrics.serve(settings.bridge_metrics_port, settings.metrics_address)
    bridge = RefundBridge(settings, create_celery(settings), stopping=stopping)
    bridge.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
