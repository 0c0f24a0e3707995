"""``llmpulse stack``: start, stop or inspect the local Kafka, Redis and Prometheus."""

from __future__ import annotations

import argparse

from llmpulse.cli.common import EXIT_FAILURE, EXIT_OK, SubParsers, load_settings


def add_parser(sub: SubParsers) -> None:
    """Add ``stack up|down|status``."""
    p = sub.add_parser("stack", help="start, stop or inspect the local Kafka, Redis and Prometheus")
    p.add_argument("action", choices=("up", "down", "status"))
    p.set_defaults(func=cmd_stack)


def cmd_stack(args: argparse.Namespace) -> int:
    """Print the endpoints (up), stop the stack (down) or one line per service (status).

    ``status`` exits 1 unless every service is running or external.
    """
    from llmpulse.devstack import stack

    settings = load_settings()
    if args.action == "up":
        ep = stack.up(settings)
        print(f"kafka      {ep.kafka_bootstrap}")
        print(f"redis      {ep.redis_url}")
        print(f"prometheus {ep.prometheus_url}")
        return EXIT_OK
    if args.action == "down":
        stack.down(settings)
        return EXIT_OK
    rows = stack.status(settings)
    for st in rows.values():
        pid = f"pid {st.pid}" if st.pid else ""
        print(f"{st.name:<11}{st.state:<10}{st.address or '-':<28}{pid:<11}{st.detail}")
    return (
        EXIT_OK if all(s.state in ("running", "external") for s in rows.values()) else EXIT_FAILURE
    )
