"""Windowed prompt-performance rollups (pure): partial aggregates and a mergeable sketch.

A partial aggregates one prompt version over one tumbling event-time window,
from one source partition (its single writer). Partials of the same window
from other partitions, and late corrections, are added up downstream: every
field is a sum and the latency sketch merges by adding bucket counts.

Replays after a crash are exact: a partial remembers the last source offset it
applied, and offsets of a partition arrive in order, so an event at or below
that offset was already counted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

#: Relative accuracy of latency quantiles.
SKETCH_ALPHA = 0.01
_GAMMA = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA)
_LOG_GAMMA = math.log(_GAMMA)


@functools.lru_cache(maxsize=65_536)  # latencies are whole ms: once per distinct value
def sketch_index(value_ms: float) -> int:
    """Bucket of a latency: 0 for 0 ms, else ceil(log_gamma(value)) + 1 (always >= 1)."""
    if value_ms <= 0:
        return 0
    return max(1, math.ceil(math.log(value_ms) / _LOG_GAMMA) + 1)


def sketch_value(index: int) -> float:
    """Representative value of a bucket (relative error <= SKETCH_ALPHA inside it)."""
    if index <= 0:
        return 0.0
    upper = _GAMMA ** (index - 1)
    return 2 * upper / (_GAMMA + 1)


def sketch_quantile(buckets: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a merged sketch; None when empty."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = q * (total - 1)
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen > rank:
            return sketch_value(index)
    return sketch_value(max(buckets))


def merge_sketches(*sketches: Mapping[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for s in sketches:
        for k, v in s.items():
            out[k] = out.get(k, 0) + v
    return out


def window_start(epoch_seconds: float, size: int) -> int:
    """Start (epoch seconds) of the tumbling window of ``size`` seconds holding the time."""
    return int(epoch_seconds // size) * size


class OutcomeSample(NamedTuple):
    """What one outcome adds to a partial, derived once for all its window sizes."""

    success: bool
    latency_ms: int
    latency_sq_ms: int
    sketch_bucket: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    cost_sq: float

    @classmethod
    def of(
        cls,
        *,
        success: bool,
        latency_ms: int,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal,
    ) -> OutcomeSample:
        return cls(
            success,
            latency_ms,
            latency_ms * latency_ms,
            sketch_index(latency_ms),
            input_tokens,
            output_tokens,
            cost_usd,
            float(cost_usd) ** 2,
        )


@dataclass
class Partial:
    """Sums of one prompt version over one window from one partition."""

    prompt_name: str
    prompt_version: int
    window_seconds: int
    window_start: int
    partition: int
    first_offset: int
    is_correction: bool = False
    last_offset: int = -1
    emitted: bool = False
    executions: int = 0
    successes: int = 0
    failures: int = 0
    latency_sum_ms: int = 0
    latency_sq_ms: int = 0
    latency_sketch: dict[int, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    cost_sq: float = 0.0
    feedback_count: int = 0
    feedback_sum: Decimal = Decimal(0)
    feedback_sq: Decimal = Decimal(0)

    def closed(self, now_epoch: float, grace_seconds: float) -> bool:
        return now_epoch >= self.window_start + self.window_seconds + grace_seconds

    def seen(self, offset: int) -> bool:
        """True when the event at ``offset`` of this partition was already applied."""
        return offset <= self.last_offset

    def add_outcome(
        self,
        offset: int,
        *,
        success: bool,
        latency_ms: int,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal,
    ) -> None:
        self.add_sample(
            offset,
            OutcomeSample.of(
                success=success,
                latency_ms=latency_ms,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost_usd,
            ),
        )

    def add_sample(self, offset: int, s: OutcomeSample) -> None:
        """``add_outcome`` with the per-outcome arithmetic already done (the agent's path)."""
        self.last_offset = offset
        self.executions += 1
        self.successes += s.success
        self.failures += not s.success
        self.latency_sum_ms += s.latency_ms
        self.latency_sq_ms += s.latency_sq_ms
        sketch = self.latency_sketch
        sketch[s.sketch_bucket] = sketch.get(s.sketch_bucket, 0) + 1
        self.input_tokens += s.input_tokens
        self.output_tokens += s.output_tokens
        self.cost_usd += s.cost_usd
        self.cost_sq += s.cost_sq

    def add_feedback(self, offset: int, score: Decimal) -> None:
        self.last_offset = offset
        self.feedback_count += 1
        self.feedback_sum += score
        self.feedback_sq += score * score

    # --- persistence (Faust table values) ------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["latency_sketch"] = [[k, v] for k, v in self.latency_sketch.items()]
        for key in ("cost_usd", "feedback_sum", "feedback_sq"):
            d[key] = str(d[key])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Partial:
        d = dict(data)
        d["latency_sketch"] = {int(k): int(v) for k, v in d["latency_sketch"]}
        for key in ("cost_usd", "feedback_sum", "feedback_sq"):
            d[key] = Decimal(d[key])
        return cls(**d)

    def key(self) -> str:
        return partial_key(
            self.prompt_name,
            self.prompt_version,
            self.window_seconds,
            self.window_start,
            self.partition,
            self.is_correction,
        )


def partial_key(
    name: str, version: int, size: int, start: int, partition: int, correction: bool
) -> str:
    """Table key of a partial; the partition is part of it, so each key has one writer.

    A window has one regular partial per partition and, after it closed, at most
    one open correction partial (emitted and removed at the next sweep).
    """
    return f"{name}|{version}|{size}|{start}|{partition}|{'c' if correction else 'w'}"
