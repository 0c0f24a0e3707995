"""Circuit-breaker semantics shared by the fleet agent and the gateway's local fallback.

A pure, deterministic state machine: no I/O, the clock is passed in, jitter is
derived from (provider, version) so a replay computes the same durations.
It lives in ``core`` because both ``processors`` (the fleet-wide Faust
agent) and ``gateway`` (the local breaker used when Redis is down or stale)
must apply exactly the same rules, and neither may import the other. The
same goes for which breaker an outcome feeds (``breaker_key``).

Rules (beyond the seed's consecutive-failure breaker):

* outcomes are judged in a sliding event-time window (``window_seconds``);
  outcomes older than the window relative to the clock (a replayed backlog)
  never change state;
* closed -> open on ``consecutive_failures`` failures in a row within the
  window, on a failure rate >= ``failure_rate_threshold`` over at least
  ``minimum_calls`` calls, or on a slow-call rate (latency or time to first
  token over their limits) >= ``slow_rate_threshold``;
* a 429 with Retry-After opens for exactly that long (at most
  ``open_max_seconds``); client errors other
  than 408/429, content-policy rejections and attempts the caller cancelled do
  not count; auth errors open
  for the maximum duration when ``auth_errors_force_open``;
* open -> half_open when the open duration has passed (the time is
  ``open_until``, not the moment someone noticed); the duration escalates by
  ``open_multiplier`` per re-opening, capped at ``open_max_seconds``, plus up to
  ``jitter_fraction`` of deterministic jitter;
* half_open: only outcomes whose event time is at or after the half-open
  moment count (a previous generation's late success never closes a re-opened
  breaker); ``half_open_probes`` successes close it, one failure re-opens it;
* operator states: forced_open (optionally until a time, then half_open) and
  disabled (never blocks); force_close and reset return to closed with a clean
  window.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from llmpulse.schemas.events import (
    BreakerAction,
    BreakerState,
    ErrorClass,
    LLMOutcome,
    OutcomeStatus,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Verdict(StrEnum):
    """How one outcome counts for the breaker."""

    success = "success"
    failure = "failure"
    ignored = "ignored"
    rate_limited = "rate_limited"
    auth = "auth"


def breaker_key(provider: str, model: str | None, model_keys: Container[str]) -> str:
    """The breaker that decides for ``model`` of ``provider``.

    ``provider/model`` when that key is in ``model_keys`` (the model has a breaker
    of its own), else ``provider``. The breaker agent (which feeds outcomes to
    breakers) and the gateway (which routes and probes by them) both call this, so
    an outcome always lands in the breaker that routed its call.
    """
    if model is not None:
        per_model = f"{provider}/{model}"
        if per_model in model_keys:
            return per_model
    return provider


@dataclass(frozen=True)
class BreakerConfig:
    """Per-provider (or per provider and model) breaker configuration."""

    window_seconds: float = 120.0
    failure_rate_threshold: float | None = 0.5
    minimum_calls: int = 20
    consecutive_failures: int | None = 5
    slow_latency_ms: int | None = None
    slow_ttft_ms: int | None = None
    slow_rate_threshold: float | None = None
    half_open_probes: int = 1
    open_seconds: float = 60.0
    open_max_seconds: float = 600.0
    open_multiplier: float = 2.0
    jitter_fraction: float = 0.1
    auth_errors_force_open: bool = True

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.open_seconds <= 0:
            raise ValueError("window_seconds and open_seconds must be > 0")
        if self.open_max_seconds < self.open_seconds:
            raise ValueError("open_max_seconds must be >= open_seconds")
        if self.half_open_probes < 1 or self.minimum_calls < 1:
            raise ValueError("half_open_probes and minimum_calls must be >= 1")
        for rate in (self.failure_rate_threshold, self.slow_rate_threshold):
            if rate is not None and not 0 < rate <= 1:
                raise ValueError("rate thresholds must be in (0, 1]")
        if not 0 <= self.jitter_fraction <= 1 or self.open_multiplier < 1:
            raise ValueError("jitter_fraction must be in [0, 1] and open_multiplier >= 1")

    @classmethod
    def seed_preset(cls) -> BreakerConfig:
        """The original design's breaker: 5 failures within 120 s open it for 60 s."""
        return cls(
            window_seconds=120.0,
            failure_rate_threshold=None,
            consecutive_failures=5,
            open_seconds=60.0,
            open_max_seconds=60.0,
            open_multiplier=1.0,
            jitter_fraction=0.0,
            auth_errors_force_open=False,
        )


def breaker_provider(key: str) -> str:
    """The provider of breaker ``key`` (``provider`` or ``provider/model``).

    Outcomes are partitioned by provider, so a breaker's operator controls must
    be too: a per-model breaker's control keyed by ``provider/model`` would land
    in another partition, owned by another worker, and be applied to a breaker
    that never sees the model's outcomes.
    """
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class Call:
    """What the breaker needs from one outcome."""

    event_time: datetime
    verdict: Verdict
    slow: bool = False
    retry_after_ms: int | None = None


