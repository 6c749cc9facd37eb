"""Create the service's Kafka topics: ``python -m workers.topics``.

Brokers run with topic auto-creation off, so a deployment creates its topics
explicitly (docker-compose runs this once before the other services).
Replication and partitions are arguments, for clusters larger than one node.
"""

from __future__ import annotations

import argparse
import sys

from shared.kafka import ensure_topics, grant
from shared.logs import configure_logging
from shared.settings import load_settings_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.topics", description=__doc__)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--replication", type=int, default=1)
    parser.add_argument(
        "--grant",
        nargs=2,
        metavar=("SERVICE", "ORDER_SERVICE"),
        help="also create the ACLs: SERVICE reads the refund topics and writes ours, "
        "ORDER_SERVICE writes the refund topics (Kafka principals; run as a Kafka admin)",
    )
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    configure_logging(settings.log_level)
    created = ensure_topics(settings, args.partitions, args.replication)
    for topic in settings.all_topics:
        print(f"{topic}: {'created' if topic in created else 'exists'}")
    if args.grant:
        grant(settings, *args.grant)
        print(f"ACLs: {args.grant[0]} reads the refund topics, {args.grant[1]} writes them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
