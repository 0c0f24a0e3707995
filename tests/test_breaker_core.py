"""Breaker core: scenarios for every rule, and a stateful test against a reference model."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from llmpulse.core.breaker import BreakerConfig, BreakerCore, Call, Verdict, classify
from llmpulse.schemas import (
    BreakerAction,
    BreakerState,
    ErrorClass,
    LLMOutcome,
    Operation,
    OutcomeStatus,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def ok(t: datetime, slow: bool = False) -> Call:
    return Call(t, Verdict.success, slow)


def fail(t: datetime) -> Call:
    return Call(t, Verdict.failure)


def state_of(b: BreakerCore) -> BreakerState:
    """The state, read through a call so type narrowing does not carry across ticks."""
    return b.state


def outcome(**kw: object) -> LLMOutcome:
    base: dict[str, object] = dict(
        event_id=uuid.uuid4(),
        event_time=T0,
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider="openai",
        model="gpt-4o",
        status=OutcomeStatus.success,
        latency_ms=100,
    )
    base.update(kw)
    return LLMOutcome.model_validate(base, context={"now": T0})


# --- classification -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "verdict"),
    [
        ({}, Verdict.success),
        (
            {
                "status": OutcomeStatus.failure,
                "error_class": ErrorClass.server_error,
                "http_status": 503,
            },
            Verdict.failure,
        ),
        ({"status": OutcomeStatus.timeout, "error_class": ErrorClass.timeout}, Verdict.failure),
        ({"status": OutcomeStatus.failure, "error_class": ErrorClass.network}, Verdict.failure),
        (
            {
                "status": OutcomeStatus.failure,
                "error_class": ErrorClass.client_error,
                "http_status": 400,
            },
            Verdict.ignored,
        ),
        (
            {
                "status": OutcomeStatus.failure,
                "error_class": ErrorClass.client_error,
                "http_status": 408,
            },
            Verdict.failure,
        ),
        (
            {"status": OutcomeStatus.rejected, "error_class": ErrorClass.content_policy},
            Verdict.ignored,
        ),
        (
            {
                "status": OutcomeStatus.failure,
                "error_class": ErrorClass.rate_limited,
                "http_status": 429,
                "retry_after_ms": 3000,
            },
            Verdict.rate_limited,
        ),
        (
            {
                "status": OutcomeStatus.failure,
                "error_class": ErrorClass.auth_error,
                "http_status": 401,
            },
            Verdict.auth,
        ),
        (
            {"status": OutcomeStatus.cancelled, "error_class": ErrorClass.cancelled},
            Verdict.ignored,
        ),
    ],
)
def test_classify(kw: dict[str, object], verdict: Verdict) -> None:
    assert classify(outcome(**kw), BreakerConfig()).verdict is verdict


def test_slow_calls_by_latency_and_ttft() -> None:
    cfg = BreakerConfig(slow_latency_ms=1000, slow_ttft_ms=300)
    assert classify(outcome(latency_ms=1500), cfg).slow
    assert classify(outcome(latency_ms=200, ttft_ms=400), cfg).slow
    assert not classify(outcome(latency_ms=200, ttft_ms=100), cfg).slow


# --- scenarios ---------------------------------------------------------------------------
def test_seed_preset_five_failures_in_120s_open_for_60s() -> None:
    b = BreakerCore("openai", BreakerConfig.seed_preset())
    for i in range(4):
        assert b.record(fail(T0 + i * S), T0 + i * S) == []
    [t] = b.record(fail(T0 + 4 * S), T0 + 4 * S)
    assert (t.from_state, t.to_state, t.reason) == (
        BreakerState.closed,
        BreakerState.open,
        "consecutive_failures",
    )
    assert b.open_until == T0 + 4 * S + 60 * S
    assert not b.allows(T0 + 63 * S)
    assert b.tick(T0 + 64 * S)[0].to_state is BreakerState.half_open
    assert b.since == T0 + 64 * S  # the moment the duration ended, not when noticed
    assert b.record(ok(T0 + 65 * S), T0 + 65 * S)[0].to_state is BreakerState.closed


def test_seed_preset_success_resets_the_run() -> None:
    b = BreakerCore("openai", BreakerConfig.seed_preset())
    for i in range(4):
        b.record(fail(T0 + i * S), T0 + i * S)
    b.record(ok(T0 + 5 * S), T0 + 5 * S)
    for i in range(4):
        assert b.record(fail(T0 + (6 + i) * S), T0 + (6 + i) * S) == []
    assert b.state is BreakerState.closed


def test_failure_rate_needs_minimum_calls() -> None:
    cfg = BreakerConfig(failure_rate_threshold=0.5, minimum_calls=10, consecutive_failures=None)
    b = BreakerCore("a", cfg)
    for i in range(9):
        b.record(fail(T0) if i % 2 else ok(T0), T0)
    assert b.state is BreakerState.closed  # 4/9 and only 9 calls
    [t] = b.record(fail(T0), T0)  # 5/10 = 0.5
    assert t.reason == "failure_rate"


def test_slow_call_rate_opens() -> None:
    cfg = BreakerConfig(
        slow_rate_threshold=0.6,
        minimum_calls=5,
        consecutive_failures=None,
        failure_rate_threshold=None,
        slow_latency_ms=1000,
    )
    b = BreakerCore("a", cfg)
    for slow in (True, False, True, True):
        b.record(ok(T0, slow), T0)
    [t] = b.record(ok(T0, True), T0)
    assert t.reason == "slow_calls"


def test_window_slides_by_event_time() -> None:
    cfg = BreakerConfig(
        window_seconds=60, consecutive_failures=None, minimum_calls=4, failure_rate_threshold=0.75
    )
    b = BreakerCore("a", cfg)
    for _ in range(3):
        b.record(fail(T0), T0)
    # 61 s later the old failures are outside the window: 1 failure + 3 successes.
    now = T0 + 61 * S
    for _ in range(3):
        b.record(ok(now), now)
    assert b.record(fail(now), now) == []
    assert b.calls_in_window(now) == (4, 1, 0)


def test_replayed_backlog_never_opens() -> None:
    b = BreakerCore("a", BreakerConfig.seed_preset())
    now = T0 + timedelta(hours=1)
    for i in range(100):
        assert b.record(fail(T0 + i * S), now) == []
    assert b.state is BreakerState.closed


def test_retry_after_opens_for_exactly_that_long() -> None:
    b = BreakerCore("a", BreakerConfig())
    [t] = b.record(Call(T0, Verdict.rate_limited, retry_after_ms=7000), T0)
    assert t.reason == "rate_limited"
    assert b.open_until == T0 + 7 * S
    assert not b.allows(T0 + 6 * S)
    assert b.tick(T0 + 7 * S)[0].to_state is BreakerState.half_open


def test_retry_after_is_capped_at_the_maximum_open_time() -> None:
    b = BreakerCore("a", BreakerConfig(open_max_seconds=600))
    b.record(Call(T0, Verdict.rate_limited, retry_after_ms=86_400_000), T0)
    assert b.open_until == T0 + 600 * S


def test_client_errors_do_not_count_auth_errors_force_open() -> None:
    b = BreakerCore("a", BreakerConfig(consecutive_failures=2))
    for _ in range(10):
        assert b.record(Call(T0, Verdict.ignored), T0) == []
    [t] = b.record(Call(T0, Verdict.auth), T0)
    assert t.reason == "auth_error"
    assert b.open_until == T0 + timedelta(seconds=b.config.open_max_seconds)


def test_probe_limit_and_escalation_with_cap_and_jitter() -> None:
    cfg = BreakerConfig(
        consecutive_failures=1,
        open_seconds=10,
        open_multiplier=2,
        open_max_seconds=30,
        jitter_fraction=0.1,
        half_open_probes=3,
    )
    b = BreakerCore("a", cfg)
    now = T0
    durations = []
    for _ in range(4):
        b.record(fail(now), now)
        assert b.state is BreakerState.open
        assert b.open_until is not None
        durations.append((b.open_until - now).total_seconds())
        now = b.open_until
        b.tick(now)
        assert state_of(b) is BreakerState.half_open
    for d, base in zip(durations, (10, 20, 30, 30), strict=True):
        assert base <= d < base * 1.1
    # 3 probes needed: two successes keep it half-open, the third closes.
    assert b.record(ok(now), now) == []
    assert b.record(ok(now), now) == []
    assert b.record(ok(now), now)[0].to_state is BreakerState.closed
    assert b.level == 0


def test_previous_generation_never_closes_a_reopened_breaker() -> None:
    b = BreakerCore("a", BreakerConfig(consecutive_failures=1, open_seconds=10, jitter_fraction=0))
    b.record(fail(T0), T0)
    b.tick(T0 + 10 * S)
    assert b.state is BreakerState.half_open
    b.record(fail(T0 + 11 * S), T0 + 11 * S)  # probe fails: re-opened
    b.tick(T0 + 31 * S)
    assert b.state is BreakerState.half_open
    # A success that happened before this half-open period (slow delivery) is ignored.
    assert b.record(ok(T0 + 12 * S), T0 + 32 * S) == []
    assert b.state is BreakerState.half_open


def test_operator_controls() -> None:
    b = BreakerCore("a", BreakerConfig())
    assert (
        b.control(BreakerAction.force_open, T0, T0 + 30 * S)[0].to_state is BreakerState.forced_open
    )
    for _ in range(50):
        assert b.record(fail(T0), T0) == []
    assert b.tick(T0 + 30 * S)[0].to_state is BreakerState.half_open
    b.control(BreakerAction.disable, T0 + 31 * S, None)
    assert b.allows(T0 + 31 * S)
    assert b.control(BreakerAction.reset, T0 + 32 * S, None)[0].to_state is BreakerState.closed
    assert b.calls_in_window(T0 + 32 * S) == (0, 0, 0)


def test_roundtrip_dict() -> None:
    b = BreakerCore("a", BreakerConfig.seed_preset())
    for i in range(5):
        b.record(fail(T0 + i * S), T0 + i * S)
    again = BreakerCore.from_dict(b.to_dict(), b.config)
    assert again == b


# --- stateful test against a reference model ----------------------------------------------
@dataclass
class Reference:
    """A deliberately naive model of the rules: full history, recomputed each time."""

    cfg: BreakerConfig
    state: str = "closed"
    version: int = 0
    open_until: datetime | None = None
    half_since: datetime | None = None
    level: int = 0
    probes: int = 0
    history: list[tuple[datetime, bool]] = field(default_factory=list)
    run: int = 0

    def tick(self, now: datetime) -> None:
        if self.state == "open" and self.open_until and now >= self.open_until:
            self.state, self.half_since, self.probes = "half_open", self.open_until, 0
            self.version += 1

    def record(self, t: datetime, failed: bool, now: datetime) -> None:
        self.tick(now)
        w = timedelta(seconds=self.cfg.window_seconds)
        if t < now - w:
            return
        if self.state == "half_open":
            assert self.half_since is not None
            if t < self.half_since:
                return
            if failed:
                self._open(now)
            else:
                self.probes += 1
                if self.probes >= self.cfg.half_open_probes:
                    self.state, self.level, self.history, self.run = "closed", 0, [], 0
                    self.version += 1
            return
        self.history.append((t, failed))
        if self.state != "closed":
            return
        self.run = self.run + 1 if failed else 0
        recent = [f for ts, f in self.history if ts >= now - w]
        if (self.cfg.consecutive_failures and self.run >= self.cfg.consecutive_failures) or (
            self.cfg.failure_rate_threshold is not None
            and len(recent) >= self.cfg.minimum_calls
            and sum(recent) / len(recent) >= self.cfg.failure_rate_threshold
        ):
            self._open(now)

    def _open(self, now: datetime) -> None:
        self.level += 1
        secs = min(
            self.cfg.open_seconds * self.cfg.open_multiplier ** (self.level - 1),
            self.cfg.open_max_seconds,
        )
        self.state, self.open_until = "open", now + timedelta(seconds=secs)
        self.version += 1


class BreakerMachine(RuleBasedStateMachine):
    @initialize(
        consecutive=st.sampled_from([None, 2, 3]),
        rate=st.sampled_from([None, 0.5]),
        probes=st.integers(1, 2),
    )
    def setup(self, consecutive: int | None, rate: float | None, probes: int) -> None:
        cfg = BreakerConfig(
            window_seconds=30,
            consecutive_failures=consecutive,
            failure_rate_threshold=rate,
            minimum_calls=4,
            open_seconds=5,
            open_max_seconds=20,
            open_multiplier=2,
            jitter_fraction=0,
            half_open_probes=probes,
        )
        self.core = BreakerCore("p", cfg)
        self.ref = Reference(cfg)
        self.now = T0
        self.last_version = 0

    @rule(seconds=st.integers(0, 12))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        self.core.tick(self.now)
        self.ref.tick(self.now)

    @rule(failed=st.booleans(), age=st.sampled_from([0, 0, 0, 1, 40]))
    def outcome(self, failed: bool, age: int) -> None:
        t = self.now - timedelta(seconds=age)
        self.core.record(fail(t) if failed else ok(t), self.now)
        self.ref.record(t, failed, self.now)

    @invariant()
    def agrees_with_reference(self) -> None:
        if not hasattr(self, "core"):
            return
        assert self.core.state.value == self.ref.state
        assert self.core.version == self.ref.version
        assert self.core.version >= self.last_version
        self.last_version = self.core.version
        if self.core.state is BreakerState.open:
            assert self.core.open_until == self.ref.open_until

    @invariant()
    def window_counts_equal_a_full_scan(self) -> None:
        # The O(1) running totals give what summing the window's seconds gives.
        if not hasattr(self, "core"):
            return
        cutoff = math.ceil((self.now - timedelta(seconds=30)).timestamp())
        scanned = [0, 0, 0]
        for second, counts in self.core.window.items():
            if second >= cutoff:
                scanned = [a + b for a, b in zip(scanned, counts, strict=True)]
        assert list(self.core.calls_in_window(self.now)) == scanned


TestBreakerStateful = BreakerMachine.TestCase
TestBreakerStateful.settings = hsettings(max_examples=300, stateful_step_count=40, deadline=None)
