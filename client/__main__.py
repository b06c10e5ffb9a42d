"""``redchat``: the console client. ``main(argv=None)`` reads the options, then runs.

    redchat [--host H] [--port P] [--password-file F] [--json] [--retries N] [NAME]

Interactive when stdin and stdout are terminals (and no --json); otherwise lines are
read from stdin and events printed to stdout (see docs/client.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from client.console import Options, read_password_file, run

__all__ = ["main"]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="redchat", description="Chat on a redchat server.")
    p.add_argument("name", nargs="?", help="your name (asked for when missing)")
    p.add_argument("--host", default="127.0.0.1", help="gateway host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    p.add_argument(
        "--password-file",
        metavar="F",
        help="read the password from the first line of F (else REDCHAT_PASSWORD, else asked)",
    )
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="give up after N failed reconnect attempts (default: keep trying)",
    )
    args = p.parse_args(argv)
    password = os.environ.get("REDCHAT_PASSWORD") or None
    if args.password_file:
        try:
            password = read_password_file(args.password_file)
        except (OSError, UnicodeDecodeError) as exc:
            p.error(f"cannot read --password-file: {exc}")
    if args.retries is not None and args.retries < 0:
        p.error("--retries must be 0 or more")
    return Options(
        host=args.host,
        port=args.port,
        user=args.name,
        password=password,
        json=args.json,
        retries=args.retries,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        return run(options)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
