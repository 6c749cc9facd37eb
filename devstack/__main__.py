"""Command line of the local stack: ``python -m devstack COMMAND``.

install           install what is missing (Debian packages, Maven jars)
up [--record F]   start the servers that do not answer yet (Redis, MongoDB, Kafka)
down [--record F] stop the servers (only those listed in F, with --record)
status            say which servers answer
dev               the whole service in the foreground; Ctrl-C stops it all
token             print a signed development token
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devstack import servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install")
    p_up = sub.add_parser("up")
    p_up.add_argument("--record", type=Path, help="append the names started to this file")
    p_up.add_argument("servers", nargs="*", choices=[*servers.SERVERS, []], default=[])
    p_down = sub.add_parser("down")
    p_down.add_argument("--record", type=Path, help="stop only the servers listed in this file")
    sub.add_parser("status")
    sub.add_parser("dev")
    p_token = sub.add_parser("token", help="print a signed development token")
    p_token.add_argument("--user", help="userId (an ObjectId; random when omitted)")
    p_token.add_argument(
        "--type", dest="user_types", action="append", help="userType entry (repeatable; default: default)"
    )
    p_token.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            servers.install()
        elif args.command == "up":
            servers.up(args.servers or list(servers.SERVERS), record=args.record)
        elif args.command == "down":
            servers.down(record=args.record)
        elif args.command == "status":
            for name, ok in servers.status().items():
                print(f"{name:6} {'up' if ok else 'down'}")
        elif args.command == "dev":
            from devstack import dev

            return dev.run()
        elif args.command == "token":
            from devstack import tokens

            print(tokens.make_token(args.user, args.user_types or ["default"], args.minutes))
    except servers.StackError as exc:
        print(f"[devstack] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
