"""Every long-lived in-memory map stops growing: fed many keys over simulated time.

Each test drives one component far past its bound (windows, horizons, ids,
names) with a simulated clock and checks that what it holds in the last third
of the run is no more than in the middle third (after warm-up): an unbounded
map grows steadily and fails that. The agents run without Kafka, as in
``tests/test_dedup_agents.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.types import TP
from pydantic import SecretStr
from redis.asyncio import Redis

from llmpulse.core.breaker import BreakerConfig
from llmpulse.core.registry import fold
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.prompts import PromptSelector, PromptUnavailable
from llmpulse.processors.breaker.agent import BreakerService
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.prompts.agent import PromptsService, RegistryLog
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import metrics
from llmpulse.processors.stream.faust_app import (
    OUTCOME_PARTIALS_TABLE,
    create_app,
    table_delete,
    table_set,
)
from llmpulse.processors.stream.input_cursor import is_cursor_key
from llmpulse.processors.stream.resends import is_resend_key
from llmpulse.schemas import ErrorClass, LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.events import PromptAction, PromptVersionEvent
from llmpulse.schemas.serving import PromptVersionEntry, PromptView, prompt_key
from llmpulse.schemas.topics import OUTCOMES
from tests.test_dedup_agents import FakeTable, Rec

#: Simulated time starts a month back (event times stay within the contract's bounds).
T0 = float(int((datetime.now(UTC) - timedelta(days=30)).timestamp()) // 3600 * 3600)
STEP = 5.0  # simulated seconds between batches
STEPS = 2160  # three simulated hours


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
        prompt_windows=[60, 300],
        prompt_window_grace_seconds=10,
        prompt_partial_retention_seconds=120,
    )


def _outcome(
    at: float, *, provider: str = "openai", prompt: str = "p0", version: int = 1, ok: bool = True
) -> LLMOutcome:
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=datetime.fromtimestamp(at, UTC),
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider=provider,
        model="m",
        prompt_name=prompt,
        prompt_version=version,
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        latency_ms=100,
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal("0.001"),
    )


def assert_stops_growing(sizes: Sequence[Mapping[str, int]]) -> None:
    """Each measure's peak in the last third of the run is at most its peak in the middle third."""
    third = len(sizes) // 3
    for name in sizes[0]:
        middle = max(s[name] for s in sizes[third : 2 * third])
        last = max(s[name] for s in sizes[2 * third :])
        assert last <= middle, f"{name} kept growing: {middle} -> {last}"


class SimClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- prompt rollups -----------------------------------------------------------------------
def _prompts(settings: Settings, clock: Callable[[], float]) -> PromptsService:
    service = PromptsService(settings, clock=clock)
    for topic in service.sources:
        table = FakeTable()
        service.sources[topic] = table
        service._resends[topic].table = table

    async def send_and_wait(*args: Any) -> None:
        return None

    producer: Any = SimpleNamespace(unacknowledged=set(), send_and_wait=send_and_wait)
    service.app._producer = producer
    return service


def _prompt_sizes(service: PromptsService, topic: str) -> dict[str, int]:
    table = service.sources[topic]
    return {
        "emitted": len(service._emitted),
        "live": len(service._live[topic]),
        "hot": len(service._hot[topic]),
        "last_sweep": len(service._last_sweep),
        "partials": sum(1 for k in table if not is_resend_key(k) and not is_cursor_key(k)),
        "resend_values": sum(1 for k in table if is_resend_key(k)),
        "resend_ids": service._resends[topic].held(),
    }


