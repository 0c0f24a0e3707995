"""Compacted topics read back whatever the age of their records (issue 13 item 2).

The prompt registry and the breaker state are compacted: a record stays the
current value of its key for as long as nothing replaces it. Records older
than the event-time max-past bound (400 days) used to be dropped on read, so
the registry looked empty and ``prompts create`` reused version 1.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from llmpulse.processors.breaker import ops as breaker_ops
from llmpulse.processors.prompts import ops as prompt_ops
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas.events import (
    BreakerSnapshot,
    BreakerState,
    PromptAction,
    PromptVersionEvent,
)
from llmpulse.schemas.topics import BREAKER_STATE, PROMPT_VERSIONS, topic_spec

pytestmark = pytest.mark.stack

LONG_AGO = datetime.now(UTC) - timedelta(days=500)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
        env=settings.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _produce(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for key, value in values:
            await producer.send_and_wait(settings.topic(topic), value, key=key)
    finally:
        await producer.stop()


async def test_old_registry_versions_are_read_back_and_never_reused(settings: Settings) -> None:
    spec = topic_spec(PROMPT_VERSIONS)
    old = [
        PromptVersionEvent(
            event_id=uuid.uuid4(),
            event_time=LONG_AGO,
            prompt_name="greet",
            version=v,
            action=PromptAction.created,
            content=f"Hello v{v}",
        )
        for v in (1, 2)
    ]
    await _produce(settings, PROMPT_VERSIONS, [(spec.key_of(e), encode(e)) for e in old])

    state = await prompt_ops.read_registry(settings)
    assert sorted(state["greet"].versions) == [1, 2]

    created = _cli(settings, "prompts", "create", "greet", "--content", "Hello again")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "created greet v3"
    listed = _cli(settings, "prompts", "list", "greet")
    assert [line.split()[1] for line in listed.stdout.splitlines()] == ["v1", "v2", "v3"]
    state = await prompt_ops.read_registry(settings)
    assert state["greet"].versions[1].content == "Hello v1"  # not overwritten


async def test_an_old_breaker_state_is_read_back_from_the_topic(settings: Settings) -> None:
    # A breaker that has been closed for 500 days: its latest snapshot is that old.
    snap = BreakerSnapshot(
        event_id=uuid.uuid4(),
        event_time=LONG_AGO,
        provider="prov-quiet",
        state=BreakerState.closed,
        version=2,
        since=LONG_AGO,
        as_of=LONG_AGO,
        failure_rate=0.0,
        calls_in_window=0,
    )
    await _produce(settings, BREAKER_STATE, [(b"prov-quiet", encode(snap))])
    assert await breaker_ops.status_from_topic(settings) == [snap]


async def test_a_registry_topic_that_does_not_exist_is_one_line(services: Settings) -> None:
    """``prompts list`` on a cluster without the topics names the fix (it waited 40 s, then
    printed a traceback)."""
    bare = services.model_copy(update={"topic_prefix": f"none{uuid.uuid4().hex[:8]}."})
    done = _cli(bare, "prompts", "list")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"llmpulse: error: topic {bare.topic(PROMPT_VERSIONS)} does not exist: "
        "create it with `llmpulse topics create`"
    ]
