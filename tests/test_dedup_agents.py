"""Resends (same ``event_id``) applied once by the stateful agents, through a restart.

The agents run without Kafka: their tables are plain dicts that record the
changelog writes, and a "restart" is a new service whose table holds what the
old one wrote (what Faust restores from the changelog).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from pydantic import SecretStr

from llmpulse.core.breaker import BreakerConfig
from llmpulse.processors.breaker.agent import BreakerService
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.prompts.agent import PromptsService
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import metrics
from llmpulse.processors.stream.resends import is_resend_key
from llmpulse.schemas import ErrorClass, LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.events import BreakerState
from llmpulse.schemas.topics import OUTCOMES


class FakeTable(dict[str, Any]):
    """A changelog-backed table without Kafka: ``data`` is itself, writes are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, str, Any]] = []
        self._key_partition: dict[str, int] = {}  # as Faust's memory store keeps it

    @property
    def data(self) -> FakeTable:
        return self

    def send_changelog(self, partition: int, key: str, value: Any, **_: Any) -> None:
        self.writes.append((partition, key, value))


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
    )


def _outcome(event_id: uuid.UUID, at: datetime, ok: bool = True) -> LLMOutcome:
    return LLMOutcome(
        event_id=event_id,
        event_time=at,
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider="openai",
        model="m",
        prompt_name="summarize",
        prompt_version=1,
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        latency_ms=100,
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal("0.001"),
    )


def _prompts(settings: Settings, table: FakeTable) -> PromptsService:
    service = PromptsService(settings)
    topic = settings.topic(OUTCOMES)
    service.sources[topic] = table
    service._resends[topic].table = table

    async def send_and_wait(*args: Any) -> None:
        return None

    producer: Any = SimpleNamespace(unacknowledged=set(), send_and_wait=send_and_wait)
    service.app._producer = producer
    return service


async def _feed(service: PromptsService, events: list[tuple[int, LLMOutcome]]) -> None:
    """Apply ``(offset, outcome)`` of partition 0 as one batch, then flush it."""
    topic = service.settings.topic(OUTCOMES)
    records = [Rec(topic, 0, offset) for offset, _ in events]
    for rec, (_, o) in zip(records, events, strict=True):
        service._on_outcome(o, rec)
    await service._flush(topic, 0, records)


def _executions(service: PromptsService, size: int) -> int:
    topic = service.settings.topic(OUTCOMES)
    return sum(p.executions for _, p in service._partials_in(topic) if p.window_seconds == size)


async def test_prompt_rollups_count_a_resend_once_also_after_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    table = FakeTable()
    service = _prompts(settings, table)
    now = datetime.now(UTC)
    first = [(i, _outcome(uuid.uuid4(), now - timedelta(seconds=i % 5))) for i in range(10)]
    # Resends of offsets 0 and 3, in the same batch and in the next one.
    await _feed(service, [*first, (10, first[0][1])])
    await _feed(service, [(11, first[3][1]), (12, _outcome(uuid.uuid4(), now))])
    assert _executions(service, 60) == 11
    assert _executions(service, 3600) == 11

    # A restarted worker has what the changelog held: a resend is still known.
    restarted = _prompts(settings, table)
    await _feed(restarted, [(13, first[5][1]), (14, first[0][1])])
    assert _executions(restarted, 60) == 11


async def test_a_resend_beyond_the_horizon_is_applied_and_counted(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    service = _prompts(settings, FakeTable())
    horizon = max(settings.prompt_windows) + settings.prompt_window_grace_seconds
    old = datetime.fromtimestamp(time.time() - horizon - 120, UTC)
    counter = metrics.DEDUP_HORIZON_EXCEEDED.labels(flow="prompt_performance")
    before = counter._value.get()
    o = _outcome(uuid.uuid4(), old)
    await _feed(service, [(0, o), (1, o)])
    assert counter._value.get() - before == 2
    assert _executions(service, 3600) == 2  # cannot be told apart: both counted


def _breaker(settings: Settings, table: FakeTable) -> BreakerService:
    config = BreakerConfig(consecutive_failures=3, failure_rate_threshold=None)
    service = BreakerService(settings, configs=BreakerConfigs(default=config))
    service.table = table
    service._resends.table = table

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    service._after_outcome = nothing  # type: ignore[method-assign]
    return service


async def _feed_breaker(service: BreakerService, events: list[tuple[int, LLMOutcome]]) -> None:
    records = [Rec(service.outcomes, 0, offset) for offset, _ in events]
    for rec, (_, o) in zip(records, events, strict=True):
        service._on_outcome(o, rec)
    await service._flush(service.outcomes, 0, records)


async def test_resent_failures_do_not_open_a_healthy_breaker_also_after_a_restart(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    table = FakeTable()
    service = _breaker(settings, table)
    now = datetime.now(UTC)
    failures = [_outcome(uuid.uuid4(), now, ok=False) for _ in range(2)]
    # Two failures, each sent twice: three in a row would open the breaker.
    await _feed_breaker(service, [(0, failures[0]), (1, failures[0]), (2, failures[1])])
    await _feed_breaker(service, [(3, failures[1])])
    core = service._cores["openai"]
    assert core.state is BreakerState.closed
    assert core.calls_in_window(now) == (2, 2, 0)

    # Restarted from the changelog: replayed offsets and later resends count nothing.
    restarted = _breaker(settings, table)
    await _feed_breaker(restarted, [(2, failures[1]), (3, failures[1]), (4, failures[0])])
    core = restarted._cores["openai"]
    assert core.state is BreakerState.closed
    assert core.calls_in_window(now) == (2, 2, 0)
    # A third distinct failure does open it (the counts were kept, not lost).
    await _feed_breaker(restarted, [(5, _outcome(uuid.uuid4(), now, ok=False))])
    assert restarted._cores["openai"].state is BreakerState.open


async def test_a_breaker_replayed_without_its_resend_memory_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    """The resend memory is written after the breakers: a crash may lose it alone."""
    settings = _settings(tmp_path)
    table = FakeTable()
    service = _breaker(settings, table)
    now = datetime.now(UTC)
    events = [(i, _outcome(uuid.uuid4(), now, ok=i % 2 == 0)) for i in range(4)]
    await _feed_breaker(service, events)
    for key in [key for key in table if is_resend_key(key)]:
        del table[key]
    restarted = _breaker(settings, table)
    await _feed_breaker(restarted, events)  # replayed from the committed offset
    assert restarted._cores["openai"].calls_in_window(now) == (4, 2, 0)
    await _feed_breaker(restarted, [(4, events[1][1])])  # remembered again by the replay
    assert restarted._cores["openai"].calls_in_window(now) == (4, 2, 0)
