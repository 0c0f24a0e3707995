"""``llmpulse`` command line: one console script, one subcommand per job.

Exit codes: 0 success, 1 runtime failure (a service down, a worker stopped on a
fatal error), 2 bad usage or bad input; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from llmpulse.processors.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"invalid setting LLMPULSE_{field.upper()}: {first['msg']}") from None


# --- stack -------------------------------------------------------------------
def cmd_stack(args: argparse.Namespace) -> int:
    from llmpulse.devstack import stack

    settings = _settings()
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


# --- topics / migrate -----------------------------------------------------------
def cmd_topics(args: argparse.Namespace) -> int:
    from llmpulse.processors.stream.topics import create_topics

    for result in asyncio.run(create_topics(_settings())):
        print(f"{result.status:<8} {result.name}")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from llmpulse.processors.stream.clickhouse import connect, migrate

    applied = migrate(connect(_settings()))
    print("\n".join(f"applied {name}" for name in applied) or "schema up to date")
    return EXIT_OK


# --- workers ---------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from llmpulse.processors.sinks.base import ClickHouseSink
    from llmpulse.processors.sinks.breaker_transitions import BreakerTransitionsSink
    from llmpulse.processors.sinks.prompts import PromptPerformanceSink, PromptVersionsSink
    from llmpulse.processors.sinks.usage import UsageSink
    from llmpulse.processors.stream.clickhouse import connect
    from llmpulse.processors.stream.metrics import serve

    settings = _settings()
    batching = [
        f"--{name.replace('_', '-')}={value}"
        for name in ("batch_rows", "batch_seconds")
        if (value := getattr(args, name)) is not None
    ]
    if batching and args.flow not in ("sink", "all"):
        raise UsageError("--batch-rows and --batch-seconds apply to the sink worker only")
    if args.flow == "all":
        from llmpulse.processors import supervisor

        passed = {k: v for k, v in os.environ.items() if k.startswith("LLMPULSE_")}
        return supervisor.run_all(_with_services(settings), passed, sink_args=batching)
    port = serve(settings.metrics_port)
    logging.getLogger(__name__).info("metrics on 127.0.0.1:%d/metrics", port)
    _scraped_by_local_prometheus(settings, args.flow, port)
    if args.flow in ("breaker", "prompts"):
        from llmpulse.processors.breaker import agent as breaker_agent
        from llmpulse.processors.prompts import agent as prompts_agent

        runner = breaker_agent.run_worker if args.flow == "breaker" else prompts_agent.run_worker
        runner(_with_services(settings))
        return EXIT_OK
    client = connect(settings)
    sinks: list[ClickHouseSink[Any]] = [
        UsageSink(settings, client, max_rows=args.batch_rows, max_seconds=args.batch_seconds),
        BreakerTransitionsSink(settings, client),
        PromptVersionsSink(settings, client),
        PromptPerformanceSink(settings, client),
    ]

    async def run_all(stop: asyncio.Event) -> None:
        await asyncio.gather(*(sink.run(stop) for sink in sinks))

    return asyncio.run(_run_until_signal(run_all))


def _scraped_by_local_prometheus(settings: Settings, flow: str, port: int) -> None:
    """List this worker's /metrics in the local stack's Prometheus targets until it exits."""
    import atexit

    from llmpulse.devstack import stack

    target = f"127.0.0.1:{port}"
    labels = {"worker": flow, "pid": str(os.getpid())}  # as in docker-compose's Prometheus
    stack.register_scrape_target(settings, "llmpulse", target, labels=labels)
    atexit.register(stack.unregister_scrape_target, settings, target)


async def _run_until_signal(run: Callable[[asyncio.Event], object]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    result = run(stop)
    if asyncio.iscoroutine(result):
        await result
    return EXIT_OK


# --- billing ---------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from llmpulse.processors.billing import allocation, reports
    from llmpulse.processors.stream.clickhouse import connect

    settings = _settings()
    rate = settings.chargeback_default_rate
    try:
        if args.action == "close":
            if not args.period:
                raise UsageError("report close needs --period YYYY-MM")
            reports.parse_period(args.period)
            report = reports.close_period(connect(settings), args.period, default_rate=rate)
            print(
                f"closed {args.period}: {len(report.lines)} lines, "
                f"total cost {report.grand_total('cost_usd')} USD, charge {report.charge_total} USD"
            )
            return EXIT_OK
        if not (args.start and args.end):
            raise UsageError("report costs needs --start and --end")
        start = reports.parse_instant(args.start, "start")
        end = reports.parse_instant(args.end, "end")
        reports.check_period(start, end)
        report = reports.cost_report(
            connect(settings), start, end, default_rate=rate, org=args.org, live=args.live
        )
    except reports.BillingInputError as exc:
        raise UsageError(str(exc)) from None
    render = {
        "table": allocation.render_table,
        "csv": allocation.render_csv,
        "json": allocation.render_json,
    }[args.format]
    text = render(report)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_pricing(args: argparse.Namespace) -> int:
    from llmpulse.processors.billing import pricing
    from llmpulse.processors.stream.clickhouse import connect

    try:
        data = pricing.parse_file(args.file)
    except pricing.PricingFileError as exc:
        raise UsageError(str(exc)) from None
    counts = pricing.load(connect(_settings()), data)
    print(", ".join(f"{n} {table}" for table, n in counts.items()) + " loaded")
    return EXIT_OK


# --- breaker ------------------------------------------------------------------------
def _with_services(settings: Settings) -> Settings:
    """Settings with Kafka and Redis addresses filled in from the local stack if unset."""
    if settings.kafka_bootstrap and settings.redis_url:
        return settings
    from llmpulse.devstack import stack

    return stack.with_endpoints(settings, stack.endpoints(settings))


def cmd_breaker(args: argparse.Namespace) -> int:
    from llmpulse.processors.billing.reports import BillingInputError, parse_instant
    from llmpulse.processors.breaker import ops
    from llmpulse.schemas.events import BreakerAction

    settings = _with_services(_settings())
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
    until = None
    if args.until:
        try:
            until = parse_instant(args.until, "until")
        except BillingInputError as exc:
            raise UsageError(str(exc)) from None
    action = BreakerAction(args.action.replace("-", "_"))
    try:
        control = asyncio.run(ops.send_control(settings, args.provider, action, args.reason, until))
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    print(f"sent {control.action.value} for {control.provider} (event {control.event_id})")
    return EXIT_OK


# --- prompts ------------------------------------------------------------------------
def cmd_prompts(args: argparse.Namespace) -> int:
    from decimal import Decimal, InvalidOperation

    from llmpulse.core.registry import (
        RegistryError,
        VersionRecord,
        plan_activate,
        plan_create,
        plan_deactivate,
    )
    from llmpulse.processors.prompts import ops

    settings = _with_services(_settings())

    def decimal(text: str | None, what: str) -> Decimal | None:
        if text is None:
            return None
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise UsageError(f"{what} {text!r} is not a number") from None
        if not value.is_finite():
            raise UsageError(f"{what} {text!r} is not a finite number")
        return value

    if args.action == "compare":
        return _prompts_compare(args, settings)
    state = asyncio.run(ops.read_registry(settings))
    if args.action == "list":
        for name, prompt in sorted(state.items()):
            if args.name and name != args.name:
                continue
            weights = prompt.effective_weights()
            for v in prompt.versions.values():
                share = f"{weights[v.version]:.4f}" if v.version in weights else "-"
                temp = v.temperature if v.temperature is not None else "-"
                status = "active" if v.active else "inactive"
                print(f"{name:<24}v{v.version:<5}{status:<10}share {share:<8}temperature {temp}")
        return EXIT_OK
    if not args.name:
        raise UsageError(f"prompts {args.action} needs a prompt NAME")
    try:
        if args.action == "create":
            content = args.content
            if args.content_file:
                content = args.content_file.read_text()
            if not content:
                raise UsageError("prompts create needs --content or --content-file")
            existing = state.get(args.name)
            record = VersionRecord(
                version=args.version or (existing.latest + 1 if existing else 1),
                content=content,
                system_message=args.system_message,
                temperature=decimal(args.temperature, "temperature"),
                max_tokens=args.max_tokens,
                model=args.model,
                tags=tuple(args.tag or ()),
            )
            events = plan_create(state, args.name, record)
        elif args.action == "activate":
            events = plan_activate(
                state, args.name, _need_version(args), decimal(args.weight, "weight")
            )
        else:
            events = plan_deactivate(state, args.name, _need_version(args))
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    asyncio.run(ops.append(settings, events))
    for e in events:
        print(
            f"{e.action.value} {e.prompt_name} v{e.version}"
            + (f" weight {e.ab_weight}" if e.ab_weight is not None else "")
        )
    return EXIT_OK


def _need_version(args: argparse.Namespace) -> int:
    if args.version is None:
        raise UsageError(f"prompts {args.action} needs --version N")
    return int(args.version)


def _prompts_compare(args: argparse.Namespace, settings: Settings) -> int:
    from llmpulse.processors.billing import reports
    from llmpulse.processors.prompts import comparison, ops
    from llmpulse.processors.stream.clickhouse import connect, run_query

    if not args.name:
        raise UsageError("prompts compare needs a prompt NAME")
    if not (args.start and args.end):
        raise UsageError("prompts compare needs --start and --end")
    try:
        start = reports.parse_instant(args.start, "start")
        end = reports.parse_instant(args.end, "end")
        reports.check_period(start, end)
    except reports.BillingInputError as exc:
        raise UsageError(str(exc)) from None
    window = args.window or min(settings.prompt_windows)
    state = asyncio.run(ops.read_registry(settings))
    if args.name not in state:
        raise UsageError(f"unknown prompt {args.name!r}")
    rows = run_query(
        connect(settings),
        "prompt_performance__compare",
        {"prompt": args.name, "window_seconds": window, "start": start, "end": end},
    )
    report = comparison.compare(
        args.name, rows, state[args.name].effective_weights(), args.baseline
    )
    render = comparison.render_json if args.format == "json" else comparison.render_text
    sys.stdout.write(render(report))
    return EXIT_OK


# --- demo ------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from llmpulse.devstack.demo import run_demo

    return asyncio.run(run_demo(_settings(), seconds=args.seconds, rate=args.rate, seed=args.seed))


# --- simulate --------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from llmpulse.devstack.simulate import (
        ScenarioError,
        default_scenario,
        parse_error_rate,
        parse_fault,
        simulate,
    )
    from llmpulse.simulator.providers import FaultKind

    settings = _settings()
    try:
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
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    report = asyncio.run(simulate(settings, scenario, breaker_worker=args.breaker_worker))
    return EXIT_OK if report.failed == 0 else EXIT_FAILURE


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (``llmpulse: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmpulse",
        description="Resilience and cost backbone for LLM platforms.",
        epilog="Configuration comes from LLMPULSE_* environment variables; see README.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = sub.add_parser("demo", help="the main job: local stack, workers, traffic, reports")
    p.add_argument(
        "--seconds", type=_positive_float, default=30.0, help="traffic duration (default 30)"
    )
    p.add_argument(
        "--rate", type=_positive_float, default=100.0, help="requests per second (default 100)"
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
    p.add_argument("--instances", type=_positive_int, default=3, help="app instances (3)")
    p.add_argument("--seconds", type=_positive_float, default=60.0, help="duration (60)")
    p.add_argument(
        "--rate", type=_positive_float, default=30.0, help="requests/s per instance (30)"
    )
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

    p = sub.add_parser("stack", help="start, stop or inspect the local Kafka, Redis and Prometheus")
    p.add_argument("action", choices=("up", "down", "status"))
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("topics", help="create every topic and its DLQ with their configuration")
    p.add_argument("action", choices=("create",))
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("migrate", help="apply ClickHouse migrations (idempotent)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run a processor until SIGINT/SIGTERM")
    p.add_argument(
        "flow",
        choices=(*worker_flows(), "all"),
        help="sink: every flow into ClickHouse (usage_events, breaker_transitions, "
        "prompt_versions, prompt_performance); breaker: fleet-wide circuit breaker (Faust) -> "
        "Redis and llm.breaker-state.v1; prompts: windowed prompt rollups (Faust) and the "
        "registry view in Redis; all: the three as child processes (logs in the state "
        "folder; with LLMPULSE_METRICS_PORT=P they serve metrics on P, P+1, P+2). Each "
        "worker adds its /metrics to the local stack's Prometheus targets",
    )
    p.add_argument("--batch-rows", type=_positive_int, default=None, help="max rows per insert")
    p.add_argument(
        "--batch-seconds", type=_positive_float, default=None, help="max seconds per batch"
    )
    p.set_defaults(func=cmd_worker)

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

    p = sub.add_parser(
        "prompts",
        help="prompt registry (create, activate, deactivate, list) and A/B comparison",
        description="Versions of a prompt are 1, 2, 3...; activate without --weight makes a "
        "version the only active one; with --weight (0 to 1) it joins the A/B test and the "
        "remainder goes to the version activated without a weight (or weights are scaled to 1).",
    )
    p.add_argument("action", choices=("create", "activate", "deactivate", "list", "compare"))
    p.add_argument("name", nargs="?", help="prompt name")
    p.add_argument("--version", type=_positive_int, help="version (create: defaults to next)")
    p.add_argument("--content", help="template text (create)")
    p.add_argument("--content-file", type=Path, help="read the template from a file (create)")
    p.add_argument("--system-message")
    p.add_argument("--temperature", help="0 to 2")
    p.add_argument("--max-tokens", type=_positive_int)
    p.add_argument("--model")
    p.add_argument("--tag", action="append", help="repeatable")
    p.add_argument("--weight", help="A/B weight 0 to 1 (activate)")
    p.add_argument("--start", help="compare: period start (inclusive)")
    p.add_argument("--end", help="compare: period end (exclusive)")
    p.add_argument("--window", type=_positive_int, help="compare: rollup window size in seconds")
    p.add_argument("--baseline", type=_positive_int, help="compare: baseline version")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser(
        "report",
        help="cost allocation and chargeback reports, period close",
        description="costs: allocation per organization for the half-open UTC period "
        "[--start, --end); dates are YYYY-MM-DD (midnight UTC) or RFC 3339 with a zone. "
        "close: freeze a finished month (--period YYYY-MM); later usage for it becomes "
        "adjustment lines.",
    )
    p.add_argument("action", choices=("costs", "close"))
    p.add_argument("--start", help="period start (inclusive), e.g. 2026-03-01")
    p.add_argument("--end", help="period end (exclusive), e.g. 2026-04-01")
    p.add_argument("--org", help="only this organization id")
    p.add_argument("--period", help="month to close, YYYY-MM")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--output", type=Path, help="write to this file instead of stdout")
    p.add_argument(
        "--live", action="store_true", help="recompute a closed month instead of its snapshot"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "pricing",
        help="load prices, chargeback rates and organization names",
        description="load FILE: YAML with prices / chargeback_rates / organizations lists, or "
        "CSV whose header names one row kind. Prices are USD per million tokens.",
    )
    p.add_argument("action", choices=("load",))
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_pricing)
    return parser


def worker_flows() -> tuple[str, ...]:
    """The processors ``llmpulse worker`` can run (docker-compose has one service each)."""
    from llmpulse.processors.supervisor import FLOWS

    return FLOWS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmpulse`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command != "worker" and not args.verbose:
        # aiokafka logs retried, harmless coordinator errors at ERROR level; a
        # one-shot command reports its own failures as one line.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    from llmpulse.devstack.stack import StackError
    from llmpulse.processors.stream.clickhouse import ClickHouseConfigError

    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"llmpulse: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StackError, ClickHouseConfigError) as exc:
        print(f"llmpulse: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
