"""ProviderOrchestrator and BreakerView: failover rules, events, cancellation (unit level).

Providers are plain async functions; the breaker view is the real class, fed
snapshots directly (``apply``) or left stale so the local breaker decides. The
shared-permit cancellation test uses the session's real Redis.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from llmpulse.core.breaker import BreakerConfig
from llmpulse.gateway.breaker_view import BreakerView, Source
from llmpulse.gateway.config import GatewayConfig, redis_client
from llmpulse.gateway.errors import ProviderError
from llmpulse.gateway.orchestrator import (
    AllProvidersFailed,
    Completion,
    LLMCall,
    Provider,
    ProviderCall,
    ProviderOrchestrator,
    RequestRejected,
)
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.redis_client import url as redis_url
from llmpulse.schemas import serving
from llmpulse.schemas.events import (
    BreakerSnapshot,
    BreakerState,
    ErrorClass,
    Feedback,
    LLMOutcome,
    LLMRequest,
    OutcomeStatus,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.wall0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def mono(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return self.wall0 + timedelta(seconds=self.t - 1000.0)


class Events:
    def __init__(self) -> None:
        self.items: list[LLMRequest | LLMOutcome | Feedback] = []

    def emit(self, event: LLMRequest | LLMOutcome | Feedback) -> None:
        self.items.append(event)

    def outcomes(self) -> list[LLMOutcome]:
        return [e for e in self.items if isinstance(e, LLMOutcome)]


class FakeProvider:
    """Answers from a script: an exception to raise, a delay, or success."""

    def __init__(self, name: str, fail: BaseException | None = None, delay: float = 0.0):
        self.name, self.fail, self.delay = name, fail, delay
        self.calls = 0

    async def __call__(self, call: LLMCall, model: str) -> Completion:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return Completion(input_tokens=10, output_tokens=5, cost_usd=Decimal("0.000123"))


CONFIG = GatewayConfig(
    bootstrap_servers="127.0.0.1:1", redis_url=SecretStr("redis://127.0.0.1:1/0")
)


def _setup(
    *providers: FakeProvider, fresh: bool = True, timeout: float = 1.0
) -> tuple[ProviderOrchestrator, BreakerView, Events, Clock]:
    clock = Clock()
    view = BreakerView(
        redis_client(CONFIG),
        CONFIG,
        [p.name for p in providers],
        breaker_config=BreakerConfig.seed_preset(),
        wall=clock.wall,
        mono=clock.mono,
    )
    if fresh:  # the shared view was confirmed just now (worker alive): all closed
        view._agent_seen = clock.mono()
        for p in providers:
            view._confirmed[p.name] = clock.mono()
    events = Events()
    orch = ProviderOrchestrator(
        [
            Provider(p.name, f"{p.name}-model", p, priority=i, timeout_seconds=timeout)
            for i, p in enumerate(providers)
        ],
        view=view,
        emitter=events,
        rng=random.Random(1),
        wall=clock.wall,
        mono=clock.mono,
        deadline_seconds=5,
    )
    return orch, view, events, clock


def _snapshot(
    provider: str, state: BreakerState, version: int, permits: int = 1
) -> BreakerSnapshot:
    now = datetime.now(UTC)
    return BreakerSnapshot(
        event_id=uuid.uuid4(),
        event_time=now,
        provider=provider,
        state=state,
        version=version,
        since=now,
        as_of=now,
        failure_rate=0.0,
        calls_in_window=0,
        probe_permits=permits,
    )


CALL = LLMCall(org_id="acme", subject_id="user-1")


async def test_server_error_fails_over_and_every_attempt_is_two_events() -> None:
    a, b = FakeProvider("a", ProviderError("down", http_status=503)), FakeProvider("b")
    orch, _, events, _ = _setup(a, b)
    result = await orch.execute(CALL)
    assert (result.provider, result.failed_over, a.calls, b.calls) == ("b", True, 1, 1)
    assert [type(e).__name__ for e in events.items] == [
        "LLMRequest",
        "LLMOutcome",
        "LLMRequest",
        "LLMOutcome",
    ]
    assert {e.request_id for e in events.items} == {result.request_id}
    assert len({e.event_id for e in events.items}) == 4
    first, second = events.outcomes()
    assert (first.provider, first.status, first.error_class, first.http_status, first.attempt) == (
        "a",
        OutcomeStatus.failure,
        ErrorClass.server_error,
        503,
        1,
    )
    assert (second.provider, second.status, second.attempt, second.input_tokens) == (
        "b",
        OutcomeStatus.success,
        2,
        10,
    )
    assert second.cost_usd == Decimal("0.000123")


@pytest.mark.parametrize("status", [400, 404, 422, 401])
async def test_client_errors_are_returned_without_retry_or_failover(status: int) -> None:
    a, b = FakeProvider("a", ProviderError("bad", http_status=status)), FakeProvider("b")
    orch, _, events, _ = _setup(a, b)
    with pytest.raises(RequestRejected) as info:
        await orch.execute(CALL)
    assert (a.calls, b.calls, len(info.value.attempts)) == (1, 0, 1)
    assert info.value.decision.http_status == status
    assert len(events.outcomes()) == 1


async def test_429_is_not_retried_on_that_provider_before_retry_after() -> None:
    a = FakeProvider("a", ProviderError("slow down", http_status=429, retry_after="2"))
    b = FakeProvider("b")
    orch, _, events, clock = _setup(a, b)
    assert (await orch.execute(CALL)).provider == "b"
    assert events.outcomes()[0].retry_after_ms == 2000
    clock.t += 1.9
    assert (await orch.execute(CALL)).provider == "b"
    assert a.calls == 1  # still cooling down: skipped, not called
    clock.t += 0.2
    await orch.execute(CALL)
    assert a.calls == 2  # Retry-After passed: tried again


async def test_timeout_fails_over() -> None:
    a, b = FakeProvider("a", delay=0.5), FakeProvider("b")
    orch, _, events, _ = _setup(a, b, timeout=0.05)
    result = await orch.execute(CALL)
    assert result.provider == "b"
    assert events.outcomes()[0].status is OutcomeStatus.timeout


async def test_open_shared_breaker_is_skipped_and_older_snapshots_are_ignored() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    orch, view, _, _ = _setup(a, b)
    assert view.apply(_snapshot("a", BreakerState.open, 3))
    for _ in range(5):
        assert (await orch.execute(CALL)).provider == "b"
    assert a.calls == 0
    assert not view.apply(_snapshot("a", BreakerState.closed, 2))  # older: ignored
    assert view.route("a").state is BreakerState.open


async def test_a_model_with_its_own_breaker_is_routed_by_it() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    orch, view, _, clock = _setup(a, b)
    # The worker's list (serving.model_breakers_key): a's model has its own breaker;
    # zz is not a provider of this instance, so its model is not followed.
    assert view._follow_model_keys(b'["a/a-model", "zz/m"]')
    assert view.breaker_key("a", "a-model") == "a/a-model"
    assert view.breaker_key("a", "other") == "a"
    assert {h.provider for h in view.health()} == {"a", "b", "a/a-model"}
    view._confirmed["a/a-model"] = clock.mono()
    view.apply(_snapshot("a", BreakerState.open, 1))  # the provider's breaker...
    assert (await orch.execute(CALL)).provider == "a"  # ...does not decide for a-model
    view.apply(_snapshot("a/a-model", BreakerState.open, 1))
    assert (await orch.execute(CALL)).provider == "b"
    assert a.calls == 1


async def test_the_local_fallback_feeds_the_model_s_own_breaker() -> None:
    a = FakeProvider("a", ProviderError("down", http_status=500))
    b = FakeProvider("b")
    orch, view, _, clock = _setup(a, b)
    view._follow_model_keys(b'["a/a-model"]')
    clock.t += CONFIG.snapshot_stale_seconds + 0.1  # stale: local breakers decide
    for _ in range(8):
        await orch.execute(CALL)
    assert a.calls == 5  # seed preset: open after 5 consecutive failures
    assert view.route("a", "a-model").state is BreakerState.open
    assert view.route("a", "other").state is BreakerState.closed


async def test_stale_shared_view_falls_back_to_the_local_breaker() -> None:
    a, b = FakeProvider("a", ProviderError("down", http_status=500)), FakeProvider("b")
    orch, view, _, clock = _setup(a, b)
    view.apply(_snapshot("a", BreakerState.closed, 1))
    clock.t += CONFIG.snapshot_stale_seconds + 0.1  # no refresh since: stale
    assert view.route("a").source is Source.local
    for _ in range(8):
        await orch.execute(CALL)
    # The seed preset opens after 5 consecutive failures; later requests skip a.
    assert a.calls == 5
    assert view.route("a").state is BreakerState.open


async def test_local_half_open_allows_one_probe_and_cancellation_frees_it() -> None:
    a, b = FakeProvider("a", delay=10), FakeProvider("b")
    orch, view, events, clock = _setup(a, b, fresh=False, timeout=30)
    core = view._local["a"]
    core.state, core.open_until = BreakerState.open, clock.wall() + timedelta(seconds=1)
    clock.t += 2  # open duration elapsed: half_open locally
    route = view.route("a")
    assert (route.state, route.probe, route.allowed) == (BreakerState.half_open, True, True)
    task = asyncio.create_task(orch.execute(CALL))
    await asyncio.sleep(0.05)
    assert a.calls == 1
    assert not view.route("a").allowed  # the single local probe slot is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert view.route("a").allowed  # released by the cancelled probe
    (outcome,) = events.outcomes()  # every attempt has an outcome...
    assert (outcome.status, outcome.error_class, outcome.is_probe) == (
        OutcomeStatus.cancelled,
        ErrorClass.cancelled,
        True,
    )
    assert view._local["a"].state is BreakerState.half_open  # ...that the breaker ignores


async def test_unknown_exceptions_propagate_unchanged() -> None:
    a = FakeProvider("a", KeyError("bug in the caller's code"))
    orch, _, events, _ = _setup(a, FakeProvider("b"))
    with pytest.raises(KeyError):
        await orch.execute(CALL)
    assert [o.status for o in events.outcomes()] == [OutcomeStatus.cancelled]


async def test_a_timeout_cut_short_by_the_deadline_is_not_the_provider_s_fault() -> None:
    a, b = FakeProvider("a", delay=1.0), FakeProvider("b")
    orch, view, events, clock = _setup(a, b, fresh=False, timeout=5.0)
    orch.deadline_seconds = 0.1  # the caller's budget, far below the provider's timeout
    orch.providers[0] = replace(orch.providers[0], call=_advancing(clock, a, 0.2))
    for _ in range(6):
        with pytest.raises(AllProvidersFailed, match="deadline"):
            await orch.execute(CALL)
    assert {o.status for o in events.outcomes()} == {OutcomeStatus.cancelled}
    # Six of them in a row would open the seed-preset breaker if they counted.
    assert view._local["a"].state is BreakerState.closed
    assert b.calls == 0  # no time left to fail over either


def _advancing(clock: Clock, inner: FakeProvider, seconds: float) -> ProviderCall:
    async def call(request: LLMCall, model: str) -> Completion:
        clock.t += seconds  # the fake monotonic clock follows the real wait
        return await inner(request, model)

    return call


async def test_retry_after_is_capped() -> None:
    a = FakeProvider("a", ProviderError("slow down", http_status=429, retry_after="86400"))
    orch, _, _, clock = _setup(a, FakeProvider("b"))
    orch.max_retry_after_seconds = 30
    await orch.execute(CALL)
    # Past both caps: this instance's cooldown (30 s) and the local breaker's
    # rate-limit opening (open_max_seconds, 60 s in the seed preset).
    clock.t += 61
    await orch.execute(CALL)
    assert a.calls == 2


async def test_all_failing_gives_up_after_rounds_with_backoff() -> None:
    a = FakeProvider("a", ProviderError("down", http_status=502))
    b = FakeProvider("b", ConnectionResetError("reset"))
    orch, _, events, _ = _setup(a, b)
    with pytest.raises(AllProvidersFailed) as info:
        await orch.execute(CALL)
    assert (a.calls, b.calls) == (3, 3)  # max_rounds = 3
    assert [x.attempt for x in events.outcomes()] == [1, 2, 3, 4, 5, 6]
    assert {x.error_class for x in events.outcomes()} == {
        ErrorClass.server_error,
        ErrorClass.network,
    }
    assert len(info.value.attempts) == 6


def test_order_by_priority_then_weight() -> None:
    async def never(call: LLMCall, model: str) -> Completion:
        raise AssertionError

    view = BreakerView(redis_client(CONFIG), CONFIG, ["x", "y", "z"])
    orch = ProviderOrchestrator(
        [
            Provider("z", "m", never, priority=1),
            Provider("x", "m", never, priority=0, weight=3),
            Provider("y", "m", never, priority=0, weight=1),
        ],
        view=view,
        emitter=Events(),
        rng=random.Random(7),
    )
    firsts = Counter(orch.order()[0].name for _ in range(20_000))
    assert all(orch.order()[2].name == "z" for _ in range(100))
    assert abs(firsts["x"] / 20_000 - 0.75) < 0.015


async def _shared_half_open(
    settings: Settings, a: FakeProvider
) -> tuple[ProviderOrchestrator, aioredis.Redis, list[str]]:
    """Provider a half-open in the shared view (generation 7, two permits), b closed."""
    config = GatewayConfig(
        bootstrap_servers="127.0.0.1:1",
        redis_url=redis_url(settings),
        topic_prefix=settings.topic_prefix,
    )
    rds = redis_client(config)
    view = BreakerView(rds, config, ["a", "b"])
    await view.refresh()
    view.apply(_snapshot("a", BreakerState.half_open, 7, permits=2))
    orch = ProviderOrchestrator(
        [Provider("a", "m", a), Provider("b", "m", FakeProvider("b"), priority=1)],
        view=view,
        emitter=Events(),
    )
    return orch, rds, serving.permit_keys(settings.topic_prefix, "a", 7, 2)


@pytest.mark.stack
async def test_cancelled_shared_probe_releases_its_redis_permit(settings: Settings) -> None:
    orch, rds, keys = await _shared_half_open(settings, FakeProvider("a", delay=10))
    try:
        probe = asyncio.create_task(orch.execute(CALL))
        await asyncio.sleep(0.2)
        held = [await rds.get(k) for k in keys]
        assert sum(v is not None for v in held) == 1  # one of the two permits taken
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert [await rds.get(k) for k in keys] == [None, None]
    finally:
        await rds.aclose()


@pytest.mark.stack
async def test_shared_probe_permits_are_kept_on_failure_and_freed_on_client_errors(
    settings: Settings,
) -> None:
    failing = FakeProvider("a", ProviderError("down", http_status=503))
    orch, rds, keys = await _shared_half_open(settings, failing)
    try:
        assert (await orch.execute(CALL)).provider == "b"
        # A failed probe keeps its permit (until it expires or the breaker re-opens).
        held = [await rds.get(k) for k in keys]
        assert sum(v is not None for v in held) == 1
    finally:
        await rds.aclose()
    orch, rds, keys = await _shared_half_open(
        settings, FakeProvider("a", ProviderError("bad request", http_status=400))
    )
    try:
        await rds.delete(*keys)
        with pytest.raises(RequestRejected):
            await orch.execute(CALL)
        # The request's own fault says nothing about the provider: permit given back.
        assert [await rds.get(k) for k in keys] == [None, None]
    finally:
        await rds.aclose()


@pytest.mark.stack
async def test_without_a_live_breaker_worker_the_shared_view_is_stale(settings: Settings) -> None:
    config = GatewayConfig(
        bootstrap_servers="127.0.0.1:1",
        redis_url=redis_url(settings),
        topic_prefix=settings.topic_prefix,
        snapshot_stale_seconds=0.5,
    )
    rds = redis_client(config)
    key = serving.heartbeat_key(settings.topic_prefix)
    view = BreakerView(rds, config, ["a"])
    try:
        await view.refresh()  # Redis answers, but no worker has ever beaten
        assert view.route("a").source is Source.local
        await rds.set(key, "1")
        await view.refresh()
        assert view.route("a").source is Source.shared
        await asyncio.sleep(0.6)
        await view.refresh()  # the same heartbeat again: the worker stopped ticking
        assert view.route("a").source is Source.local
        await rds.set(key, "2")
        await view.refresh()
        assert view.route("a").source is Source.shared
    finally:
        await rds.aclose()


def test_stale_view_keeps_the_fleet_s_last_open_verdict_until_it_ends() -> None:
    a, b = FakeProvider("a"), FakeProvider("b")
    _, view, _, clock = _setup(a, b)
    snap = _snapshot("a", BreakerState.open, 4).model_copy(
        update={"next_attempt_at": clock.wall() + timedelta(seconds=10)}
    )
    view.apply(snap)
    clock.t += CONFIG.snapshot_stale_seconds + 1  # stale now; the local breaker is closed
    route = view.route("a")
    assert (route.source, route.allowed) == (Source.local, False)
    clock.t += 10
    assert view.route("a").allowed  # the open period is over: the local breaker decides
