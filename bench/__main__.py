"""Run every benchmark on the local stack and write BENCHMARKS.md.

In order: usage sink throughput, breaker agent (throughput, then snapshot
latency under one hot provider's load), prompt rollup agent, gateway overhead,
billing growth. Each throughput is compared with a bare aiokafka consumer on the
same events in the same run. A benchmark that fails is reported as failed in the
document and the others still run; the exit status is then 1.

The default sizes are the issue's (billing growth up to 100M stored rows takes
a long while and much space in the temporary folder); ``--quick`` runs
everything at a tiny size, which keeps the code working (CI) but gives
meaningless figures. Each benchmark also runs alone:
``python -m bench.<name> --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from bench import (
    billing_growth,
    breaker_agent,
    gateway_overhead,
    prompts_agent,
    report,
    runinfo,
    sink_throughput,
)
from bench.results import BreakerResult, Failed, GatewayResult, Results, Throughput

BENCHMARKS = ("sink", "breaker", "prompts", "gateway", "growth")
_SUFFIXES = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}


@dataclass(frozen=True)
class Sizes:
    sink_events: int
    breaker_events: int
    breaker_openings: int
    breaker_load: int
    prompts_events: int
    gateway_decisions: int
    gateway_events: int
    growth_sizes: tuple[int, ...]
    growth_repeat: int
    growth_sink_events: int


FULL = Sizes(
    sink_events=100_000,
    breaker_events=50_000,
    breaker_openings=200,
    breaker_load=5_000,
    prompts_events=30_000,
    gateway_decisions=100_000,
    gateway_events=50_000,
    growth_sizes=(1_000_000, 10_000_000, 100_000_000),
    growth_repeat=5,
    growth_sink_events=20_000,
)
QUICK = Sizes(
    sink_events=2_000,
    breaker_events=2_000,
    breaker_openings=10,
    breaker_load=500,
    prompts_events=2_000,
    gateway_decisions=2_000,
    gateway_events=1_000,
    growth_sizes=(3_000,),
    growth_repeat=1,
    growth_sink_events=1_000,
)


def count(text: str) -> int:
    """``100000``, ``100_000``, ``500K``, ``1M``, ``2.5M`` or ``1G`` as an integer."""
    t = text.strip().upper().replace("_", "")
    factor = _SUFFIXES.get(t[-1:], 1)
    try:
        value = Decimal(t[:-1] if factor > 1 else t) * factor
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}") from None
    if value < 0 or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a whole, non-negative count: {text!r}")
    return int(value)


def counts(text: str) -> tuple[int, ...]:
    return tuple(count(part) for part in text.split(",") if part.strip())


def names(text: str) -> tuple[str, ...]:
    chosen = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return chosen


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Counts accept K/M/G suffixes (1M = 1,000,000). Runs on the local stack\n"
        "(`llmpulse stack up`; started if it is not running) or on the services named by\n"
        "LLMPULSE_KAFKA_BOOTSTRAP and LLMPULSE_REDIS_URL.",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=runinfo.ROOT / runinfo.OUTPUT,
        help="where to write the document (default: BENCHMARKS.md at the repository root)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for every benchmark (CI)")
    p.add_argument(
        "--only",
        type=names,
        default=BENCHMARKS,
        metavar="NAMES",
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (the others are marked not run)",
    )
    g = p.add_argument_group("sizes (defaults: the issue's sizes, or --quick's)")
    g.add_argument(
        "--sink-events", type=count, metavar="N", help=f"usage sink events ({FULL.sink_events:,})"
    )
    g.add_argument(
        "--breaker-events",
        type=count,
        metavar="N",
        help=f"breaker throughput events ({FULL.breaker_events:,})",
    )
    g.add_argument(
        "--breaker-openings",
        type=count,
        metavar="N",
        help=f"providers opened for the latency figure ({FULL.breaker_openings})",
    )
    g.add_argument(
        "--breaker-load",
        type=count,
        metavar="N",
        help=f"background events/s of the one hot provider ({FULL.breaker_load:,})",
    )
    g.add_argument(
        "--prompts-events",
        type=count,
        metavar="N",
        help=f"prompt rollup events ({FULL.prompts_events:,})",
    )
    g.add_argument(
        "--gateway-decisions",
        type=count,
        metavar="N",
        help=f"routing decisions ({FULL.gateway_decisions:,})",
    )
    g.add_argument(
        "--gateway-events",
        type=count,
        metavar="N",
        help=f"events emitted ({FULL.gateway_events:,})",
    )
    g.add_argument(
        "--growth-sizes",
        type=counts,
        metavar="SIZES",
        help="stored usage rows, comma-separated; the empty table is always measured too "
        "(1M,10M,100M)",
    )
    g.add_argument(
        "--growth-repeat",
        type=count,
        metavar="N",
        help=f"runs per growth figure, median ({FULL.growth_repeat})",
    )
    g.add_argument(
        "--growth-sink-events",
        type=count,
        metavar="N",
        help=f"usage sink events at each growth size, 0 to skip ({FULL.growth_sink_events:,})",
    )
    return p


def sizes(args: argparse.Namespace) -> Sizes:
    """``--quick`` or the full sizes, with every size given on the command line on top."""
    base = QUICK if args.quick else FULL
    given = {
        name: getattr(args, name)
        for name in Sizes.__dataclass_fields__
        if getattr(args, name) is not None
    }
    return replace(base, **given)


def _summary(result: object) -> str:
    if isinstance(result, Throughput):
        return (
            f"{result.ours_per_second:,.0f} vs {result.bare_per_second:,.0f} ev/s "
            f"({result.ratio:.2f}x), peak RSS {result.peak_rss_mb:,.0f} MB"
        )
    if isinstance(result, BreakerResult):
        lat = result.latency
        return (
            f"{_summary(result.throughput)}; p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms "
            f"at {lat.load_achieved:,.0f} ev/s"
        )
    if isinstance(result, GatewayResult):
        return f"emit {result.emit_us:.2f} µs vs bare {result.bare_emit_us:.2f} µs"
    if isinstance(result, list):
        return ", ".join(
            f"{s.rows:,} rows: lookup {s.lookup_s:.3f} s, month {s.report_month_s:.3f} s"
            for s in result
        )
    return str(result)


def _timed(index: int, total: int, title: str, work: Callable[[], Any]) -> Any:
    """Run one benchmark with progress lines; a failure becomes :class:`Failed`."""
    print(f"[{index}/{total}] {title}", flush=True)
    started = time.monotonic()
    result: Any
    try:
        result = work()
    except Exception as exc:  # one broken benchmark must not lose the others' figures
        traceback.print_exc()
        result = Failed(f"{type(exc).__name__}: {exc}".strip())
    elapsed = time.monotonic() - started
    print(f"[{index}/{total}] {title}: {elapsed:.0f} s: {_summary(result)}", flush=True)
    return result


def run(chosen: tuple[str, ...], z: Sizes) -> Results:
    growth_sizes = " / ".join(f"{n:,}" for n in (0, *z.growth_sizes))
    plan: dict[str, tuple[str, Callable[[], object]]] = {
        "sink": (
            f"usage sink throughput, {z.sink_events:,} events",
            lambda: asyncio.run(sink_throughput.run(z.sink_events)),
        ),
        "breaker": (
            f"breaker agent, {z.breaker_events:,} events; {z.breaker_openings} openings under "
            f"{z.breaker_load:,} ev/s of one provider",
            lambda: asyncio.run(
                breaker_agent.run(z.breaker_events, z.breaker_openings, z.breaker_load)
            ),
        ),
        "prompts": (
            f"prompt rollup agent, {z.prompts_events:,} events",
            lambda: asyncio.run(prompts_agent.run(z.prompts_events)),
        ),
        "gateway": (
            f"gateway overhead, {z.gateway_decisions:,} decisions, {z.gateway_events:,} events",
            lambda: asyncio.run(gateway_overhead.run(z.gateway_decisions, z.gateway_events)),
        ),
        "growth": (
            f"billing growth at {growth_sizes} rows, {z.growth_sink_events:,} sink events each",
            lambda: billing_growth.run(list(z.growth_sizes), z.growth_repeat, z.growth_sink_events),
        ),
    }
    selected = [n for n in BENCHMARKS if n in chosen]
    got: dict[str, Any] = {}
    for i, name in enumerate(selected, 1):
        title, work = plan[name]
        got[name] = _timed(i, len(selected), title, work)
    return Results(**got)


def failed(results: Results) -> list[str]:
    return [name for name in BENCHMARKS if isinstance(getattr(results, name), Failed)]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    z = sizes(args)
    started, clock = datetime.now(UTC), time.monotonic()
    results = run(args.only, z)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    info = runinfo.collect(started, time.monotonic() - clock, command)
    args.output.write_text(report.render(info, results))
    print(f"wrote {args.output}", flush=True)
    broken = failed(results)
    if broken:
        print(f"failed: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