def classify(outcome: LLMOutcome, config: BreakerConfig) -> Call:
    """How ``outcome`` counts under ``config``."""
    slow = (config.slow_latency_ms is not None and outcome.latency_ms > config.slow_latency_ms) or (
        config.slow_ttft_ms is not None
        and outcome.ttft_ms is not None
        and outcome.ttft_ms > config.slow_ttft_ms
    )
    if outcome.status is OutcomeStatus.success:
        return Call(outcome.event_time, Verdict.success, slow)
    if outcome.status is OutcomeStatus.cancelled:
        return Call(outcome.event_time, Verdict.ignored)  # the caller gave up, not the provider
    ec = outcome.error_class
    if ec is ErrorClass.rate_limited or outcome.http_status == 429:
        return Call(outcome.event_time, Verdict.rate_limited, slow, outcome.retry_after_ms)
    if ec is ErrorClass.auth_error:
        return Call(outcome.event_time, Verdict.auth, slow)
    if ec in (ErrorClass.client_error, ErrorClass.content_policy) and outcome.http_status != 408:
        return Call(outcome.event_time, Verdict.ignored)
    return Call(outcome.event_time, Verdict.failure, slow)


@dataclass(frozen=True)
class Transition:
    """One state change; ``version`` is the breaker's version after it."""

    provider: str
    from_state: BreakerState
    to_state: BreakerState
    at: datetime
    version: int
    reason: str


