"""Breaker agent on real Kafka and Redis, run as a worker process (SIGKILL-able)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client

from llmpulse.devstack import stack
from llmpulse.devstack.simulate import gateway_config
from llmpulse.gateway.breaker_view import BreakerView, Source
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.breaker_transitions import BreakerTransitionsSink
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.clickhouse import run_query
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import ErrorClass, LLMOutcome, Operation, OutcomeStatus, serving
from llmpulse.schemas.events import BreakerSnapshot, BreakerState
from llmpulse.schemas.topics import BREAKER_CONTROL, BREAKER_TRANSITIONS, OUTCOMES, topic_spec
from tests.harness import read_all, wait_for, with_unique_topics

pytestmark = pytest.mark.stack

CONFIG = """
default:
  window_seconds: 30
  consecutive_failures: 3
  failure_rate_threshold: null
  open_seconds: 2
  open_multiplier: 2
  open_max_seconds: 30
  jitter_fraction: 0
  half_open_probes: 2
providers:
  prov-kill: {open_seconds: 120, open_max_seconds: 120}
  prov-listed: {}
  prov-model/m2: {consecutive_failures: 2, open_seconds: 60, open_max_seconds: 60}
"""


class Worker:
    """The ``llmpulse worker breaker`` process for this module."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        (tmp / "breaker.yaml").write_text(CONFIG)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_port = int(s.getsockname()[1])

    def env(self) -> dict[str, str]:
        env = self.settings.child_env(
            LLMPULSE_STATE_DIR=str(self.tmp / "state"),
            LLMPULSE_BREAKER_CONFIG_FILE=str(self.tmp / "breaker.yaml"),
            LLMPULSE_BREAKER_TICK_SECONDS="0.2",
            LLMPULSE_METRICS_PORT=str(self.metrics_port),
        )
        return env

    def start(self) -> None:
        self.starts += 1
        log = (self.tmp / f"worker{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmpulse", "worker", "breaker"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
async def topics(services: Settings) -> Settings:
    return await with_unique_topics(services)


@pytest.fixture(scope="module")
def worker(topics: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(topics, tmp_path_factory.mktemp("breaker"))
    w.start()
    yield w
    w.stop()


@pytest.fixture
async def rds(topics: Settings) -> AsyncIterator[aioredis.Redis]:
    client = redis_client.connect(topics)
    yield client
    await client.aclose()


def outcome(
    provider: str,
    ok: bool,
    *,
    at: datetime | None = None,
    probe: bool = False,
    request_id: uuid.UUID | None = None,
    model: str = "m1",
) -> LLMOutcome:
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=at or datetime.now(UTC),
        request_id=request_id or uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider=provider,
        model=model,
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        http_status=200 if ok else 503,
        latency_ms=20,
        is_probe=probe,
    )


async def send(settings: Settings, *items: LLMOutcome | tuple[bytes, bytes]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for item in items:
            if isinstance(item, tuple):
                await producer.send_and_wait(settings.topic(OUTCOMES), item[1], key=item[0])
            else:
                await producer.send_and_wait(
                    settings.topic(OUTCOMES), encode(item), key=item.provider.encode()
                )
    finally:
        await producer.stop()


async def snapshot(
    rds: aioredis.Redis, settings: Settings, provider: str
) -> BreakerSnapshot | None:
    raw = await rds.hget(serving.breaker_key(settings.topic_prefix, provider), "snapshot")
    return BreakerSnapshot.model_validate_json(raw) if raw else None


async def wait_state(
    rds: aioredis.Redis, settings: Settings, provider: str, state: BreakerState, timeout: float = 60
) -> BreakerSnapshot:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = await snapshot(rds, settings, provider)
        if snap and snap.state is state:
            return snap
        await asyncio.sleep(0.05)
    raise AssertionError(f"{provider} not {state} after {timeout}s: {snap}")


async def test_failures_open_a_while_b_stays_closed(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    await send(
        topics,
        *[outcome("prov-b", True) for _ in range(5)],
        *[outcome("prov-a", False) for _ in range(3)],
        outcome("prov-b", True),
    )
    opened = await wait_state(rds, topics, "prov-a", BreakerState.open)
    assert opened.previous_state is BreakerState.closed
    assert opened.reason == "consecutive_failures"
    b = await snapshot(rds, topics, "prov-b")
    assert b is not None
    assert b.state is BreakerState.closed

    # No traffic: half-open exactly when the open duration ends.
    half = await wait_state(rds, topics, "prov-a", BreakerState.half_open, timeout=10)
    assert half.since == opened.next_attempt_at
    assert half.version == opened.version + 1

    # Two successful probes close it. The first one's permit is released for the next
    # probe; the closing one's is left to expire (released, it could be taken by an
    # instance that has not seen the closed snapshot yet: one probe too many).
    holders = [uuid.uuid4(), uuid.uuid4()]
    keys = serving.permit_keys(topics.topic_prefix, "prov-a", half.version, 2)
    for key, holder in zip(keys, holders, strict=True):
        await rds.set(key, str(holder), px=60_000)
    now = datetime.now(UTC)
    await send(
        topics, *[outcome("prov-a", True, at=now, probe=True, request_id=h) for h in holders]
    )
    closed = await wait_state(rds, topics, "prov-a", BreakerState.closed, timeout=10)
    assert closed.reason == "probes succeeded"
    assert await rds.get(keys[0]) is None
    assert await rds.get(keys[1]) == str(holders[1]).encode()

    # Open again; a failed probe re-opens with a longer (escalated) duration.
    await send(topics, *[outcome("prov-a", False) for _ in range(3)])
    first = await wait_state(rds, topics, "prov-a", BreakerState.open, timeout=10)
    await wait_state(rds, topics, "prov-a", BreakerState.half_open, timeout=10)
    await send(topics, outcome("prov-a", False, probe=True))
    again = await wait_state(rds, topics, "prov-a", BreakerState.open, timeout=10)
    assert again.reason == "probe failed"
    assert first.next_attempt_at is not None
    assert again.next_attempt_at is not None
    assert (again.next_attempt_at - again.since) > (first.next_attempt_at - first.since)

    # Every transition went to the transitions topic in version order.
    records = await read_all(topics, topics.topic(BREAKER_TRANSITIONS), expected=7, timeout=10)
    versions = [
        BreakerSnapshot.model_validate_json(r.value).version for r in records if r.key == b"prov-a"
    ]
    assert versions == sorted(set(versions))
    assert len(versions) >= 6


async def test_replayed_backlog_of_old_failures_opens_nothing(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await send(
        topics, *[outcome("prov-c", False, at=hour_ago) for _ in range(50)], outcome("prov-c", True)
    )
    snap = await wait_state(rds, topics, "prov-c", BreakerState.closed, timeout=30)
    await asyncio.sleep(1)
    assert (await snapshot(rds, topics, "prov-c")) == snap  # nothing moved it since


async def test_poison_goes_to_dlq_and_changes_nothing(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    await send(topics, *[outcome("prov-d", False) for _ in range(2)])
    bad = outcome("prov-d", False).model_dump(mode="json")
    bad["latency_ms"] = -5
    await send(topics, (b"prov-d", json.dumps(bad).encode()), (b"prov-d", b"\x00garbage"))
    await send(topics, outcome("prov-d", True))  # a success resets the run of two failures
    await send(topics, *[outcome("prov-d", False) for _ in range(2)])
    dlq = await read_all(topics, topics.topic(topic_spec(OUTCOMES).dlq), expected=2, timeout=30)
    assert len(dlq) == 2
    await asyncio.sleep(1)
    snap = await snapshot(rds, topics, "prov-d")
    assert snap is not None
    assert snap.state is BreakerState.closed  # 2 + 2 failures, never 3 in a row


async def test_stale_snapshot_is_rejected(topics: Settings, rds: aioredis.Redis) -> None:
    key = serving.breaker_key(topics.topic_prefix, "prov-zombie")
    script = rds.register_script(serving.SET_IF_NEWER)
    channel = serving.breaker_channel(topics.topic_prefix)
    assert await script(keys=[key], args=[5, '{"v": 5}', channel]) == 1
    assert await script(keys=[key], args=[4, '{"v": 4}', channel]) == 0
    assert await script(keys=[key], args=[5, '{"v": "dup"}', channel]) == 0
    assert await rds.hget(key, "snapshot") == b'{"v": 5}'


async def test_sigkill_while_open_restores_from_changelog(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    await send(topics, *[outcome("prov-kill", False) for _ in range(3)])
    opened = await wait_state(rds, topics, "prov-kill", BreakerState.open)
    worker.kill()
    # Wipe the serving view: whatever appears again must come from the changelog.
    await rds.delete(serving.breaker_key(topics.topic_prefix, "prov-kill"))
    worker.start()
    restored = await wait_state(rds, topics, "prov-kill", BreakerState.open, timeout=90)
    assert restored.version == opened.version
    assert restored.next_attempt_at == opened.next_attempt_at
    # New events continue from the restored state: versions only grow.
    seen = [restored.version]
    await send(topics, outcome("prov-kill", True))
    for _ in range(20):
        snap = await snapshot(rds, topics, "prov-kill")
        assert snap is not None
        seen.append(snap.version)
        await asyncio.sleep(0.1)
    assert seen == sorted(seen)
    final = await snapshot(rds, topics, "prov-kill")
    assert final is not None
    assert final.state is BreakerState.open


async def test_transitions_reach_the_clickhouse_outage_ledger(
    worker: Worker, topics: Settings, ch: Client
) -> None:
    """Runs after the scenarios above: their transitions are loaded and summarised."""
    # Everything published so far (all that can be read within 5 s).
    published = await read_all(topics, topics.topic(BREAKER_TRANSITIONS), expected=10**9, timeout=5)
    assert len(published) >= 8
    stop = asyncio.Event()
    sink = BreakerTransitionsSink(topics, ch, group="transitions-it", max_seconds=0.2)
    task = asyncio.create_task(sink.run(stop))
    await wait_for(
        lambda: sink.stats.consumed >= len(published) and sink.stats.batches > 0,
        60,
        "every published transition to be loaded",
    )
    stop.set()
    await task
    now = datetime.now(UTC)
    ledger = {
        r["provider"]: r
        for r in run_query(
            ch,
            "breaker_transitions__outage_ledger",
            {"start": now - timedelta(hours=1), "end": now},
        )
    }
    assert ledger["prov-a"]["openings"] >= 3
    assert 4 <= ledger["prov-a"]["seconds_open"] < 600
    assert ledger["prov-kill"]["openings"] == 1
    versions = ch.query(
        "SELECT version FROM breaker_transitions FINAL WHERE provider = 'prov-a' ORDER BY version"
    ).result_rows
    assert [v for (v,) in versions] == list(range(1, len(versions) + 1))


async def test_probe_permits_are_bounded_fleet_wide(topics: Settings, rds: aioredis.Redis) -> None:
    keys = serving.permit_keys(topics.topic_prefix, "prov-permit", 7, 2)
    acquire = rds.register_script(serving.ACQUIRE_PERMIT)
    release = rds.register_script(serving.RELEASE_PERMIT)
    holders = [str(uuid.uuid4()) for _ in range(20)]
    # 20 app instances race for the permits at once: exactly 2 win.
    slots = await asyncio.gather(*(acquire(keys=keys, args=[h, 500]) for h in holders))
    winners = [h for h, slot in zip(holders, slots, strict=True) if slot]
    assert sorted(s for s in slots if s) == [1, 2]
    assert await acquire(keys=keys, args=["late", 500]) == 0
    # Releasing needs the holder's id; a stranger cannot free a permit.
    assert await release(keys=keys, args=["stranger"]) == 0
    assert await release(keys=keys, args=[winners[0]]) == 1
    assert await acquire(keys=keys, args=["next", 500]) != 0
    # A holder that died: its permit expires.
    await asyncio.sleep(0.6)
    assert await acquire(keys=keys, args=["after-expiry", 500]) != 0


async def test_operator_controls_and_status_fallback(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    env = worker.env()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmpulse", "breaker", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # A name that is neither configured nor an existing breaker is likely a typo.
    typo = cli("force-open", "prov-op", "--reason", "incident 42")
    assert typo.returncode == 2
    assert "pass --create" in typo.stderr
    created = cli("force-open", "prov-op", "--reason", "incident 42", "--create")
    assert created.returncode == 0, created.stderr
    await wait_state(rds, topics, "prov-op", BreakerState.forced_open)
    # A configured breaker needs no --create (an existing one neither: force-close below).
    assert cli("disable", "prov-listed").returncode == 0
    await wait_state(rds, topics, "prov-listed", BreakerState.disabled)
    status = cli("status")
    assert status.returncode == 0
    assert "source: redis" in status.stdout
    assert "prov-op" in status.stdout
    assert "forced_open" in status.stdout
    assert cli("force-close", "prov-op").returncode == 0
    closed = await wait_state(rds, topics, "prov-op", BreakerState.closed)
    assert closed.reason == "operator force_close"

    # Redis unreachable: status reads the compacted llm.breaker-state.v1 topic.
    env["LLMPULSE_REDIS_URL"] = "redis://127.0.0.1:1/0"
    fallback = cli("status")
    assert fallback.returncode == 0, fallback.stderr
    assert "source: topic" in fallback.stdout
    line = next(ln for ln in fallback.stdout.splitlines() if ln.startswith("prov-op"))
    assert "closed" in line

    bad = cli("force-open", "sk-abcdefghijklmnopqrstu")
    assert bad.returncode == 2
    assert "credential" in bad.stderr


async def test_a_bad_control_on_the_topic_is_dead_lettered_and_the_worker_keeps_serving(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    """Issue 13 item 1: a force-open ``until`` in the past, as an older command line wrote it.

    Applied, it made the timer build a snapshot dated outside the event-time
    bound, which crashed the worker on every restart.
    """
    bad = {
        "event_id": str(uuid.uuid4()),
        "event_time": datetime.now(UTC).isoformat(),
        "provider": "prov-bad-until",
        "action": "force_open",
        "reason": "typo",
        "until": "2025-06-01T00:00:00+00:00",
    }
    producer = kafka.producer(topics)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.topic(BREAKER_CONTROL), json.dumps(bad).encode(), key=b"prov-bad-until"
        )
    finally:
        await producer.stop()
    dlq = await read_all(topics, topics.topic(topic_spec(BREAKER_CONTROL).dlq), expected=1)
    assert len(dlq) == 1
    assert dict(dlq[0].headers)["dlq.reason"] == b"schema_violation"
    # Still serving: outcomes of another provider open its breaker, timer ticks go on.
    await send(topics, *[outcome("prov-after-bad", False) for _ in range(3)])
    await wait_state(rds, topics, "prov-after-bad", BreakerState.open)
    await wait_state(rds, topics, "prov-after-bad", BreakerState.half_open, timeout=10)
    assert worker.proc is not None
    assert worker.proc.poll() is None
    assert await snapshot(rds, topics, "prov-bad-until") is None  # never applied


async def test_prometheus_scrapes_the_breaker_state(worker: Worker, topics: Settings) -> None:
    """Real Prometheus scrapes the worker: prov-kill (opened above) reads 2 = open."""
    stack.register_scrape_target(topics, "breaker-it", f"127.0.0.1:{worker.metrics_port}")
    url = f"{topics.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
        {"query": 'circuit_breaker_state{provider="prov-kill"}'}
    )
    deadline = time.monotonic() + 30
    value = None
    while time.monotonic() < deadline:
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 - http from settings
        )
        result = json.loads(body)["data"]["result"]
        if result:
            value = result[0]["value"][1]
            if value == "2":
                break
        await asyncio.sleep(0.5)
    assert value == "2"


async def test_the_gateway_follows_a_per_model_breaker(
    worker: Worker, topics: Settings, rds: aioredis.Redis
) -> None:
    """prov-model/m2 has its own breaker: it opens on m2's failures, m1 stays routed."""
    key = serving.model_breakers_key(topics.topic_prefix)
    deadline = time.monotonic() + 20
    while (listed := await rds.get(key)) is None:  # written with the worker's heartbeat
        assert time.monotonic() < deadline, "no list of per-model breakers"
        await asyncio.sleep(0.1)
    assert json.loads(listed) == ["prov-model/m2"]
    view = BreakerView(rds, gateway_config(topics), ["prov-model"])
    await view.start()
    try:
        assert view.route("prov-model", "m2").provider == "prov-model/m2"
        await send(topics, *(outcome("prov-model", False, model="m2") for _ in range(2)))
        deadline = time.monotonic() + 20
        while view.route("prov-model", "m2").state is not BreakerState.open:
            assert time.monotonic() < deadline, "m2's breaker did not open"
            await asyncio.sleep(0.1)
        assert view.route("prov-model", "m2").source is Source.shared
        assert not view.route("prov-model", "m2").allowed
        m1 = view.route("prov-model", "m1")  # the provider's breaker: m2 never fed it
        assert (m1.provider, m1.state, m1.allowed) == ("prov-model", BreakerState.closed, True)
    finally:
        await view.close()
