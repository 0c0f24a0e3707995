"""``llmpulse breaker``: read the fleet-wide breaker state or override it."""

from __future__ import annotations

import argparse
import asyncio

from pydantic import ValidationError

from llmpulse.cli.common import (
    EXIT_OK,
    SubParsers,
    UsageError,
    load_settings,
    usage_error,
    with_services,
)


def add_parser(sub: SubParsers) -> None:
    """Add ``breaker status|force-open|force-close|reset|disable [PROVIDER]``."""
    p = sub.add_parser(
        "breaker",
        help="read the fleet-wide breaker state or override it",
        description="status reads Redis (falls back to llm.breaker-state.v1); the other "
        "actions send a llm.breaker-control.v1 event that the breaker worker applies.",
    )
    p.add_argument("action", choices=("status", "force-open", "force-close", "reset", "disable"))
    p.add_argument("provider", nargs="?", help="provider (or provider/model) breaker key")
    p.add_argument("--reason", default="operator request", help="why (kept with the event)")
    p.add_argument("--until", help="force-open end time (then half_open), RFC 3339 or date")
    p.set_defaults(func=cmd_breaker)


def cmd_breaker(args: argparse.Namespace) -> int:
    """Print every breaker (status) or send one control event for PROVIDER."""
    from llmpulse.processors.billing.reports import parse_instant
    from llmpulse.processors.breaker import ops
    from llmpulse.schemas.events import BreakerAction

    settings = with_services(load_settings())
    if args.action == "status":
        source, snaps = asyncio.run(ops.status(settings))
        print(f"source: {source}")
        print(
            f"{'provider':<24}{'state':<12}{'version':>8}  {'since':<34}{'next attempt':<34}"
            f"{'fail rate':>9}{'calls':>7}"
        )
        for s in snaps:
            nxt = s.next_attempt_at.isoformat() if s.next_attempt_at else "-"
            print(
                f"{s.provider:<24}{s.state.value:<12}{s.version:>8}  {s.since.isoformat():<34}"
                f"{nxt:<34}{s.failure_rate:>9.2f}{s.calls_in_window:>7}"
            )
        return EXIT_OK
    if not args.provider:
        raise UsageError(f"breaker {args.action} needs a PROVIDER")
    # A malformed --until raises BillingInputError, an InputError: exit code 2.
    until = parse_instant(args.until, "until") if args.until else None
    action = BreakerAction(args.action.replace("-", "_"))
    try:
        control = asyncio.run(ops.send_control(settings, args.provider, action, args.reason, until))
    except ValidationError as exc:
        raise usage_error(exc) from None
    print(f"sent {control.action.value} for {control.provider} (event {control.event_id})")
    return EXIT_OK
