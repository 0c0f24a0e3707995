"""``llmpulse demo`` and ``llmpulse simulate``: traffic on the local stack.

Both start the local stack themselves (``stack.up``) and fill the service
addresses in from it, so they need no ``with_services`` here.
"""

from __future__ import annotations

import argparse
import asyncio

from llmpulse.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    SubParsers,
    load_settings,
    positive_float,
    positive_int,
)


def add_parser(sub: SubParsers) -> None:
    """Add ``demo`` and ``simulate``."""
    p = sub.add_parser("demo", help="the main job: local stack, workers, traffic, reports")
    p.add_argument(
        "--seconds", type=positive_float, default=30.0, help="traffic duration (default 30)"
    )
    p.add_argument(
        "--rate", type=positive_float, default=100.0, help="requests per second (default 100)"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed of the traffic (default: a new one)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "simulate",
        help="fleet traffic through the real gateway with scripted provider faults",
        description="N simulated app instances use the gateway (shared breaker view, "
        "failover, probe permits, event emitter) against simulated providers openai "
        "(preferred) and anthropic (fallback), on the local stack (started if needed) with "
        "a breaker worker. Fault times are seconds into the run. Exit code 1 if any request "
        "found no provider.",
    )
    p.add_argument("--instances", type=positive_int, default=3, help="app instances (3)")
    p.add_argument("--seconds", type=positive_float, default=60.0, help="duration (60)")
    p.add_argument("--rate", type=positive_float, default=30.0, help="requests/s per instance (30)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--outage",
        action="append",
        metavar="PROVIDER:START-END",
        help="every call fails with 503 (repeatable), e.g. openai:10-40",
    )
    p.add_argument(
        "--rate-limit",
        action="append",
        metavar="PROVIDER:START-END[:RETRY_AFTER]",
        help="every call gets 429 with Retry-After (default 2 s), repeatable",
    )
    p.add_argument(
        "--error-rate",
        action="append",
        metavar="PROVIDER:RATE",
        help="random 500s, e.g. openai:0.02",
    )
    p.add_argument("--prompt", help="select a version of this registry prompt per subject")
    p.add_argument(
        "--no-breaker-worker",
        dest="breaker_worker",
        action="store_false",
        help="do not start a breaker worker (one is already running)",
    )
    p.set_defaults(func=cmd_simulate)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo end to end (stack, workers, traffic, reports); its exit code."""
    from llmpulse.devstack.demo import run_demo

    return asyncio.run(
        run_demo(load_settings(), seconds=args.seconds, rate=args.rate, seed=args.seed)
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run the fleet scenario; exit code 1 if any request found no provider.

    A malformed fault or error rate raises ``ScenarioError`` (an ``InputError``:
    exit code 2) before the stack is touched.
    """
    from llmpulse.devstack.simulate import (
        default_scenario,
        parse_error_rate,
        parse_fault,
        simulate,
    )
    from llmpulse.simulator.providers import FaultKind

    settings = load_settings()
    faults = [parse_fault(f, FaultKind.outage) for f in args.outage or ()]
    faults += [parse_fault(f, FaultKind.rate_limit) for f in args.rate_limit or ()]
    error_rates = dict(parse_error_rate(text) for text in args.error_rate or ())
    scenario = default_scenario(
        instances=args.instances,
        seconds=args.seconds,
        rate=args.rate,
        seed=args.seed,
        faults=faults,
        error_rates=error_rates,
        prompt_name=args.prompt,
    )
    report = asyncio.run(simulate(settings, scenario, breaker_worker=args.breaker_worker))
    return EXIT_OK if report.failed == 0 else EXIT_FAILURE
