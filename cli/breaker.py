"""``llmpulse breaker``: read the fleet-wide breaker state or override it."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from llmpulse.cli.common import (
    EXIT_OK,
    SubParsers,
    UsageError,
    load_settings,
    usage_error,
    with_services,
)

if TYPE_CHECKING:
    from llmpulse.schemas.events import BreakerControl


def add_parser(sub: SubParsers) -> None:
    """Add ``breaker status|force-open|force-close|reset|disable [PROVIDER]``."""
    p = sub.add_parser(
        "breaker",
        help="read the fleet-wide breaker state or override it",
        description="status reads Redis (falls back to llm.breaker-state.v1 when Redis is "
        "unreachable; a Redis that refuses the credentials or TLS of LLMPULSE_REDIS_URL is an "
        "error, exit 1); the other actions send a llm.breaker-control.v1 event that the "
        "breaker worker applies.",
    )
    p.add_argument("action", choices=("status", "force-open", "force-close", "reset", "disable"))
    p.add_argument("provider", nargs="?", help="provider (or provider/model) breaker key")
    p.add_argument("--reason", default="operator request", help="why (kept with the event)")
    from llmpulse.schemas.events import FORCE_OPEN_MAX

    p.add_argument(
        "--until",
        help="force-open only: end time (then half_open), RFC 3339 or date, in the future and "
        f"at most {FORCE_OPEN_MAX.days} days ahead",
    )
    p.add_argument(
        "--create",
        action="store_true",
        help="allow a PROVIDER that is neither in the breaker config file nor an existing "
        "breaker (without it, such a name is refused as a likely typo)",
    )
    p.set_defaults(func=cmd_breaker)


def cmd_breaker(args: argparse.Namespace) -> int:
    """Print every breaker (status) or send one control event for PROVIDER.

    A control is checked before it is sent (nothing is sent on exit 2): its
    fields by the contract, ``--until`` by the rule the worker applies too, and
    PROVIDER must be a configured or existing breaker unless ``--create``.
    """
    from llmpulse.processors.breaker import ops
    from llmpulse.processors.breaker.config import BreakerConfigs

    settings = load_settings()
    if args.action == "status":
        # Kafka may be away: the status comes from Redis then.
        source, snaps = asyncio.run(ops.status(with_services(settings, kafka_required=False)))
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
    control = _control(args)
    # The breaker config file is input: a bad one is refused before any service is asked.
    BreakerConfigs.load(settings.breaker_config_file)
    settings = with_services(settings)
    if not args.create and not asyncio.run(ops.is_known(settings, control.provider)):
        raise UsageError(
            f"no breaker {control.provider!r} is configured or exists yet: check the name, "
            "or pass --create to start one"
        )
    asyncio.run(ops.send(settings, control))
    print(f"sent {control.action.value} for {control.provider} (event {control.event_id})")
    return EXIT_OK


def _control(args: argparse.Namespace) -> BreakerControl:
    """The validated control event of ``args`` (``UsageError`` when it is invalid)."""
    from llmpulse.processors.billing.reports import parse_instant
    from llmpulse.processors.breaker import ops
    from llmpulse.schemas.events import BreakerAction, force_open_until_problem

    if not args.provider:
        raise UsageError(f"breaker {args.action} needs a PROVIDER")
    action = BreakerAction(args.action.replace("-", "_"))
    until = None
    if args.until is not None:
        if action is not BreakerAction.force_open:
            raise UsageError(f"--until applies to force-open only, not {args.action}")
        # A malformed --until raises BillingInputError, an InputError: exit code 2.
        until = parse_instant(args.until, "until")
        problem = force_open_until_problem(until, datetime.now(UTC))
        if problem:
            raise UsageError(f"--{problem}")
    try:
        return ops.new_control(args.provider, action, args.reason, until)
    except ValidationError as exc:
        raise usage_error(exc) from None
