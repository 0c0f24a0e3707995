"""BENCHMARKS.md from one run's results: the tables, the targets, and whether each was met.

The targets are issue 12's (DESIGN.md, "Performance method"). Only formatting
and the yes/no comparisons live here; the measuring is in the benchmark modules.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.results import (
    BreakerResult,
    Failed,
    GatewayResult,
    GrowthStep,
    Latency,
    Results,
    Throughput,
)
from bench.runinfo import RunInfo

MIN_RATIO = 0.5
SINK_RSS_MB = 600.0
WORKER_RSS_MB = 300.0
P99_MS = 100.0
#: Background events/s of the one hot provider under which p99 must hold ...
HOT_LOAD = 5_000
#: ... counted as reached from this share of it (the producer paces in 5 ms ticks).
LOAD_REACHED = 0.98
LOOKUP_GROWTH = 1.5
MONTH_REPORT_S = 1.0
ORG_REPORT_S = 0.3

SECTIONS = (
    "Run",
    "Targets",
    "Throughput",
    "Breaker latency",
    "Gateway overhead",
    "Billing growth",
)

_NOT_RUN = "not run (left out with `--only`)"


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f} ev/s"


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def _mb(x: float) -> str:
    return f"{x:,.0f} MB"


def _s(x: float) -> str:
    return f"{x:.3f} s"


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (cells are already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _absent(value: object) -> str | None:
    """Why a benchmark has no figures (``None`` if it has them)."""
    if value is None:
        return _NOT_RUN
    if isinstance(value, Failed):
        return f"failed: {value.error}"
    return None


# --------------------------------------------------------------------- targets


def throughput_met(t: Throughput, rss_limit_mb: float) -> bool:
    return t.ratio >= MIN_RATIO and t.peak_rss_mb <= rss_limit_mb


def load_reached(lat: Latency) -> bool:
    return lat.load_achieved >= HOT_LOAD * LOAD_REACHED


def latency_met(lat: Latency) -> bool:
    return lat.p99_ms < P99_MS and load_reached(lat)


def _baseline(steps: Sequence[GrowthStep]) -> GrowthStep | None:
    return next((s for s in steps if s.rows == 0), None)


def lookup_growth(step: GrowthStep, empty: GrowthStep | None) -> float | None:
    return step.lookup_s / empty.lookup_s if empty and empty.lookup_s else None


def growth_met(step: GrowthStep, empty: GrowthStep | None) -> bool:
    growth = lookup_growth(step, empty)
    return (
        growth is not None
        and growth <= LOOKUP_GROWTH
        and step.report_month_s < MONTH_REPORT_S
        and step.report_org_s < ORG_REPORT_S
    )


def _throughput_targets(name: str, t: Throughput | Failed | None, rss: float) -> list[list[str]]:
    ratio_target = f"{name} ≥ {MIN_RATIO}x bare consumer"
    rss_target = f"{name} peak RSS ≤ {rss:.0f} MB"
    missing = _absent(t)
    if missing or not isinstance(t, Throughput):
        return [[ratio_target, missing or "", "no"], [rss_target, missing or "", "no"]]
    return [
        [
            ratio_target,
            f"{_ratio(t.ratio)} ({_rate(t.ours_per_second)} vs {_rate(t.bare_per_second)})",
            _yes(t.ratio >= MIN_RATIO),
        ],
        [rss_target, _mb(t.peak_rss_mb), _yes(t.peak_rss_mb <= rss)],
    ]


def _latency_target(b: BreakerResult | Failed | None) -> list[str]:
    target = (
        f"breaker event_time → Redis snapshot p99 < {P99_MS:.0f} ms "
        f"at {HOT_LOAD:,} ev/s on one provider"
    )
    missing = _absent(b)
    if missing or not isinstance(b, BreakerResult):
        return [target, missing or "", "no"]
    lat = b.latency
    return [
        target,
        f"{lat.p99_ms:.1f} ms at {lat.load_achieved:,.0f} ev/s",
        _yes(latency_met(lat)),
    ]


def _growth_targets(g: list[GrowthStep] | Failed | None) -> list[list[str]]:
    lookup = f"dedup lookup, 5,000 ids, at the largest size ≤ {LOOKUP_GROWTH}x the empty table"
    month = f"report, one month, < {MONTH_REPORT_S:g} s at every size"
    org = f"report, one organization, < {ORG_REPORT_S:g} s at every size"
    missing = _absent(g)
    if missing or not isinstance(g, list) or not g:
        return [[t, missing or "no sizes", "no"] for t in (lookup, month, org)]
    empty, largest = _baseline(g), max(g, key=lambda s: s.rows)
    growth = lookup_growth(largest, empty)
    slowest_month = max(g, key=lambda s: s.report_month_s)
    slowest_org = max(g, key=lambda s: s.report_org_s)
    return [
        [
            lookup,
            f"{_ratio(growth)} at {largest.rows:,} rows ({_s(largest.lookup_s)} vs "
            f"{_s(empty.lookup_s)})"
            if growth is not None and empty
            else "no empty-table baseline",
            _yes(growth is not None and growth <= LOOKUP_GROWTH),
        ],
        [
            month,
            f"{_s(slowest_month.report_month_s)} at most ({slowest_month.rows:,} rows)",
            _yes(slowest_month.report_month_s < MONTH_REPORT_S),
        ],
        [
            org,
            f"{_s(slowest_org.report_org_s)} at most ({slowest_org.rows:,} rows)",
            _yes(slowest_org.report_org_s < ORG_REPORT_S),
        ],
    ]


def targets_rows(r: Results) -> list[list[str]]:
    """Every target of issue 12 with its measured figure and yes/no."""
    breaker_t = r.breaker.throughput if isinstance(r.breaker, BreakerResult) else r.breaker
    return [
        *_throughput_targets("usage sink", r.sink, SINK_RSS_MB),
        *_throughput_targets("breaker agent", breaker_t, WORKER_RSS_MB),
        *_throughput_targets("prompt rollup agent", r.prompts, WORKER_RSS_MB),
        _latency_target(r.breaker),
        *_growth_targets(r.growth),
    ]


# -------------------------------------------------------------------- sections


def _run_section(info: RunInfo) -> str:
    commit = info.commit + (" (dirty: uncommitted changes in the tree)" if info.dirty else "")
    return table(
        ["run", ""],
        [
            ["date", info.started.strftime("%Y-%m-%d %H:%M UTC")],
            ["commit", commit],
            ["machine", f"{info.cores} cores ({info.cpu}), {info.system}"],
            ["python", info.python],
            ["command", f"`{info.command}`"],
            ["duration", f"{info.seconds:,.0f} s"],
        ],
    )


def _throughput_section(r: Results) -> str:
    header = [
        "benchmark",
        "events",
        "bare aiokafka + decode",
        "ours",
        "ratio",
        "peak RSS",
        "target",
        "met",
    ]
    rows = []
    breaker_t = r.breaker.throughput if isinstance(r.breaker, BreakerResult) else r.breaker
    for name, t, rss in (
        ("usage sink → chDB (worker process)", r.sink, SINK_RSS_MB),
        ("breaker agent (worker process)", breaker_t, WORKER_RSS_MB),
        ("prompt rollup agent (worker process)", r.prompts, WORKER_RSS_MB),
    ):
        target = f"≥ {MIN_RATIO}x, RSS ≤ {rss:.0f} MB"
        missing = _absent(t)
        if missing or not isinstance(t, Throughput):
            rows.append([name, missing or "", "", "", "", "", target, "no"])
            continue
        rows.append(
            [
                name,
                f"{t.events:,}",
                _rate(t.bare_per_second),
                _rate(t.ours_per_second),
                _ratio(t.ratio),
                _mb(t.peak_rss_mb),
                target,
                _yes(throughput_met(t, rss)),
            ]
        )
    return (
        "Each side's time runs from the first event to its last commit (sink: to the last "
        "acknowledged insert); both sides read the same events in the same run.\n\n"
        + table(header, rows)
    )


def _latency_section(b: BreakerResult | Failed | None) -> str:
    missing = _absent(b)
    if missing or not isinstance(b, BreakerResult):
        return f"_{missing}_"
    lat = b.latency
    load = f"{lat.load_target:,} / {lat.load_achieved:,.0f} ev/s"
    if not load_reached(lat):
        load += f" (below the target's {HOT_LOAD:,})"
    return (
        "From the event_time of an opening's third failure to its open snapshot on the Redis "
        "channel, while one hot provider's success events (same partition as every measured "
        "opening) flow in the background from a separate process.\n\n"
        + table(
            [
                "openings",
                "hot provider load, asked / achieved",
                "partition",
                "p50",
                "p99",
                "max",
                "target",
                "met",
            ],
            [
                [
                    f"{lat.openings:,}",
                    load,
                    str(lat.partition),
                    f"{lat.p50_ms:.1f} ms",
                    f"{lat.p99_ms:.1f} ms",
                    f"{lat.max_ms:.1f} ms",
                    f"p99 < {P99_MS:.0f} ms at {HOT_LOAD:,} ev/s",
                    _yes(latency_met(lat)),
                ]
            ],
        )
    )


def _gateway_section(g: GatewayResult | Failed | None) -> str:
    missing = _absent(g)
    if missing or not isinstance(g, GatewayResult):
        return f"_{missing}_"
    return "On the application's request path (no target in issue 12).\n\n" + table(
        ["measure", "result"],
        [
            [
                "routing decision (order + breaker view, preferred provider open)",
                f"{g.routing_us:.2f} µs",
            ],
            ["`execute()` overhead, instant provider", f"{g.execute_us:.1f} µs per request"],
            ["`emit()` on the caller's path", f"{g.emit_us:.2f} µs per event"],
            [
                "bare `model_dump_json` + `await AIOKafkaProducer.send`",
                f"{g.bare_emit_us:.2f} µs per event",
            ],
            ["ratio emit / bare", _ratio(g.emit_ratio)],
            ["peak RSS of the measuring process", _mb(g.peak_rss_mb)],
        ],
    )


def growth_tables(steps: Sequence[GrowthStep]) -> str:
    """The growth table with its targets, then the replaced queries on the same data."""
    empty = _baseline(steps)
    rows = []
    for s in steps:
        growth = lookup_growth(s, empty)
        if s.sink_per_second is None:
            sink, sink_x = "not measured", ""
        else:
            sink = _rate(s.sink_per_second)
            base = empty.sink_per_second if empty else None
            sink_x = _ratio(s.sink_per_second / base) if base else ""
        rows.append(
            [
                f"{s.rows:,}",
                _s(s.lookup_s),
                _ratio(growth) if growth is not None else "",
                sink,
                sink_x,
                _s(s.report_month_s),
                _s(s.report_org_s),
                _yes(growth_met(s, empty)),
            ]
        )
    targets = table(
        [
            "stored rows",
            "dedup lookup, 5,000 ids",
            f"vs empty (≤ {LOOKUP_GROWTH}x)",
            "usage sink",
            "vs empty",
            f"report, one month (< {MONTH_REPORT_S:g} s)",
            f"report, one org (< {ORG_REPORT_S:g} s)",
            "met",
        ],
        rows,
    )
    before = table(
        [
            "stored rows",
            "dedup lookup on usage_events",
            "brute-force report, one month",
            "brute-force report, one org",
            "requests in the month / org",
        ],
        [
            [
                f"{s.rows:,}",
                _s(s.lookup_before_s),
                _s(s.report_month_before_s),
                _s(s.report_org_before_s),
                f"{s.month_requests:,} / {s.org_requests:,}",
            ]
            for s in steps
        ],
    )
    return f"{targets}\n\nThe queries these replaced, on the same data:\n\n{before}"


def _growth_section(g: list[GrowthStep] | Failed | None) -> str:
    missing = _absent(g)
    if missing or not isinstance(g, list):
        return f"_{missing}_"
    return (
        "Embedded chDB filled with synthetic usage (24 months, 50 organizations); times are "
        "medians; the reports cover 2026-06 (all organizations, then one) and must return "
        "the brute-force query's rows. The usage sink's rate is into the same database.\n\n"
        + growth_tables(g)
    )


def render(info: RunInfo, results: Results) -> str:
    """The whole document."""
    targets = targets_rows(results)
    met = sum(row[2] == "yes" for row in targets)
    body = {
        "Run": _run_section(info),
        "Targets": f"{met} of {len(targets)} targets met.\n\n"
        + table(["target", "measured", "met"], targets),
        "Throughput": _throughput_section(results),
        "Breaker latency": _latency_section(results.breaker),
        "Gateway overhead": _gateway_section(results.gateway),
        "Billing growth": _growth_section(results.growth),
    }
    intro = (
        "# Benchmarks\n\n"
        "Written by `python -m bench` (see `python -m bench --help`); rerun it rather than "
        "editing this file. Every throughput is next to the ceiling measured in the same run: "
        "a bare aiokafka consumer that decodes the same events. Peak RSS is the high-water "
        "mark of the process that ran our side, in MB (10^6 bytes). The machine may be "
        "shared, so compare ratios within one run rather than rates across runs."
    )
    parts = [intro] + [f"## {name}\n\n{body[name]}" for name in SECTIONS]
    return "\n\n".join(parts) + "\n"
