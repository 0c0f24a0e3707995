"""Prompt registry and windowed rollups on real Kafka, Redis and chDB.

The rollup worker runs as a process with 2 s and 10 s windows; outcomes and
feedback arrive in and out of order, some after their windows closed, and the
worker is SIGKILLed and restarted mid-window. The rollups loaded into
ClickHouse must equal a brute-force computation over the same events.
"""

from __future__ import annotations

import asyncio
import json
import math
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
from typing import Any

import pytest
from aiokafka import TopicPartition
from clickhouse_connect.driver.client import Client

from llmpulse.core.rollup import SKETCH_ALPHA, sketch_quantile
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.prompts import PromptPerformanceSink, PromptVersionsSink
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import ErrorClass, Feedback, LLMOutcome, Operation, OutcomeStatus, serving
from llmpulse.schemas.topics import FEEDBACK, OUTCOMES, PROMPT_VERSIONS
from tests.harness import wait_for

pytestmark = pytest.mark.stack
WINDOWS = (2, 10)


def _env(settings: Settings, state: Path) -> dict[str, str]:
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(state),
        LLMPULSE_PROMPT_WINDOWS=json.dumps(list(WINDOWS)),
        LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS="1",
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _registry_end(settings: Settings) -> int:
    consumer = kafka.consumer(settings, group=f"end-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic(PROMPT_VERSIONS), 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def test_registry_commands_validate_and_materialize(
    settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings, tmp_path / "state")
    assert _cli(env, "prompts", "create", "greet", "--content", "Hello {{n}}").returncode == 0
    assert (
        _cli(
            env, "prompts", "create", "greet", "--content", "Hi {{n}}!", "--temperature", "1.2"
        ).returncode
        == 0
    )
    assert _cli(env, "prompts", "activate", "greet", "--version", "1").returncode == 0
    assert (
        _cli(env, "prompts", "activate", "greet", "--version", "2", "--weight", "0.25").returncode
        == 0
    )
    end = await _registry_end(settings)
    for args, message in [
        (
            ("activate", "greet", "--version", "2", "--weight", "1.5"),
            "weight 1.5 is outside 0 to 1",
        ),
        (("create", "greet", "--content", "x", "--temperature", "3"), "temperature 3 is outside"),
        (("activate", "nope", "--version", "1"), "unknown prompt 'nope'"),
        (("create", "greet", "--version", "4", "--content", "x"), "next is 3"),
        (("activate", "greet", "--version", "1", "--weight", "0.9"), "would sum to 1.15"),
    ]:
        result = _cli(env, "prompts", *args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
    assert await _registry_end(settings) == end  # nothing was written
    listed = _cli(env, "prompts", "list", "greet").stdout
    assert "v1    active    share 0.7500" in listed
    assert "v2    active    share 0.2500" in listed

    # The registry agent materializes the active versions for the gateway.
    worker = subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", "prompts"],
        env=env,
        stdout=(tmp_path / "w.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    rds = redis_client.connect(settings)
    try:
        key = serving.prompt_key(settings.topic_prefix, "greet")
        deadline = time.monotonic() + 60
        while not await rds.exists(key) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        view = json.loads(await rds.get(key) or b"{}")
        assert {v["version"]: v["weight"] for v in view["versions"]} == {1: "0.75", 2: "0.25"}
        assert view["versions"][1]["content"] == "Hi {{n}}!"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await rds.aclose()


def _outcome(version: int, at: datetime, rng: random.Random) -> LLMOutcome:
    ok = rng.random() < (0.8 if version == 1 else 0.9)
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=at,
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider=rng.choice(["openai", "anthropic", "p3"]),
        model="m",
        prompt_name="summarize",
        prompt_version=version,
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        latency_ms=int(rng.lognormvariate(6, 0.5)),
        input_tokens=rng.randint(10, 900),
        output_tokens=rng.randint(0, 300),
        cost_usd=Decimal(rng.randint(0, 10**6)).scaleb(-9),
    )


def _feedback(o: LLMOutcome, at: datetime, rng: random.Random) -> Feedback:
    return Feedback(
        event_id=uuid.uuid4(),
        event_time=at,
        request_id=o.request_id,
        org_id="acme",
        prompt_name="summarize",
        prompt_version=o.prompt_version or 1,
        score=Decimal(rng.randint(0, 10)) / 2,
    )


def _brute_force(
    outcomes: list[LLMOutcome], feedback: list[Feedback]
) -> dict[tuple[int, int, int], dict[str, Any]]:
    out: dict[tuple[int, int, int], dict[str, Any]] = defaultdict(
        lambda: {
            "n": 0,
            "ok": 0,
            "lat": 0,
            "tok": 0,
            "cost": Decimal(0),
            "fb": 0,
            "fb_sum": Decimal(0),
            "lats": [],
        }
    )
    for size in WINDOWS:
        for o in outcomes:
            start = int(o.event_time.timestamp() // size) * size
            c = out[(o.prompt_version or 0, size, start)]
            c["n"] += 1
            c["ok"] += o.status is OutcomeStatus.success
            c["lat"] += o.latency_ms
            c["tok"] += o.input_tokens + o.output_tokens
            c["cost"] += o.cost_usd
            c["lats"].append(o.latency_ms)
        for f in feedback:
            start = int(f.event_time.timestamp() // size) * size
            c = out[(f.prompt_version, size, start)]
            c["fb"] += 1
            c["fb_sum"] += f.score
    return dict(out)


@pytest.mark.parametrize("crash", [False, True], ids=["no-crash", "sigkill-mid-window"])
async def test_rollups_equal_brute_force_with_late_events(
    settings: Settings, ch: Client, tmp_path: Path, crash: bool
) -> None:
    ch.command("TRUNCATE TABLE prompt_performance")
    env = _env(settings, tmp_path / "state")
    rng = random.Random(5)
    outcomes: list[LLMOutcome] = []
    feedback: list[Feedback] = []
    worker = subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", "prompts"],
        env=env,
        stdout=(tmp_path / "w1.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    producer = kafka.producer(settings)
    await producer.start()

    async def send_batch(n: int, jitter: float, late: bool = False) -> None:
        now = datetime.now(UTC)
        for _ in range(n):
            # Out of order: event times up to `jitter` seconds in the past; late events
            # belong to windows that closed minutes ago (they become corrections).
            at = now - timedelta(seconds=rng.uniform(0, jitter) + (180 if late else 0))
            o = _outcome(rng.choice((1, 2)), at, rng)
            outcomes.append(o)
            await producer.send(settings.topic(OUTCOMES), encode(o), key=o.provider.encode())
            if rng.random() < 0.3:
                f = _feedback(o, at + timedelta(milliseconds=rng.randint(0, 500)), rng)
                feedback.append(f)
                await producer.send(settings.topic(FEEDBACK), encode(f), key=b"summarize")
        await producer.flush()

    try:
        await asyncio.sleep(6)  # worker startup and group join
        for _ in range(6):
            await send_batch(150, jitter=3)
            await asyncio.sleep(0.5)
        await send_batch(60, jitter=30, late=True)
        if crash:
            # Crash mid-window (the 2 s and 10 s windows of the last batches are
            # open), restart, continue once the killed member has left the group.
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(timeout=30) == -signal.SIGKILL
            worker = subprocess.Popen(
                [sys.executable, "-m", "llmpulse", "worker", "prompts"],
                env=env,
                stdout=(tmp_path / "w2.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            await asyncio.sleep(16)
        await send_batch(200, jitter=2)
        for _ in range(4):
            await send_batch(100, jitter=4)
            await asyncio.sleep(0.5)
        await send_batch(40, jitter=10, late=True)
    finally:
        await producer.stop()

    expected = _brute_force(outcomes, feedback)
    stop = asyncio.Event()
    sink = PromptPerformanceSink(settings, ch, group="perf-it", max_seconds=0.3)
    task = asyncio.create_task(sink.run(stop))

    def loaded() -> dict[tuple[int, int, int], tuple[Any, ...]]:
        rows = ch.query(
            "SELECT prompt_version, window_seconds, toUnixTimestamp(window_start), sum(executions),"
            " sum(successes), sum(latency_sum_ms), sum(input_tokens + output_tokens),"
            " sum(cost_usd), sum(feedback_count), sum(feedback_sum), sumMap(latency_sketch),"
            " countIf(is_correction)"
            " FROM prompt_performance FINAL WHERE prompt_name = 'summarize'"
            " GROUP BY prompt_version, window_seconds, window_start"
        ).result_rows
        return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}

    want = {
        k: (v["n"], v["ok"], v["lat"], v["tok"], v["cost"], v["fb"], v["fb_sum"])
        for k, v in expected.items()
    }
    try:
        await wait_for(
            lambda: {k: v[:7] for k, v in loaded().items()} == want,
            90,
            "rollups in ClickHouse to equal the brute-force sums",
        )
    except AssertionError:
        got = {k: v[:7] for k, v in loaded().items()}
        diff = {
            k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)
        }
        raise AssertionError(f"{len(diff)} windows differ, e.g. {list(diff.items())[:3]}") from None
    finally:
        stop.set()
        await task
        worker.terminate()
        worker.wait(timeout=30)
    rows = loaded()
    assert sum(r[8] for r in rows.values()) > 0  # late events were folded in as corrections
    # Quantiles from the merged sketch are within its stated relative error.
    for key, row in rows.items():
        if key[1] != 10 or row[0] < 20:
            continue
        lats = sorted(expected[key]["lats"])
        sketch = {int(k): int(v) for k, v in dict(row[7]).items()}
        for q in (0.5, 0.95):
            exact = lats[math.floor(q * (len(lats) - 1))]
            est = sketch_quantile(sketch, q)
            assert est is not None
            assert abs(est - exact) <= SKETCH_ALPHA * exact + 1e-9, (key, q, est, exact)


async def test_prompt_versions_reach_clickhouse(
    settings: Settings, ch: Client, tmp_path: Path
) -> None:
    env = _env(settings, tmp_path / "state")
    assert _cli(env, "prompts", "create", "faq", "--content", "Answer: {{q}}").returncode == 0
    assert _cli(env, "prompts", "activate", "faq", "--version", "1").returncode == 0
    stop = asyncio.Event()
    sink = PromptVersionsSink(settings, ch, group="pv-it", max_seconds=0.2)
    task = asyncio.create_task(sink.run(stop))
    await wait_for(lambda: sink.stats.inserted >= 2, 30, "registry rows")
    stop.set()
    await task
    rows = ch.query(
        "SELECT version, action, content FROM prompt_versions WHERE prompt_name = 'faq' "
        "ORDER BY event_time"
    ).result_rows
    assert [(r[0], r[1]) for r in rows] == [(1, "created"), (1, "activated")]
    assert rows[1][2] == "Answer: {{q}}"
