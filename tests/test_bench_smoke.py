"""The benchmark code keeps working: each runs at a tiny size (figures are not checked).

No test here compares a figure with a target or a time limit: figures are only
checked to be there and to be consistent with each other (a ratio is ours over
bare, p50 <= p99 <= max, the targets line counts the table's yes rows).
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import QUICK, count, parser, sizes
from bench.results import (
    BreakerResult,
    Failed,
    GrowthStep,
    Latency,
    Results,
    Throughput,
)
from bench.runinfo import RunInfo
from llmpulse.processors.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def sections(document: str) -> dict[str, str]:
    """``## name`` -> its text."""
    parts = re.split(r"^## (.+)$", document, flags=re.MULTILINE)
    return {name.strip(): body for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in ``text``: its body rows as lists of cells (header dropped)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            found.append(current[2:])  # header and |---| separator
            current = []
    return found


def number(cell: str) -> float:
    """The first number of a cell: ``48,086 ev/s`` -> 48086.0, ``0.25x`` -> 0.25."""
    match = re.search(r"-?[\d,]+(?:\.\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group().replace(",", ""))


# ------------------------------------------------------------------ unit tier


def test_counts_accept_suffixes() -> None:
    assert [count(t) for t in ("3000", "100_000", "500K", "1M", "2.5M", "1G")] == [
        3_000,
        100_000,
        500_000,
        1_000_000,
        2_500_000,
        1_000_000_000,
    ]
    assert parser().parse_args(["--growth-sizes", "1M,10M"]).growth_sizes == (
        1_000_000,
        10_000_000,
    )


def test_quick_sizes_yield_to_explicit_ones() -> None:
    chosen = sizes(parser().parse_args(["--quick", "--sink-events", "5K"]))
    assert chosen.sink_events == 5_000
    assert chosen.breaker_events == QUICK.breaker_events


def _info() -> RunInfo:
    return RunInfo(
        started=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        seconds=12.0,
        command="python -m bench",
        commit="0" * 40,
        dirty=True,
        cores=2,
        cpu="cpu",
        system="Linux",
        python="3.11",
    )


def _step(rows: int, lookup: float) -> GrowthStep:
    return GrowthStep(rows, lookup, 0.1, 0.5, 1.0, 0.1, 0.2, 10, 1, 1000.0)


def test_document_says_what_was_not_measured_and_counts_targets() -> None:
    results = Results(
        sink=Throughput(100, 1000.0, 600.0, 500.0),
        breaker=BreakerResult(
            Throughput(100, 1000.0, 400.0, 100.0),
            Latency(10, 5_000, 4_990.0, 0, 5.0, 50.0, 60.0),
        ),
        prompts=Failed("RuntimeError: boom"),
        gateway=None,
        growth=[_step(0, 0.02), _step(1_000, 0.04)],
    )
    doc = report.render(_info(), results)
    got = sections(doc)
    assert list(got) == list(report.SECTIONS)
    assert "dirty" in got["Run"]
    assert "failed: RuntimeError: boom" in got["Throughput"]
    assert "not run" in got["Gateway overhead"]
    targets = tables(got["Targets"])[0]
    met = [row[2] for row in targets]
    # sink ratio and RSS yes; breaker ratio no, RSS yes; prompts no twice; latency yes;
    # lookup 2.0x no; month 0.5 s yes; org 0.1 s yes.
    assert met == ["yes", "yes", "no", "yes", "no", "no", "yes", "no", "yes", "yes"]
    assert got["Targets"].strip().startswith(f"{met.count('yes')} of {len(met)} targets met.")


# ------------------------------------------------------------------ chdb tier


@pytest.mark.chdb
def test_billing_growth_runs_at_a_tiny_size() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.billing_growth",
            "--sizes",
            "3000",
            "--repeat",
            "1",
            "--sink-events",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    growth, before = tables(done.stdout)
    assert [r[0] for r in growth] == ["0", "3,000"]
    assert [r[0] for r in before] == ["0", "3,000"]
    assert [r[3] for r in growth] == ["not measured", "not measured"]


# ----------------------------------------------------------------- stack tier


@pytest.mark.stack
def test_runner_writes_every_section_at_a_tiny_size(services: Settings, tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(out)],
        cwd=ROOT,
        env=services.child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    got = sections(out.read_text())
    assert list(got) == list(report.SECTIONS)

    run = dict(tables(got["Run"])[0])
    assert re.fullmatch(r"[0-9a-f]{40}( \(dirty.*\))?|unknown.*", run["commit"])
    assert "--quick" in run["command"]

    targets = tables(got["Targets"])[0]
    assert len(targets) == 10
    assert {row[2] for row in targets} <= {"yes", "no"}
    yes = sum(row[2] == "yes" for row in targets)
    assert got["Targets"].strip().startswith(f"{yes} of 10 targets met.")

    throughput = tables(got["Throughput"])[0]
    assert len(throughput) == 3
    for _name, events, bare, ours, ratio, rss, _target, met in throughput:
        assert number(events) == QUICK.sink_events == QUICK.breaker_events
        assert min(number(bare), number(ours), number(rss)) > 0
        assert number(ratio) == pytest.approx(number(ours) / number(bare), abs=0.011)
        assert met in {"yes", "no"}

    (latency,) = tables(got["Breaker latency"])[0]
    assert number(latency[0]) == QUICK.breaker_openings
    assert number(latency[1]) == QUICK.breaker_load
    p50, p99, worst = (number(c) for c in latency[3:6])
    assert 0 < p50 <= p99 <= worst

    gateway = tables(got["Gateway overhead"])[0]
    assert len(gateway) == 6
    assert all(number(value) > 0 for _, value in gateway)

    growth, before = tables(got["Billing growth"])
    assert [r[0] for r in growth] == ["0", "3,000"] == [r[0] for r in before]
    assert growth[0][2] == "1.00x"
    for row in growth:
        # lookup time, sink rate, month and org report times
        assert min(number(row[i]) for i in (1, 3, 5, 6)) > 0


@pytest.mark.stack
def test_soak_runs_every_worker_at_a_tiny_size(services: Settings) -> None:
    soak = ["--minutes", "0.2", "--rate", "200", "--sample-seconds", "3"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", *soak],
        cwd=ROOT,
        env=services.child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = tables(done.stdout)[0]
    assert [row[0] for row in rows] == ["sink", "breaker", "prompts"]
    for _name, warm, last, _growth, peak, behind in rows:
        assert 0 < number(warm) <= number(peak)
        assert number(last) <= number(peak)
        assert number(behind) == 0  # every worker caught up with the 2,400 events
