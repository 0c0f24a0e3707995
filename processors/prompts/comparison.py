"""A/B comparison of prompt versions from merged rollups (pure shaping and rendering).

Input: rows of ``prompt_performance__compare.sql`` (one per version) and the
configured effective weights. The baseline is the lowest active version unless
given. Output per version: success rate, latency mean/p50/p95, cost and
feedback with 95% intervals; per treatment versus baseline: differences with
95% intervals, p-values and a verdict; and a sample-ratio-mismatch check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from llmpulse.core.ab_stats import (
    Moments,
    TestResult,
    mean_interval,
    sample_ratio_mismatch,
    two_proportions,
    welch,
    wilson_interval,
)
from llmpulse.core.rollup import sketch_quantile

SRM_ALPHA = 0.001


@dataclass(frozen=True)
class VersionStats:
    version: int
    executions: int
    successes: int
    latency: Moments
    p50_ms: float | None
    p95_ms: float | None
    cost: Moments
    cost_total: Decimal
    feedback: Moments
    corrections: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.executions if self.executions else math.nan


@dataclass(frozen=True)
class Comparison:
    version: int
    success: TestResult
    latency: TestResult
    cost: TestResult
    feedback: TestResult


@dataclass(frozen=True)
class CompareReport:
    prompt: str
    baseline: int
    versions: list[VersionStats]
    comparisons: list[Comparison]
    weights: dict[int, Decimal]
    srm_p_value: float | None

    @property
    def srm_warning(self) -> bool:
        return self.srm_p_value is not None and self.srm_p_value < SRM_ALPHA


def version_stats(row: Mapping[str, Any]) -> VersionStats:
    sketch = {int(k): int(v) for k, v in dict(row["latency_sketch"]).items()}
    n = int(row["executions"])
    return VersionStats(
        version=int(row["prompt_version"]),
        executions=n,
        successes=int(row["successes"]),
        latency=Moments(n, float(row["latency_sum_ms"]), float(row["latency_sq_ms"])),
        p50_ms=sketch_quantile(sketch, 0.5),
        p95_ms=sketch_quantile(sketch, 0.95),
        cost=Moments(n, float(row["cost_usd"]), float(row["cost_sq"])),
        cost_total=Decimal(row["cost_usd"]),
        feedback=Moments(
            int(row["feedback_count"]), float(row["feedback_sum"]), float(row["feedback_sq"])
        ),
        corrections=int(row["corrections"]),
    )


def compare(
    prompt: str,
    rows: Sequence[Mapping[str, Any]],
    weights: Mapping[int, Decimal],
    baseline: int | None = None,
) -> CompareReport:
    stats = [version_stats(r) for r in rows]
    by_version = {s.version: s for s in stats}
    if baseline is None:
        candidates = sorted(v for v in weights if v in by_version) or sorted(by_version)
        baseline = candidates[0] if candidates else 0
    base = by_version.get(baseline)
    comparisons = []
    if base is not None:
        for s in stats:
            if s.version == baseline:
                continue
            comparisons.append(
                Comparison(
                    s.version,
                    two_proportions(base.successes, base.executions, s.successes, s.executions),
                    welch(base.latency, s.latency, higher_is_better=False),
                    welch(base.cost, s.cost, higher_is_better=False),
                    welch(base.feedback, s.feedback, higher_is_better=True),
                )
            )
    srm = None
    in_test = [v for v in sorted(weights) if weights[v] > 0]
    if len(in_test) >= 2:
        observed = [by_version[v].executions if v in by_version else 0 for v in in_test]
        srm = sample_ratio_mismatch(observed, [float(weights[v]) for v in in_test])
    return CompareReport(prompt, baseline, stats, comparisons, dict(weights), srm)


# --- rendering ---------------------------------------------------------------------------
def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ci(lo: float, hi: float, fmt: str = ".3f") -> str:
    return f"[{_f(lo, fmt)}, {_f(hi, fmt)}]"


def render_text(r: CompareReport) -> str:
    lines = [f"Prompt {r.prompt!r}: versions compared against baseline v{r.baseline}", ""]
    lines.append(
        f"{'version':<8}{'weight':>7}{'calls':>8}{'success':>9}  {'95% CI':<17}"
        f"{'lat mean':>9}{'p50':>8}{'p95':>8}{'cost/call':>12}{'feedback':>9}{'n fb':>6}"
    )
    for s in r.versions:
        lo, hi = wilson_interval(s.successes, s.executions)
        w = r.weights.get(s.version)
        lines.append(
            f"v{s.version:<7}{_f(float(w), '.2f') if w is not None else '-':>7}{s.executions:>8}"
            f"{_f(s.success_rate):>9}  {_ci(lo, hi):<17}{_f(s.latency.mean, '.1f'):>9}"
            f"{_f(s.p50_ms, '.0f'):>8}{_f(s.p95_ms, '.0f'):>8}{_f(s.cost.mean, '.6f'):>12}"
            f"{_f(s.feedback.mean, '.2f'):>9}{s.feedback.n:>6}"
        )
    lines.append("")
    for c in r.comparisons:
        lines.append(f"v{c.version} vs v{r.baseline}:")
        for label, t, fmt in (
            ("success rate", c.success, ".4f"),
            ("latency ms", c.latency, ".1f"),
            ("cost per call", c.cost, ".6f"),
            ("feedback", c.feedback, ".3f"),
        ):
            ci = _ci(t.low, t.high, fmt)
            estimate = _f(t.estimate, "+" + fmt)
            p_value = "<1e-15" if t.p_value < 1e-15 else _f(t.p_value, ".4g")
            lines.append(
                f"  {label:<14}{estimate:>12}  95% CI {ci:<26}p={p_value:<10}{t.verdict.value}"
            )
    if r.srm_p_value is not None:
        status = "WARNING: sample ratio mismatch" if r.srm_warning else "traffic matches weights"
        lines.append(
            f"\nSample ratio check (chi-square vs configured weights): p={r.srm_p_value:.4g} "
            f"- {status}"
        )
    return "\n".join(lines) + "\n"


def render_json(r: CompareReport) -> str:
    def test(t: TestResult) -> dict[str, Any]:
        return {
            "estimate": t.estimate,
            "ci95": [t.low, t.high],
            "p_value": t.p_value,
            "verdict": t.verdict.value,
        }

    doc = {
        "prompt": r.prompt,
        "baseline": r.baseline,
        "weights": {str(k): str(v) for k, v in r.weights.items()},
        "versions": [
            {
                "version": s.version,
                "executions": s.executions,
                "success_rate": s.success_rate,
                "success_ci95": list(wilson_interval(s.successes, s.executions)),
                "latency_mean_ms": s.latency.mean,
                "latency_ci95": list(mean_interval(s.latency)),
                "latency_p50_ms": s.p50_ms,
                "latency_p95_ms": s.p95_ms,
                "cost_usd_total": str(s.cost_total),
                "cost_per_call_ci95": list(mean_interval(s.cost)),
                "feedback_mean": s.feedback.mean,
                "feedback_ci95": list(mean_interval(s.feedback)),
                "corrections": s.corrections,
            }
            for s in r.versions
        ],
        "comparisons": [
            {
                "version": c.version,
                "success_rate": test(c.success),
                "latency_ms": test(c.latency),
                "cost_per_call": test(c.cost),
                "feedback": test(c.feedback),
            }
            for c in r.comparisons
        ],
        "sample_ratio_p_value": r.srm_p_value,
        "sample_ratio_mismatch": r.srm_warning,
    }
    return json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    """NaN and infinities (undefined statistics) become null in JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
