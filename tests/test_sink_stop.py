"""A sink retrying a failing ClickHouse write still stops on SIGTERM, committing nothing.

The sink retries a failed insert in place (events are valid: the failure is
infrastructure). It used to loop without looking at its stop flag, so SIGTERM
(a deploy, ``llmpulse stack down``, the supervisor) left it running until it was
killed; and each retry logged the whole failed query (5,000 ids, ~200 KB).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas.topics import OUTCOMES, topic_spec
from llmpulse.simulator.samples import sample_outcome
from tests.harness import committed_offsets

pytestmark = pytest.mark.stack


async def test_sigterm_stops_a_sink_that_retries_and_commits_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    events = [sample_outcome(random.Random(i)) for i in range(20)]
    producer = kafka.producer(settings)
    await producer.start()
    try:
        spec = topic_spec(OUTCOMES)
        for o in events:
            await producer.send_and_wait(settings.topic(OUTCOMES), encode(o), key=spec.key_of(o))
    finally:
        await producer.stop()
    # A fresh chDB folder that was never migrated: every insert fails (unknown table).
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp_path / "state"), LLMPULSE_SINK_RETRY_MAX_SECONDS="30"
    )
    log = tmp_path / "sink.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "llmpulse", "worker", "sink"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            while log.read_text().count("ClickHouse write failed") < 4:
                assert worker.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                await asyncio.sleep(0.2)
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=15)  # the next backoff alone would be 1.6 s and growing
        finally:
            if worker.poll() is None:
                worker.kill()
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "not committed" in text
    longest = max(len(line) for line in text.splitlines())
    assert longest < 1000, f"a log line of {longest} characters"
    offsets = await committed_offsets(
        settings, settings.topic(OUTCOMES), f"{settings.consumer_group_prefix}.usage_events"
    )
    assert sum(v or 0 for v in offsets.values()) == 0  # the failed batch was never committed
