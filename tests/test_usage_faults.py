"""Fault tests of the usage flow on real Kafka and chDB.

* 50,000 messages (5% re-sent duplicates) with the sink worker SIGKILLed between
  an acknowledged insert and its offset commit, restarted with another batch
  size: the report equals the exact sums over unique events.
* ClickHouse unavailable for 20 s mid-stream: nothing lost or doubled, no DLQ
  entries, consumption resumes.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import ErrorClass, LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.topics import OUTCOMES, topic_spec
from tests.harness import committed_offsets, read_all, wait_for

pytestmark = pytest.mark.stack

ORGS = [f"org-{i:02d}" for i in range(20)]
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("anthropic", "claude-haiku-4"),
]
OPS = [Operation.completion, Operation.embedding, Operation.moderation]


def _events(n: int, start: datetime, seed: int) -> list[LLMOutcome]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        provider, model = MODELS[i % 4]
        ok = rng.random() > 0.05
        out.append(
            LLMOutcome(
                event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
                event_time=start + timedelta(microseconds=rng.randrange(3_600_000_000)),
                request_id=uuid.UUID(int=rng.getrandbits(128), version=4),
                org_id=ORGS[rng.randrange(20)],
                operation=OPS[rng.randrange(3)],
                provider=provider,
                model=model,
                status=OutcomeStatus.success if ok else OutcomeStatus.failure,
                error_class=None if ok else ErrorClass.server_error,
                latency_ms=rng.randrange(5000),
                input_tokens=rng.randrange(4000),
                output_tokens=rng.randrange(1000),
                cost_usd=Decimal(rng.randrange(10**9)).scaleb(-9) if ok else Decimal(0),
            )
        )
    return out


def _expected(unique: list[LLMOutcome]) -> dict[tuple[str, str], tuple[int, Decimal]]:
    acc: dict[tuple[str, str], list[object]] = defaultdict(lambda: [0, Decimal(0)])
    for o in unique:
        cell = acc[(o.org_id, o.operation.value)]
        cell[0] = int(str(cell[0])) + 1
        cell[1] = Decimal(str(cell[1])) + o.cost_usd
    return {k: (int(str(v[0])), Decimal(str(v[1]))) for k, v in acc.items()}


async def _produce(settings: Settings, events: list[LLMOutcome]) -> None:
    spec = topic_spec(OUTCOMES)
    producer = kafka.producer(settings, linger_ms=20)
    await producer.start()
    try:
        for i in range(0, len(events), 5000):
            futures = [
                await producer.send(settings.topic(OUTCOMES), encode(o), key=spec.key_of(o))
                for o in events[i : i + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _worker_env(settings: Settings, state: Path, **extra: str) -> dict[str, str]:
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(state),
        **extra,
    )
    return env


def _llmpulse(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmpulse", *args]


async def test_sigkill_between_insert_and_commit_counts_each_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    unique = _events(47_500, start, seed=21)
    rng = random.Random(5)
    resent = [unique[rng.randrange(len(unique))] for _ in range(2_500)]
    messages = unique + resent
    rng.shuffle(messages)
    # Resends after the originals they copy keep "same event_id resent" meaning.
    await _produce(settings, messages)
    total = len(messages)
    assert total == 50_000

    state = tmp_path / "worker"
    env = _worker_env(settings, state)
    subprocess.run(_llmpulse("migrate"), env=env, check=True, capture_output=True, timeout=120)

    topic = settings.topic(OUTCOMES)
    group = "llmpulse.usage_events"
    with (tmp_path / "worker1.log").open("w") as log1:
        first = subprocess.Popen(
            _llmpulse("worker", "sink", "--batch-rows", "2000", "--batch-seconds", "5"),
            env=_worker_env(settings, state, LLMPULSE_FAILPOINT="sink.kill_after_insert:3"),
            stdout=log1,
            stderr=subprocess.STDOUT,
        )
        assert first.wait(timeout=180) == -signal.SIGKILL
    committed_after_crash = sum(
        v or 0 for v in (await committed_offsets(settings, topic, group)).values()
    )
    assert committed_after_crash < total  # the crash left inserted rows uncommitted

    with (tmp_path / "worker2.log").open("w") as log2:
        second = subprocess.Popen(
            _llmpulse("worker", "sink", "--batch-rows", "7000", "--batch-seconds", "0.5"),
            env=env,
            stdout=log2,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                offsets = await committed_offsets(settings, topic, group)
                if sum(v or 0 for v in offsets.values()) == total:
                    break
                assert second.poll() is None, (tmp_path / "worker2.log").read_text()[-2000:]
                await asyncio.sleep(1)
            else:
                raise AssertionError("worker did not commit every offset in 300 s")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0

    report = subprocess.run(
        _llmpulse(
            "report",
            "costs",
            "--format",
            "json",
            "--start",
            start.isoformat(),
            "--end",
            (start + timedelta(hours=1)).isoformat(),
        ),
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = json.loads(report.stdout)
    got: dict[tuple[str, str], tuple[int, Decimal]] = {}
    for line in doc["lines"]:
        assert line["line"] == "usage"
        for op in ("completion", "embedding", "moderation"):
            if int(line[f"{op}_requests"]):
                got[(line["organization_id"], op)] = (
                    int(line[f"{op}_requests"]),
                    Decimal(line[f"{op}_cost_usd"]),
                )
    assert got == _expected(unique)
    assert Decimal(doc["total"]["total_cost_usd"]) == sum(o.cost_usd for o in unique)
    assert int(doc["total"]["total_requests"]) == len(unique)


async def test_clickhouse_outage_loses_and_doubles_nothing(settings: Settings, ch: Client) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    events = _events(6_000, start, seed=33)
    await _produce(settings, events[:3_000])
    stop = asyncio.Event()
    sink = UsageSink(settings, ch, group="sink-outage", max_rows=500, max_seconds=0.3)
    task = asyncio.create_task(sink.run(stop))
    await wait_for(lambda: sink.stats.inserted >= 1_000, 60, "first inserts")

    # ClickHouse unavailable: the table is detached in the embedded engine, so every
    # lookup and insert fails with a real server error for 20 seconds.
    await asyncio.to_thread(ch.command, "DETACH TABLE usage_events")
    outage_started = time.monotonic()
    await _produce(settings, events[3_000:])
    await wait_for(lambda: sink.stats.retries >= 2, 30, "the sink to retry")
    await asyncio.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))
    consumed_during_outage = sink.stats.consumed
    await asyncio.to_thread(ch.command, "ATTACH TABLE usage_events")

    await wait_for(lambda: sink.stats.consumed == 6_000 and not sink._next_offsets, 120, "resume")
    stop.set()
    stats = await task
    assert consumed_during_outage < 6_000  # consumption was paused, then resumed
    assert stats.dead_lettered == 0
    assert stats.retries >= 2
    count, cost = ch.query("SELECT count(), sum(cost_usd) FROM usage_events FINAL").result_rows[0]
    raw = ch.query("SELECT count() FROM usage_events").result_rows[0][0]
    assert (count, raw) == (6_000, 6_000)
    assert cost == sum(o.cost_usd for o in events)
    dlq = await read_all(settings, settings.topic(topic_spec(OUTCOMES).dlq), expected=0, timeout=2)
    assert dlq == []
