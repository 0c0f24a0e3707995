"""``llmpulse worker FLOW``: run one processor (or all three) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmpulse.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    SubParsers,
    UsageError,
    load_settings,
    positive_float,
    positive_int,
    with_services,
)

if TYPE_CHECKING:
    from llmpulse.processors.settings import Settings
    from llmpulse.processors.stream.chdb_socket import Operation


def add_parser(sub: SubParsers) -> None:
    """Add ``worker sink|breaker|prompts|all``."""
    p = sub.add_parser("worker", help="run a processor until SIGINT/SIGTERM")
    p.add_argument(
        "flow",
        choices=(*worker_flows(), "all"),
        help="sink: every flow into ClickHouse (usage_events, breaker_transitions, "
        "prompt_versions, prompt_performance); on embedded chDB it also runs report, pricing "
        "load, migrate and prompts compare for those commands while it holds the folder; "
        "breaker: fleet-wide circuit breaker (Faust) -> Redis and llm.breaker-state.v1; "
        "prompts: windowed prompt rollups (Faust) and the registry view in Redis; all: the "
        "three as child processes (logs in the state folder; with LLMPULSE_METRICS_PORT=P "
        "they serve metrics on P, P+1, P+2). Each worker adds its /metrics to the local "
        "stack's Prometheus targets",
    )
    p.add_argument("--batch-rows", type=positive_int, default=None, help="max rows per insert")
    p.add_argument(
        "--batch-seconds", type=positive_float, default=None, help="max seconds per batch"
    )
    p.set_defaults(func=cmd_worker)


def worker_flows() -> tuple[str, ...]:
    """The processors ``llmpulse worker`` can run (docker-compose has one service each)."""
    from llmpulse.processors.supervisor import FLOWS

    return FLOWS


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the flow until SIGINT/SIGTERM; exit code 0 after a clean stop.

    Kafka and Redis addresses are filled in from the local stack before any
    worker starts (workers never look the stack up themselves).
    """
    from llmpulse.processors.sinks import build_sinks
    from llmpulse.processors.stream import chdb_socket
    from llmpulse.processors.stream.clickhouse import connect
    from llmpulse.processors.stream.metrics import serve
    from llmpulse.processors.stream.topics import check_copartitioned

    settings = load_settings()
    batching = [
        f"--{name.replace('_', '-')}={value}"
        for name in ("batch_rows", "batch_seconds")
        if (value := getattr(args, name)) is not None
    ]
    if batching and args.flow not in ("sink", "all"):
        raise UsageError("--batch-rows and --batch-seconds apply to the sink worker only")
    if args.flow in ("breaker", "all"):
        from llmpulse.processors.breaker.config import BreakerConfigs

        BreakerConfigs.load(settings.breaker_config_file)  # bad input first, before any service
    settings = with_services(settings)
    # Before anything is served: a mismatch is the only line on stderr (exit 2).
    check_copartitioned(settings, worker_flows() if args.flow == "all" else (args.flow,))
    if args.flow == "all":
        from llmpulse.processors import supervisor

        passed = {k: v for k, v in os.environ.items() if k.startswith("LLMPULSE_")}
        return supervisor.run_all(settings, passed, sink_args=batching)
    port = serve(settings.metrics_port)
    logging.getLogger(__name__).info("metrics on 127.0.0.1:%d/metrics", port)
    _scraped_by_local_prometheus(settings, args.flow, port)
    if args.flow in ("breaker", "prompts"):
        from llmpulse.processors.breaker import agent as breaker_agent
        from llmpulse.processors.prompts import agent as prompts_agent

        runner = breaker_agent.run_worker if args.flow == "breaker" else prompts_agent.run_worker
        runner(settings)
        return EXIT_OK
    client = connect(settings)
    sinks = build_sinks(
        settings, client, usage_max_rows=args.batch_rows, usage_max_seconds=args.batch_seconds
    )

    async def run_all(stop: asyncio.Event) -> int:
        # A sink stopped by its poison limit returns; the others go on until a signal.
        stats = await asyncio.gather(*(sink.run(stop) for sink in sinks))
        return EXIT_FAILURE if any(s.stopped for s in stats) else EXIT_OK

    # This process now holds the embedded chDB folder: report and load commands ask it.
    with chdb_socket.serving(settings, clickhouse_operations()):
        return asyncio.run(_run_until_signal(run_all))


def clickhouse_operations() -> dict[str, Operation]:
    """The closed set of operations the sink worker runs for commands (by function name)."""
    from llmpulse.cli import prompts, report, setup

    named = (
        report.report_costs,
        report.report_close,
        report.pricing_load,
        setup.migrate_schema,
        prompts.prompts_compare,
    )
    return {operation.__name__: operation for operation in named}


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
        result = await result
    return result if isinstance(result, int) else EXIT_OK
