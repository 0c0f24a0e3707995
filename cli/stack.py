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
            "endpoints; down stops them; status prints one line per service and secure "
            "listener (exit 1 unless all run). Data survives down and up, a crashed or hung "
            "Kafka and a version change: each service comes back on its last port (a taken "
            "port is replaced, with a message, and clients find the new one through the state "
            "dir) with its "
            "Kafka topics, Prometheus series and Redis keys (saved when Redis stops cleanly). "
            "Only `stack down --wipe` deletes them. With --secure, Kafka also serves a "
            "SASL_SSL listener (SCRAM-SHA-512) and Redis a TLS port with an ACL user, on "
            "their own loopback ports, with a certificate of the stack's private CA (tls/ca.pem "
            "in the state dir); the random passwords stay in the state dir's credentials.json "
            "(owner only; kept by --wipe, like the CA) and are never printed."
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
    p.add_argument(
        "--secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "with up: also serve Kafka SASL_SSL and Redis TLS listeners (--no-secure: stop "
            "serving them); by default up keeps what the stack served last"
        ),
    )
    p.set_defaults(func=cmd_stack)


def cmd_stack(args: argparse.Namespace) -> int:
    """Print the endpoints (up), stop the stack (down) or one line per service (status).

    ``status`` exits 1 unless every service is running or external and every
    secure listener answers. No password is printed: the secure listeners show
    their user name and the files holding the CA and the credentials.
    """
    from llmpulse.devstack import stack
    from llmpulse.processors import addresses

    if args.wipe and args.action != "down":
        raise UsageError(f"--wipe goes with `stack down`, not `stack {args.action}`")
    if args.secure is not None and args.action != "up":
        flag = "--secure" if args.secure else "--no-secure"
        raise UsageError(f"{flag} goes with `stack up`, not `stack {args.action}`")
    settings = load_settings()
    if args.action == "up":
        ep = stack.up(settings, secure=args.secure)
        print(f"kafka      {ep.kafka_bootstrap}")
        print(f"redis      {addresses.redacted(ep.redis_url)}")
        print(f"prometheus {ep.prometheus_url}")
        secure = stack.find_secure_endpoints(settings)
        extra = [*secure.listener_lines(), *secure.file_lines()] if secure is not None else []
        for label, value in extra:
            print(f"{label:<11}{value}")
        return EXIT_OK
    if args.action == "down":
        stack.down(settings, wipe=args.wipe)
        return EXIT_OK
    rows = stack.status(settings)
    for st in rows.values():
        pid = f"pid {st.pid}" if st.pid else ""
        print(f"{st.name:<11}{st.state:<10}{st.address or '-':<28}{pid:<11}{st.detail}")
    listeners = stack.secure_status(settings)
    for ls in listeners:
        print(f"{ls.name:<11}{ls.state:<10}{ls.address:<28}{'':<11}{ls.detail}")
    secure = stack.find_secure_endpoints(settings)
    for label, value in secure.file_lines() if secure is not None else ():
        print(f"{label:<11}{value}")
    healthy = all(s.state in ("running", "external") for s in rows.values()) and all(
        ls.state == "running" for ls in listeners
    )
    return EXIT_OK if healthy else EXIT_FAILURE
