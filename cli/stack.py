"""``llmpulse stack``: start, stop or inspect the local Kafka, Redis and Prometheus."""

from __future__ import annotations

import argparse

from llmpulse.cli.common import EXIT_FAILURE, EXIT_OK, SubParsers, UsageError, load_settings


def add_parser(sub: SubParsers) -> None:
    """Add ``stack up|down|status`` and ``stack down --wipe``."""
    p = sub.add_parser(
        "stack",
        help="start, stop or inspect the local Kafka, Redis and Prometheus",
        description=(
            "up starts the local services (or reuses the running ones) and prints their "
            "endpoints; down stops them; status prints one line per service (exit 1 unless "
            "all run). Data survives down and up, a crashed or hung Kafka and a version "
            "change: each service comes back on its last port (a taken port is replaced, "
            "with a message, and clients find the new one through the state dir) with its "
            "Kafka topics, Prometheus series and Redis keys (saved when Redis stops cleanly). "
            "Only `stack down --wipe` deletes them."
        ),
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--wipe",
        action="store_true",
        help=(
            "with down: also delete the local Kafka storage, Redis dump and Prometheus data "
            "(and their logs), so the next `stack up` starts empty; ClickHouse data is kept"
        ),
    )
    p.set_defaults(func=cmd_stack)


def cmd_stack(args: argparse.Namespace) -> int:
    """Print the endpoints (up), stop the stack (down) or one line per service (status).

    ``status`` exits 1 unless every service is running or external.
    """
    from llmpulse.devstack import stack

    if args.wipe and args.action != "down":
        raise UsageError(f"--wipe goes with `stack down`, not `stack {args.action}`")
    settings = load_settings()
    if args.action == "up":
        ep = stack.up(settings)
        print(f"kafka      {ep.kafka_bootstrap}")
        print(f"redis      {ep.redis_url}")
        print(f"prometheus {ep.prometheus_url}")
        return EXIT_OK
    if args.action == "down":
        stack.down(settings, wipe=args.wipe)
        return EXIT_OK
    rows = stack.status(settings)
    for st in rows.values():
        pid = f"pid {st.pid}" if st.pid else ""
        print(f"{st.name:<11}{st.state:<10}{st.address or '-':<28}{pid:<11}{st.detail}")
    return (
        EXIT_OK if all(s.state in ("running", "external") for s in rows.values()) else EXIT_FAILURE
    )
