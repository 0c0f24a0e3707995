"""Prompt comparison on chDB: rollup partials -> compare query -> statistics and verdicts."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.core.ab_stats import Verdict
from llmpulse.core.rollup import Partial, window_start
from llmpulse.processors.prompts.agent import performance_record
from llmpulse.processors.prompts.comparison import compare, render_json, render_text
from llmpulse.processors.sinks.prompts import PERFORMANCE_COLUMNS, performance_row
from llmpulse.processors.stream.clickhouse import run_query

pytestmark = pytest.mark.chdb

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC).timestamp()
PERIOD = {
    "start": datetime(2026, 7, 1, 12, 0, tzinfo=UTC),
    "end": datetime(2026, 7, 1, 14, 0, tzinfo=UTC),
}


def _load(ch: Client, name: str, rates: dict[int, float], calls: dict[int, int], seed: int) -> None:
    """Simulated calls per version, rolled up into 60 s partials over 3 partitions."""
    ch.command("TRUNCATE TABLE prompt_performance")
    rng = random.Random(seed)
    partials: dict[tuple[int, int, int], Partial] = {}
    offset = 0
    for version, n in calls.items():
        for _ in range(n):
            ts = T0 + rng.uniform(0, 3600)
            part = rng.randrange(3)
            start = window_start(ts, 60)
            key = (version, start, part)
            p = partials.setdefault(key, Partial(name, version, 60, start, part, offset))
            offset += 1
            p.add_outcome(
                offset,
                success=rng.random() < rates[version],
                latency_ms=int(rng.gauss(800, 150)),
                input_tokens=100,
                output_tokens=50,
                cost_usd=Decimal("0.0015"),
            )
            if rng.random() < 0.2:
                p.add_feedback(offset, Decimal(rng.choice(["3", "3.5", "4", "4.5"])))
    rows = [performance_row(performance_record(p, "t.llm.outcomes.v1")) for p in partials.values()]
    ch.insert("prompt_performance", rows, column_names=list(PERFORMANCE_COLUMNS))


def _rows(ch: Client, name: str) -> list[dict[str, object]]:
    return run_query(
        ch, "prompt_performance__compare", {"prompt": name, "window_seconds": 60, **PERIOD}
    )


def test_ten_point_difference_is_reported_as_better(ch: Client) -> None:
    _load(ch, "p", {1: 0.80, 2: 0.90}, {1: 5000, 2: 5000}, seed=1)
    report = compare("p", _rows(ch, "p"), {1: Decimal("0.5"), 2: Decimal("0.5")})
    assert [s.executions for s in report.versions] == [5000, 5000]
    [c] = report.comparisons
    assert c.success.verdict is Verdict.better
    assert c.success.p_value < 1e-6
    assert 0.05 < c.success.estimate < 0.15
    assert c.latency.verdict is Verdict.no_difference or c.latency.p_value < 0.05
    assert not report.srm_warning
    text = render_text(report)
    assert "v2 vs v1" in text
    assert "better" in text
    doc = json.loads(render_json(report))
    assert doc["comparisons"][0]["success_rate"]["verdict"] == "better"
    assert doc["versions"][0]["latency_p50_ms"] is not None


def test_aa_is_not_significant_and_srm_is_flagged(ch: Client) -> None:
    _load(ch, "q", {1: 0.85, 2: 0.85}, {1: 7000, 2: 3000}, seed=2)
    report = compare("q", _rows(ch, "q"), {1: Decimal("0.5"), 2: Decimal("0.5")})
    assert report.comparisons[0].success.verdict is Verdict.no_difference
    assert report.srm_warning  # 70/30 traffic against 50/50 weights
    assert "sample ratio mismatch" in render_text(report)


def test_not_enough_data(ch: Client) -> None:
    _load(ch, "r", {1: 0.9, 2: 0.5}, {1: 10, 2: 10}, seed=3)
    report = compare("r", _rows(ch, "r"), {1: Decimal("1")})
    assert report.comparisons[0].success.verdict is Verdict.not_enough_data
