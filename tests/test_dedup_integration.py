"""Identical resends count once in the prompt rollups and the breaker windows (issue 13, item 13).

As an at-least-once producer would: 3,000 outcomes, 3% of them sent twice with
the same ``event_id`` (some right after, some after a SIGKILL and restart of
the worker, whose first copy the killed worker applied). The rollups loaded
into ClickHouse (what ``prompts compare`` reads) and the breaker's windows in
its changelog must count each id once.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.prompts import PromptPerformanceSink
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.clickhouse import run_query
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.faust_app import BREAKER_STATE_TABLE, app_id
from llmpulse.schemas import ErrorClass, LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.topics import OUTCOMES
from tests.harness import (
    behind,
    caught_up,
    read_all,
    rollups_brute_force,
    sigkill,
    spawn_worker,
    stop_worker,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.stack
TOTAL = 3_000
RESENT = 0.03
# The rollups' resend horizon is the longest window plus its grace (61 s): longer
# than the restart below, so resends of events the killed worker applied are caught.
WINDOWS = (5, 60)
BREAKER_CONFIG = """
default:
  window_seconds: 600
  consecutive_failures: null
  failure_rate_threshold: null
"""


def _outcome(rng: random.Random, provider: str) -> LLMOutcome:
    ok = rng.random() < 0.8
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 2)),
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider=provider,
        model="m",
        prompt_name="summarize",
        prompt_version=rng.choice((1, 2)),
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        http_status=200 if ok else 503,
        latency_ms=rng.randint(50, 2000),
        input_tokens=rng.randint(10, 900),
        output_tokens=rng.randint(0, 300),
        cost_usd=Decimal(rng.randint(0, 10**6)).scaleb(-9),
    )


async def _produce_with_resends(
    settings: Settings, env_kill: Any, providers: tuple[str, ...], seed: int
) -> list[LLMOutcome]:
    """Send ``TOTAL`` unique outcomes and 3% resends around ``env_kill()`` (after half).

    Half of the resends follow their first copy within the same second; the
    other half of the first half's resends wait until after the restart.
    """
    rng = random.Random(seed)
    unique: list[LLMOutcome] = []
    after_restart: list[LLMOutcome] = []
    producer = kafka.producer(settings)
    await producer.start()
    topic = settings.topic(OUTCOMES)

    async def send(o: LLMOutcome) -> None:
        await producer.send(topic, encode(o), key=o.provider.encode())

    try:
        for phase in (0, 1):
            for _ in range(TOTAL // 2 // 100):
                batch = [_outcome(rng, rng.choice(providers)) for _ in range(100)]
                unique.extend(batch)
                for o in batch:
                    await send(o)
                for o in batch:
                    if rng.random() < RESENT:
                        if phase == 0 and rng.random() < 0.5:
                            after_restart.append(o)
                        else:
                            await send(o)
                await producer.flush()
                await asyncio.sleep(0.1)
            if phase == 0:
                await asyncio.sleep(1)  # the worker applies (and persists) some of it
                await env_kill()
                for o in after_restart:
                    await send(o)
        await producer.flush()
    finally:
        await producer.stop()
    assert len(after_restart) > 5
    return unique


async def test_prompt_rollups_count_each_resent_outcome_once_through_a_sigkill(
    settings: Settings, ch: Client, tmp_path: Path
) -> None:
    ch.command("TRUNCATE TABLE prompt_performance")
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp_path / "state"),
        LLMPULSE_PROMPT_WINDOWS=json.dumps(list(WINDOWS)),
        LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS="1",
    )
    worker = spawn_worker(env, "prompts", tmp_path / "w1.log")

    async def kill_and_restart() -> None:
        nonlocal worker
        sigkill(worker)
        worker = spawn_worker(env, "prompts", tmp_path / "w2.log")
        await asyncio.sleep(12)  # the killed member leaves the group (session timeout)

    try:
        await asyncio.sleep(6)  # worker startup and group join
        unique = await _produce_with_resends(settings, kill_and_restart, ("p1", "p2", "p3"), 7)
        group = app_id(settings, "prompts")
        topic = settings.topic(OUTCOMES)

        async def explain() -> str:
            return f"(committed, end) by partition: {await behind(settings, topic, group)}"

        await wait_until(
            lambda: caught_up(settings, topic, group),
            120,
            "the prompts worker to apply every outcome",
            explain=explain,
        )
        expected = {
            (k[1], k[3]): v[:4]
            for k, v in rollups_brute_force(unique, [], WINDOWS).items()
            if k[2] == WINDOWS[0]
        }
        stop = asyncio.Event()
        sink = PromptPerformanceSink(settings, ch, group="dedup-it", max_seconds=0.3)
        task = asyncio.create_task(sink.run(stop))

        def loaded() -> dict[tuple[int, int], tuple[Any, ...]]:
            rows = ch.query(
                "SELECT prompt_version, toUnixTimestamp(window_start), sum(executions),"
                " sum(successes),"
                " sum(latency_sum_ms), sum(input_tokens + output_tokens)"
                " FROM prompt_performance FINAL WHERE prompt_name = 'summarize'"
                " AND window_seconds = {size:UInt32} GROUP BY prompt_version, window_start",
                parameters={"size": WINDOWS[0]},
            ).result_rows
            return {(r[0], r[1]): tuple(r[2:]) for r in rows}

        try:
            await wait_for(lambda: loaded() == expected, 60, "rollups equal to unique outcomes")
        except AssertionError:
            got = loaded()
            diff = {k: (got.get(k), expected.get(k)) for k in {*got, *expected}}
            diff = {k: v for k, v in diff.items() if v[0] != v[1]}
            raise AssertionError(f"{len(diff)} windows differ: {sorted(diff.items())}") from None
        finally:
            stop.set()
            await task
    finally:
        stop_worker(worker)
    # What ``prompts compare`` reads: executions per version, each id once.
    rows = run_query(
        ch,
        "prompt_performance__compare",
        {
            "prompt": "summarize",
            "window_seconds": WINDOWS[0],
            "start": datetime(2000, 1, 1, tzinfo=UTC),
            "end": datetime.now(UTC) + timedelta(hours=1),
        },
    )
    by_version = {int(r["prompt_version"]): int(r["executions"]) for r in rows}
    want = {v: sum(o.prompt_version == v for o in unique) for v in (1, 2)}
    assert by_version == want
    assert sum(by_version.values()) == TOTAL


async def _breaker_window(settings: Settings, key: str) -> tuple[int, int]:
    """(calls, failures) in the last value of breaker ``key`` in the breaker's changelog."""
    records = await read_all(settings, BREAKER_STATE_TABLE.changelog(settings), 10**9, 5.0)
    last: dict[str, Any] | None = None
    for r in records:
        if r.key is not None and r.key.decode().strip('"') == key and r.value:
            last = json.loads(r.value)
    assert last is not None, f"no state of {key} in the changelog"
    return sum(w[1] for w in last["window"]), sum(w[2] for w in last["window"])


async def test_breaker_windows_count_each_resent_outcome_once_through_a_sigkill(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "breaker.yaml").write_text(BREAKER_CONFIG)
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp_path / "state"),
        LLMPULSE_BREAKER_CONFIG_FILE=str(tmp_path / "breaker.yaml"),
    )
    worker = spawn_worker(env, "breaker", tmp_path / "w1.log")

    async def kill_and_restart() -> None:
        nonlocal worker
        sigkill(worker)
        worker = spawn_worker(env, "breaker", tmp_path / "w2.log")
        await asyncio.sleep(12)

    try:
        await asyncio.sleep(6)
        unique = await _produce_with_resends(settings, kill_and_restart, ("prov-dup",), 11)
        group = app_id(settings, "breaker")
        await wait_until(
            lambda: caught_up(settings, settings.topic(OUTCOMES), group),
            120,
            "the breaker worker to apply every outcome",
        )
    finally:
        stop_worker(worker)
    failures = sum(o.status is OutcomeStatus.failure for o in unique)
    assert await _breaker_window(settings, "prov-dup") == (TOTAL, failures)
