"""What each benchmark returns: plain figures, rendered by ``bench.report``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Throughput:
    """One consumer against the bare aiokafka ceiling, same events, same run."""

    events: int
    bare_per_second: float
    ours_per_second: float
    #: Peak RSS (MB) of the process that ran our side (worker or sink child).
    peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.ours_per_second / self.bare_per_second


@dataclass(frozen=True)
class Latency:
    """event_time of an opening's last failure -> its open snapshot on the Redis channel."""

    openings: int
    #: Background success events per second asked for, all on one provider ...
    load_target: int
    #: ... and the rate the background producer achieved while openings were measured.
    load_achieved: float
    #: Partition shared by the hot provider and every measured opening.
    partition: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class BreakerResult:
    throughput: Throughput
    latency: Latency


@dataclass(frozen=True)
class GatewayResult:
    """Microseconds on the application's request path (no ceiling to compare with but emit)."""

    routing_us: float
    execute_us: float
    emit_us: float
    bare_emit_us: float
    peak_rss_mb: float

    @property
    def emit_ratio(self) -> float:
        return self.emit_us / self.bare_emit_us


@dataclass(frozen=True)
class GrowthStep:
    """Billing figures with ``rows`` synthetic usage rows stored (seconds are medians)."""

    rows: int
    lookup_s: float
    lookup_before_s: float
    report_month_s: float
    report_month_before_s: float
    report_org_s: float
    report_org_before_s: float
    month_requests: int
    org_requests: int
    #: Usage sink events/s into this database (None when measured without Kafka).
    sink_per_second: float | None


@dataclass(frozen=True)
class Failed:
    """A benchmark that raised: the document says so in place of its figures."""

    error: str


@dataclass(frozen=True)
class Results:
    """Everything one ``python -m bench`` run measured (``None``: not run)."""

    sink: Throughput | Failed | None = None
    breaker: BreakerResult | Failed | None = None
    prompts: Throughput | Failed | None = None
    gateway: GatewayResult | Failed | None = None
    growth: list[GrowthStep] | Failed | None = None
