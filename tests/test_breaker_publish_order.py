"""Every breaker transition reaches the state and transitions topics, whatever the timing.

The breaker publishes in the background, a change at a time per breaker, while
the agent applies later events. A publication that marked a version published
without sending it (the live breaker had moved on during its Redis round trip,
or a later change was sent first) lost that transition from both topics for
good: seen after a broker restart, when a backlog of outcomes arrives in quick
batches (``tests/test_faults_broker_restart.py``). The service runs here
without Kafka or Redis: its topics record what is sent, Redis is a script that
waits when told to.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmpulse.core.breaker import BreakerConfig
from llmpulse.processors.breaker.agent import BreakerService
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.schemas import BreakerSnapshot, ErrorClass, LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.events import BreakerAction, BreakerControl
from tests.test_dedup_agents import FakeTable, Rec, _settings


class FakeTopic:
    """A topic that acknowledges every send at once and keeps the snapshots sent."""

    def __init__(self) -> None:
        self.sent: list[BreakerSnapshot] = []

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append(BreakerSnapshot.model_validate_json(value))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked


class SlowRedis:
    """``SET_IF_NEWER`` that holds its first call until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, keys: list[str], args: list[Any]) -> int:
        if not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        return 1


def _service(tmp_path: Path) -> tuple[BreakerService, FakeTopic, SlowRedis]:
    service = BreakerService(_settings(tmp_path), configs=BreakerConfigs(default=BreakerConfig()))
    service.table = FakeTable()
    service._resends.table = service.table
    topics = FakeTopic()
    service.state_topic = service.transitions_topic = topics  # type: ignore[assignment]
    redis = SlowRedis()
    service._set_if_newer = redis  # type: ignore[assignment]
    return service, topics, redis


def _outcome(error: ErrorClass | None = None) -> LLMOutcome:
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider="openai",
        model="m",
        status=OutcomeStatus.success if error is None else OutcomeStatus.failure,
        error_class=error,
        latency_ms=100,
    )


async def _published(service: BreakerService) -> None:
    while service._publishing:
        await asyncio.gather(*service._publishing)


def _versions(topics: FakeTopic) -> list[tuple[int, str]]:
    return [(s.version, s.state.value) for s in topics.sent]


async def test_a_transition_applied_during_an_earlier_publication_is_sent(
    tmp_path: Path,
) -> None:
    service, topics, redis = _service(tmp_path)
    service._on_outcome(_outcome(), Rec(service.outcomes, 0, 0))  # version 0: Redis only
    await redis.entered.wait()  # its Redis round trip under way (slow after a restart)
    service._on_outcome(_outcome(ErrorClass.auth_error), Rec(service.outcomes, 0, 1))
    redis.release.set()
    await _published(service)
    assert _versions(topics) == [(1, "open"), (1, "open")]  # state and transitions topics


async def test_transitions_are_sent_in_the_order_they_were_applied(tmp_path: Path) -> None:
    service, topics, redis = _service(tmp_path)
    redis.entered.set()  # Redis answers at once
    service._on_outcome(_outcome(ErrorClass.auth_error), Rec(service.outcomes, 0, 0))
    # An operator control applied right after, before the opening's publication ran.
    control = BreakerControl(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        provider="openai",
        action=BreakerAction.force_close,
        reason="test",
    )
    await service._on_control(control, Rec(service.controls, 0, 0))
    await _published(service)
    assert _versions(topics) == [(1, "open"), (1, "open"), (2, "closed"), (2, "closed")]