async def test_prompt_rollups_hold_what_open_and_recent_windows_need(tmp_path: Path) -> None:
    """Three hours of on-time, late, very late and resent outcomes over five prompts.

    Late events keep replacing an emitted correction of a recently closed window
    (each replacement has a new record id): the emitted-record map once kept an
    entry per replaced correction for as long as the worker ran.
    """
    settings = _settings(tmp_path)
    clock = SimClock(T0)
    service = _prompts(settings, clock)
    topic = settings.topic(OUTCOMES)
    offset = 0
    sizes = []
    for step in range(STEPS):
        clock.now = T0 + step * STEP
        outcomes = [
            _outcome(clock.now - 1, prompt=f"p{k}", version=1 + (step // 120) % 2) for k in range(5)
        ]
        outcomes.append(_outcome(clock.now - 75))  # a closed window, within retention
        outcomes.append(_outcome(clock.now - 2000))  # long closed: beyond the resend horizon
        outcomes.append(outcomes[step % 5])  # an identical resend
        records = [Rec(topic, 0, offset + i) for i in range(len(outcomes))]
        offset += len(outcomes)
        for rec, o in zip(records, outcomes, strict=True):
            service._on_outcome(o, rec)
        await service._flush(topic, 0, records)
        await service._emit_idle_windows()
        sizes.append(_prompt_sizes(service, topic))
    assert_stops_growing(sizes)
    assert sizes[-1]["emitted"] > 0  # the run exercised them
    assert sizes[-1]["resend_ids"] > 0


def _registry_event(name: str, version: int, action: PromptAction, at: datetime) -> Any:
    return PromptVersionEvent(
        event_id=uuid.uuid4(),
        event_time=at,
        prompt_name=name,
        version=version,
        action=action,
        content=f"{name} v{version}",
        ab_weight=Decimal("0.5") if action is PromptAction.activated else None,
    )


def test_the_registry_log_keeps_one_event_per_prompt_version() -> None:
    """Activations toggled 20,000 times: the registry worker once kept every event it read."""
    registry = RegistryLog()
    events = []
    at = datetime.now(UTC)
    for name in ("a", "b"):
        for version in (1, 2):
            events.append(_registry_event(name, version, PromptAction.created, at))
    for i in range(20_000):
        action = PromptAction.activated if i % 3 else PromptAction.deactivated
        events.append(_registry_event("ab"[i % 2], 1 + i // 2 % 2, action, at))
    sizes = []
    for event in events:
        registry.add(event)
        sizes.append({"events": len(registry)})
    assert_stops_growing(sizes)
    assert len(registry) == 4
    assert registry.state() == fold(events)


# --- breaker ---------------------------------------------------------------------------------
def _breaker(settings: Settings, clock: SimClock) -> BreakerService:
    config = BreakerConfig(window_seconds=60, minimum_calls=5, open_seconds=30)
    service = BreakerService(
        settings,
        configs=BreakerConfigs(default=config),
        clock=lambda: datetime.fromtimestamp(clock.now, UTC),
    )
    table = FakeTable()
    service.table = table
    service._resends.table = table

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    service._after_outcome = nothing  # type: ignore[method-assign]
    return service


async def test_breaker_state_is_bounded_by_its_window_and_providers(tmp_path: Path) -> None:
    """Three hours of outcomes for three providers: windows, resend memory, breakers bounded."""
    clock = SimClock(T0)
    service = _breaker(_settings(tmp_path), clock)
    providers = ("openai", "anthropic", "mistral")
    offset = 0
    sizes = []
    for step in range(STEPS):
        clock.now = T0 + step * STEP
        outcomes = [
            _outcome(clock.now - i % 3, provider=p, ok=(step + i) % 7 != 0)
            for i, p in enumerate(providers * 3)
        ]
        outcomes.append(outcomes[step % len(outcomes)])  # an identical resend
        records = [Rec(service.outcomes, 0, offset + i) for i in range(len(outcomes))]
        offset += len(outcomes)
        for rec, o in zip(records, outcomes, strict=True):
            service._on_outcome(o, rec)
        await service._flush(service.outcomes, 0, records)
        sizes.append(
            {
                "window_seconds": sum(len(core.window) for core in service._cores.values()),
                "breakers": len(service._cores) + len(service._applied),
                "table": len(service.table),
                "resend_ids": service._resends.held(),
            }
        )
    assert_stops_growing(sizes)
    assert set(service._cores) == set(providers)


# --- metrics labels --------------------------------------------------------------------------
def test_organization_labels_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 organizations: at most ``limit`` label values plus ``__other__``."""
    monkeypatch.setattr(metrics, "_orgs_seen", set())
    labels: set[str] = set()
    sizes = []
    for i in range(20_000):
        labels.add(metrics.org_label(f"org-{i}", 50))
        sizes.append({"labels": len(labels), "orgs_seen": len(metrics._orgs_seen)})
    assert_stops_growing(sizes)
    assert len(labels) == 51
    assert metrics.org_label("org-7", 50) == "org-7"  # the first ones keep their label


# --- gateway -------------------------------------------------------------------------------
class OnePrompt:
    """Redis with the view of prompt ``greet`` only; ``down`` makes every read fail."""

    def __init__(self) -> None:
        entry = PromptVersionEntry(version=1, weight=Decimal(1), content="hello")
        self.view = PromptView(prompt_name="greet", versions=(entry,)).model_dump_json()
        self.down = False

    async def get(self, key: str) -> str | None:
        if self.down:
            raise OSError("connection reset")
        return self.view if key == prompt_key("", "greet") else None


async def test_the_prompt_selector_caches_a_bounded_number_of_views() -> None:
    """20,000 distinct (mostly unknown) prompt names: the cache stays at its bound, and the
    prompt in steady use keeps its view (served through a Redis outage at the end)."""
    redis = OnePrompt()
    clock = SimClock(0.0)
    config = GatewayConfig(bootstrap_servers="127.0.0.1:1")
    selector = PromptSelector(cast(Redis, redis), config, max_prompts=1000, clock=clock)
    sizes = []
    for i in range(20_000):
        clock.now += 0.002
        if i % 10 == 0:
            assert (await selector.select("greet", f"user-{i}")).version.content == "hello"
        else:
            with pytest.raises(PromptUnavailable):
                await selector.select(f"unknown-{i}", "user")
        sizes.append({"cached": len(selector._cache)})
    assert_stops_growing(sizes)
    assert len(selector._cache) == 1000
    redis.down = True
    clock.now += 1.0
    assert (await selector.select("greet", "user")).version.content == "hello"


def test_the_prompt_selector_refuses_a_cache_without_room() -> None:
    with pytest.raises(ValueError, match="max_prompts"):
        PromptSelector(Redis(), GatewayConfig(bootstrap_servers="127.0.0.1:1"), max_prompts=0)


async def test_a_revoked_partitions_keys_leave_the_memory_store(tmp_path: Path) -> None:
    """Keys the agents write (``table_set``) go with their partition after a rebalance.

    Faust's memory store forgets a lost partition's keys once recovery completes,
    but only those whose partition it knows: before, keys written outside a
    stream event stayed, and the timers kept iterating them.
    """
    settings = _settings(tmp_path)
    table = OUTCOME_PARTIALS_TABLE.create(create_app(settings, "prompts"))
    table.send_changelog = lambda *args, **kwargs: None
    table_set(table, 0, "kept", 1)
    table_set(table, 1, "revoked", 2)
    table_set(table, 1, "deleted", 3)
    table_delete(table, 1, "deleted")
    changelog = TP(OUTCOME_PARTIALS_TABLE.changelog(settings), 0)
    await table.data.on_recovery_completed({changelog}, set())
    assert dict(table.data) == {"kept": 1}