def jitter_unit(provider: str, version: int) -> float:
    """Deterministic value in [0, 1) for (provider, version)."""
    digest = hashlib.sha256(f"{provider}:{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class BreakerCore:
    """State of one provider's breaker. Mutated only through its methods."""

    provider: str
    config: BreakerConfig = field(default_factory=BreakerConfig)
    state: BreakerState = BreakerState.closed
    version: int = 0
    since: datetime = EPOCH
    open_until: datetime | None = None
    level: int = 0
    probes_ok: int = 0
    consecutive: int = 0
    # The latest transition's origin and reason, so its snapshot can be rebuilt.
    previous_state: BreakerState | None = None
    reason: str | None = None
    # Counted calls per event-time second: epoch second -> [calls, failures, slow].
    # Bounded by window_seconds entries whatever the traffic.
    window: dict[int, list[int]] = field(default_factory=dict)
    # Sums over ``window`` and the cutoff it was last pruned at (no second below it
    # is left), so the per-outcome check costs O(1) instead of O(window).
    _totals: list[int] = field(init=False, repr=False, compare=False)
    _pruned: int = field(default=-(2**62), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._totals = [sum(counts[i] for counts in self.window.values()) for i in range(3)]

    # --- queries -------------------------------------------------------------------
    def calls_in_window(self, now: datetime) -> tuple[int, int, int]:
        """(calls, failures, slow calls) within the window ending at ``now``."""
        cutoff = self._cutoff(now)
        if cutoff <= self._pruned:
            calls, fails, slow = self._totals  # every second left is inside the window
            return calls, fails, slow
        calls = fails = slow = 0
        for second, (c, f, s) in self.window.items():
            if second >= cutoff:
                calls += c
                fails += f
                slow += s
        return calls, fails, slow

    def failure_rate(self, now: datetime) -> float:
        calls, fails, _ = self.calls_in_window(now)
        return fails / calls if calls else 0.0

    def allows(self, now: datetime) -> bool:
        """Whether a caller may send a normal (non-probe) request now."""
        self.tick(now)
        return self.state in (BreakerState.closed, BreakerState.disabled)

    # --- events ----------------------------------------------------------------------
    def tick(self, now: datetime) -> list[Transition]:
        """Time-driven transitions: open (or forced_open with an end) -> half_open."""
        timed = self.state in (BreakerState.open, BreakerState.forced_open)
        if timed and self.open_until is not None and now >= self.open_until:
            at = self.open_until
            self.open_until = None
            self.probes_ok = 0
            return [self._move(BreakerState.half_open, at, "open duration elapsed")]
        return []

    def record(self, call: Call, now: datetime) -> list[Transition]:
        """Apply one classified outcome observed at clock time ``now``."""
        out = self.tick(now)
        if call.event_time < now - timedelta(seconds=self.config.window_seconds):
            return out  # replayed backlog: too old to say anything about now
        if call.verdict is Verdict.ignored:
            return out
        failed = call.verdict is not Verdict.success
        if self.state is BreakerState.half_open:
            if call.event_time < self.since:
                return out  # started before this half-open generation
            if failed or call.slow:
                return [*out, self._open(call, now, "probe failed")]
            self.probes_ok += 1
            if self.probes_ok >= self.config.half_open_probes:
                out.append(self._close(call.event_time, "probes succeeded"))
            return out
        self._prune(now)
        second = int(call.event_time.timestamp())
        if second >= self._pruned:  # one below it is outside this and every later window
            bucket = self.window.setdefault(second, [0, 0, 0])
            bucket[0] += 1
            bucket[1] += failed
            bucket[2] += call.slow
            totals = self._totals
            totals[0] += 1
            totals[1] += failed
            totals[2] += call.slow
        if self.state is not BreakerState.closed:
            return out  # open/forced/disabled: counted for statistics only
        self.consecutive = self.consecutive + 1 if failed else 0
        reason = self._should_open(call, now)
        if reason:
            out.append(self._open(call, now, reason))
        return out

    def control(
        self, action: BreakerAction, now: datetime, until: datetime | None
    ) -> list[Transition]:
        """Operator override."""
        if action is BreakerAction.force_open:
            self.open_until = until
            return [self._move(BreakerState.forced_open, now, "operator force_open")]
        if action is BreakerAction.disable:
            self.open_until = None
            return [self._move(BreakerState.disabled, now, "operator disable")]
        reason = "operator force_close" if action is BreakerAction.force_close else "operator reset"
        return [self._close(now, reason)]

    # --- internals ------------------------------------------------------------------
    def _should_open(self, call: Call, now: datetime) -> str | None:
        cfg = self.config
        if call.verdict is Verdict.rate_limited and call.retry_after_ms:
            return "rate_limited"
        if call.verdict is Verdict.auth and cfg.auth_errors_force_open:
            return "auth_error"
        if cfg.consecutive_failures is not None and self.consecutive >= cfg.consecutive_failures:
            return "consecutive_failures"
        calls, fails, slow = self.calls_in_window(now)
        if calls >= cfg.minimum_calls:
            if (
                cfg.failure_rate_threshold is not None
                and fails / calls >= cfg.failure_rate_threshold
            ):
                return "failure_rate"
            if cfg.slow_rate_threshold is not None and slow / calls >= cfg.slow_rate_threshold:
                return "slow_calls"
        return None

    def _open(self, call: Call, now: datetime, reason: str) -> Transition:
        cfg = self.config
        if reason == "rate_limited" and call.retry_after_ms:
            # Honoured up to open_max_seconds: a bogus "retry in a day" is capped.
            wanted = call.event_time + timedelta(milliseconds=call.retry_after_ms)
            until = max(now, min(wanted, now + timedelta(seconds=cfg.open_max_seconds)))
        elif reason == "auth_error":
            until = now + timedelta(seconds=cfg.open_max_seconds)
        else:
            self.level += 1
            base = min(
                cfg.open_seconds * cfg.open_multiplier ** (self.level - 1), cfg.open_max_seconds
            )
            jitter = 1 + cfg.jitter_fraction * jitter_unit(self.provider, self.version + 1)
            until = now + timedelta(seconds=base * jitter)
        self.open_until = until
        self.probes_ok = 0
        return self._move(BreakerState.open, now, reason)

    def _close(self, at: datetime, reason: str) -> Transition:
        self.window.clear()
        self._totals = [0, 0, 0]
        self.consecutive = 0
        self.level = 0
        self.probes_ok = 0
        self.open_until = None
        return self._move(BreakerState.closed, at, reason)

    def _move(self, to: BreakerState, at: datetime, reason: str) -> Transition:
        frm = self.state
        self.state = to
        self.version += 1
        self.since = at
        self.previous_state = frm
        self.reason = reason
        return Transition(self.provider, frm, to, at, self.version, reason)

    def _cutoff(self, now: datetime) -> int:
        """First epoch second inside the window ending at ``now``."""
        return math.ceil((now - timedelta(seconds=self.config.window_seconds)).timestamp())

    def _prune(self, now: datetime) -> None:
        cutoff = self._cutoff(now)
        if cutoff <= self._pruned:
            return  # nothing below this cutoff is left
        totals = self._totals
        for second in [s for s in self.window if s < cutoff]:
            c, f, slow = self.window.pop(second)
            totals[0] -= c
            totals[1] -= f
            totals[2] -= slow
        self._pruned = cutoff

    # --- persistence (Faust table values, JSON-able) --------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "state": self.state.value,
            "version": self.version,
            "since": self.since.isoformat(),
            "open_until": self.open_until.isoformat() if self.open_until else None,
            "level": self.level,
            "probes_ok": self.probes_ok,
            "consecutive": self.consecutive,
            "previous_state": self.previous_state.value if self.previous_state else None,
            "reason": self.reason,
            "window": [[sec, *counts] for sec, counts in self.window.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: BreakerConfig) -> BreakerCore:
        return cls(
            provider=data["provider"],
            config=config,
            state=BreakerState(data["state"]),
            version=int(data["version"]),
            since=datetime.fromisoformat(data["since"]),
            open_until=datetime.fromisoformat(data["open_until"]) if data["open_until"] else None,
            level=int(data["level"]),
            probes_ok=int(data["probes_ok"]),
            consecutive=int(data["consecutive"]),
            previous_state=BreakerState(data["previous_state"])
            if data.get("previous_state")
            else None,
            reason=data.get("reason"),
            window={int(sec): [int(c), int(f), int(s)] for sec, c, f, s in data["window"]},
        )
