"""Check that the money adds up: ``python -m workers.reconcile``.

Prints each discrepancy (one line, with its ids) as it is found, then a JSON
summary.  Exit code 0: nothing found; 1: discrepancies; 2: bad configuration.
It only reads; it never repairs.  The checks are described in
shared.services.reconcile; beat runs the same as ``maintenance.reconcile``.
"""

from __future__ import annotations

import argparse
import json
import sys

from shared.logs import configure_logging
from shared.settings import load_settings_or_exit


def main(argv: list[str] | None = None) -> int:
    from shared.services import reconcile

    parser = argparse.ArgumentParser(prog="python -m workers.reconcile", description=__doc__)
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=reconcile.DEFAULT_GRACE_SECONDS,
        help="changes younger than this are taken as in flight, not as discrepancies",
    )
    parser.add_argument("--batch-size", type=int, default=reconcile.DEFAULT_BATCH_SIZE)
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    configure_logging(settings.log_level)
    from shared import db

    db.connect(settings)
    summary = reconcile.run(
        db.database(),
        lambda discrepancy: print(discrepancy, flush=True),
        grace_seconds=args.grace_seconds,
        batch_size=args.batch_size,
    )
    print(json.dumps({"reconcile": summary.as_dict()}, sort_keys=True))
    return 1 if summary.total else 0


if __name__ == "__main__":
    sys.exit(main())
