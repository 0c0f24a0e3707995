"""The consecutive-poison limit stops one sink, not billing, and never dead-letters twice.

Issue 13 item 5: the limit used to raise out of ``worker sink``, so all four sinks
stopped with it (billing too), and as nothing past the poison run was committed,
every restart copied the same messages to the DLQ again and stopped again.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas.topics import DLQ_SUFFIX, OUTCOMES, PROMPT_VERSIONS, topic_spec
from llmpulse.simulator.samples import sample_outcome
from tests.harness import committed_offsets, read_all

pytestmark = pytest.mark.stack

LIMIT = 3
POISON = 5  # the 4th stops the sink (limit 3); the 5th waits for the restart


async def _send(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(settings.topic(topic), value, key=key)
    finally:
        await producer.stop()


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", "sink"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _until(
    check: Callable[[], Awaitable[bool]], what: str, log: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}\n{_tail(log)}"
        await asyncio.sleep(0.3)


async def test_poison_limit_stops_one_sink_billing_goes_on_and_no_dlq_copy_twice(
    settings: Settings, tmp_path: Path
) -> None:
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp_path / "state"),
        LLMPULSE_DLQ_MAX_CONSECUTIVE=str(LIMIT),
    )
    subprocess.run([sys.executable, "-m", "llmpulse", "migrate"], env=env, check=True)
    log = tmp_path / "sink.log"
    await _send(settings, PROMPT_VERSIONS, [(b"p", b"not json %d" % i) for i in range(POISON)])
    worker = _start(env, log)
    try:

        async def stopped() -> bool:
            assert worker.poll() is None, _tail(log)
            return "prompt_versions sink stopped" in _tail(log)

        await _until(stopped, "the prompt_versions sink to stop on its limit", log)
        # Billing goes on in the same process.
        rng = random.Random(5)
        outcomes = [sample_outcome(rng) for _ in range(50)]
        spec = topic_spec(OUTCOMES)
        await _send(settings, OUTCOMES, [(spec.key_of(o), encode(o)) for o in outcomes])
        usage_group = f"{settings.consumer_group_prefix}.usage_events"

        async def billed() -> bool:
            offsets = await committed_offsets(settings, settings.topic(OUTCOMES), usage_group)
            return sum(v or 0 for v in offsets.values()) == len(outcomes)

        await _until(billed, "the usage sink to store and commit every outcome", log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 1  # a sink had stopped: the exit code says so
    finally:
        if worker.poll() is None:
            worker.kill()
    dlq = settings.topic(PROMPT_VERSIONS) + DLQ_SUFFIX
    assert len(await read_all(settings, dlq, LIMIT + 1, timeout=10)) == LIMIT + 1

    # Restarted: the dead-lettered messages were committed, only the fifth is new.
    worker = _start(env, log)
    try:
        versions_group = f"{settings.consumer_group_prefix}.prompt_versions"

        async def passed() -> bool:
            assert worker.poll() is None, _tail(log)
            offsets = await committed_offsets(
                settings, settings.topic(PROMPT_VERSIONS), versions_group
            )
            return sum(v or 0 for v in offsets.values()) == POISON

        await _until(passed, "the restarted sink to pass the last poison message", log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert len(await read_all(settings, dlq, POISON + 5, timeout=10)) == POISON
