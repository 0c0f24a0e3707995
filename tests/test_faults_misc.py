"""Fault tests on real Kafka, Redis and chDB (issue 13, "Also cover with tests on real services").

* Batches of one row: the usage sink with ``LLMPULSE_SINK_BATCH_MAX_ROWS=1``
  loads every event exactly once, one insert per event.
* A failed offset commit: the sink's group membership is fenced (its heartbeats
  stop for longer than the session timeout while an insert is in flight, so the
  broker evicts it); the commit that follows fails with ``CommitFailedError`` on
  the real broker and is skipped. The sink rejoins, re-reads what it had not
  committed, and storage still holds each unique event once.
* A zombie breaker worker: the only member of the breaker group is SIGSTOPped
  while a provider's breaker is open, a second worker takes the partitions over
  (restoring the state from the changelog) and half-opens the breaker when its
  open time is over; then the zombie is SIGCONTed, its open deadline long past,
  rejoins, and a successful probe closes the breaker. What must hold: the
  version in Redis never goes backwards (sampled throughout); the transitions
  topic holds versions 1..3, each one transition (a record sent again, as a
  restored or timer-derived transition is by design, is the same event: same
  event id, same move; none conflicts with another of its version); Redis ends
  on the last one.
* An operator ``force_close`` of a breaker whose open time is over (the timer
  already published its half-open) closes it with the next version. It used to
  be lost: the control was applied to the stored breaker without its pending
  tick, so it made closed v2 after the timer's half-open v2, and a version
  already published is dropped.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from clickhouse_connect.driver.client import Client

from llmpulse.processors.breaker.ops import send_control
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks import base
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream import redis_client
from llmpulse.processors.stream.faust_app import app_id
from llmpulse.schemas import serving
from llmpulse.schemas.events import BreakerAction, BreakerSnapshot, BreakerState
from llmpulse.schemas.topics import BREAKER_CONTROL, BREAKER_TRANSITIONS, OUTCOMES
from tests.harness import (
    assigned_members,
    behind,
    caught_up,
    read_all,
    spawn_worker,
    stop_worker,
    wait_for,
    wait_until,
)
from tests.test_breaker_integration import outcome, send
from tests.test_usage_faults import _events, _produce

pytestmark = pytest.mark.stack


def _stored(ch: Client) -> tuple[int, int, Decimal]:
    """(rows after dedup, raw rows, cost) of usage_events."""
    count, cost = ch.query("SELECT count(), sum(cost_usd) FROM usage_events FINAL").result_rows[0]
    raw = ch.query("SELECT count() FROM usage_events").result_rows[0][0]
    return int(count), int(raw), Decimal(cost)


async def test_batches_of_one_row_load_every_event_once(
    settings: Settings, ch: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMPULSE_SINK_BATCH_MAX_ROWS", "1")
    assert Settings().sink_batch_max_rows == 1  # the variable is what sets it
    one_row = settings.model_copy(update={"sink_batch_max_rows": 1})
    events = _events(300, datetime.now(UTC) - timedelta(hours=1), seed=7)
    await _produce(one_row, events[:150] + events[:20] + events[150:])  # 20 resent
    stop = asyncio.Event()
    sink = UsageSink(one_row, ch, group="sink-one-row")
    task = asyncio.create_task(sink.run(stop))
    try:
        await wait_until(
            lambda: caught_up(one_row, one_row.topic(OUTCOMES), sink.group),
            120,
            "the sink to commit every offset",
        )
    finally:
        stop.set()
        stats = await task
    assert stats.consumed == 320
    assert stats.batches >= 300  # one row per insert, never more
    assert _stored(ch) == (300, 300, sum((o.cost_usd for o in events), Decimal(0)))


async def test_a_failed_offset_commit_loses_and_doubles_nothing(
    settings: Settings, ch: Client, caplog: pytest.LogCaptureFixture
) -> None:
    events = _events(3_000, datetime.now(UTC) - timedelta(hours=1), seed=11)
    await _produce(settings, events[:1_000])
    stop = asyncio.Event()
    sink = UsageSink(settings, ch, group="sink-fenced", max_rows=500, max_seconds=0.3)
    task = asyncio.create_task(sink.run(stop))
    topic = settings.topic(OUTCOMES)
    try:
        await wait_until(lambda: caught_up(settings, topic, sink.group), 60, "first commits")
        # An insert in flight: the writer thread waits for the chDB lock we hold.
        base._CLIENT_LOCK.acquire()
        try:
            await _produce(settings, events[1_000:2_000])
            await wait_for(lambda: sink._writing is not None, 60, "a write in flight")
        finally:
            _freeze_then_release(base._CLIENT_LOCK)
        await _produce(settings, events[2_000:] + events[:100])  # 100 resent
        await wait_until(
            lambda: caught_up(settings, topic, sink.group), 120, "every offset committed"
        )
    finally:
        stop.set()
        stats = await task
    skipped = [r for r in caplog.records if "offset commit skipped" in r.getMessage()]
    assert skipped, "the commit did not fail: the test did not reach the commit error path"
    assert "CommitFailedError" in skipped[0].getMessage() or "rebalanced" in skipped[0].getMessage()
    assert stats.dead_lettered == 0
    count, _raw, cost = _stored(ch)
    assert (count, cost) == (3_000, sum((o.cost_usd for o in events), Decimal(0)))


def _freeze_then_release(lock: threading.Lock) -> None:
    """Block the event loop (heartbeats included) past the 10 s session timeout, as a
    paused or partitioned worker would be, so the broker evicts the sink's member;
    then let the insert land before the loop runs again, to commit for a stale member.
    """
    try:
        time.sleep(16)
    finally:
        lock.release()
    time.sleep(2)


BREAKER_CONFIG = """
default:
  window_seconds: 60
  consecutive_failures: 3
  failure_rate_threshold: null
  open_seconds: {open_seconds}
  open_max_seconds: {open_seconds}
  jitter_fraction: 0
  half_open_probes: 1
"""


class _Breaker:
    """Breaker workers of one test and what they publish for provider ``prov-z``."""

    def __init__(self, settings: Settings, tmp: Path, open_seconds: int) -> None:
        self.settings = settings
        self.tmp = tmp
        self.group = app_id(settings, "breaker")
        (tmp / "breaker.yaml").write_text(BREAKER_CONFIG.format(open_seconds=open_seconds))
        self.rds = redis_client.connect(settings)
        self.key = serving.breaker_key(settings.topic_prefix, "prov-z")
        self.versions: list[int] = []  # every version read from Redis, in order
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        env = self.settings.child_env(
            LLMPULSE_STATE_DIR=str(self.tmp / name),
            LLMPULSE_BREAKER_CONFIG_FILE=str(self.tmp / "breaker.yaml"),
            LLMPULSE_BREAKER_TICK_SECONDS="0.2",
        )
        proc = spawn_worker(env, "breaker", self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc

    async def members(self, n: int) -> bool:
        return await assigned_members(self.settings, self.group) == n

    async def sample(self) -> BreakerSnapshot | None:
        raw = await self.rds.hget(self.key, "snapshot")
        snap = BreakerSnapshot.model_validate_json(raw) if raw else None
        if snap is not None:
            self.versions.append(snap.version)
        return snap

    async def reaches(self, state: BreakerState, version: int, timeout: float, what: str) -> None:
        async def there() -> bool:
            snap = await self.sample()
            return snap is not None and (snap.state, snap.version) == (state, version)

        await wait_until(there, timeout, what, explain=self.where)

    async def published(self) -> list[tuple[int, BreakerState | None, BreakerState, UUID]]:
        """Every transition record on the topic: (version, from, to, event id)."""
        topic = self.settings.topic(BREAKER_TRANSITIONS)
        records = await read_all(self.settings, topic, expected=10**6, timeout=3)
        snaps = (BreakerSnapshot.model_validate_json(r.value) for r in records)
        return [(s.version, s.previous_state, s.state, s.event_id) for s in snaps]

    async def where(self) -> str:
        lag = {
            t: await behind(self.settings, self.settings.topic(t), self.group)
            for t in (OUTCOMES, BREAKER_CONTROL)
        }
        members = await assigned_members(self.settings, self.group)
        return (
            f"redis {await self.sample()}; published {await self.published()}; "
            f"{members} members, behind {lag}; logs in {self.tmp}"
        )

    async def open_it(self) -> None:
        """Open prov-z (v1) with the only worker assigned."""
        await wait_until(lambda: self.members(1), 90, "the first worker's assignment")
        await send(self.settings, *[outcome("prov-z", False) for _ in range(3)])
        await self.reaches(BreakerState.open, 1, 60, "prov-z open (v1)")

    async def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)
            stop_worker(proc)
        await self.rds.aclose()


async def test_a_zombie_breaker_worker_never_moves_a_breaker_backwards(
    settings: Settings, tmp_path: Path
) -> None:
    breaker = _Breaker(settings, tmp_path, open_seconds=45)
    try:
        zombie = breaker.spawn("zombie")
        await breaker.open_it()
        zombie.send_signal(signal.SIGSTOP)
        breaker.spawn("survivor")
        # The survivor restores the open breaker from the changelog and half-opens it
        # when the open time is over (v2); the paused zombie still believes it is open.
        await breaker.reaches(BreakerState.half_open, 2, 120, "half-open on takeover")
        zombie.send_signal(signal.SIGCONT)
        # The zombie runs again, its open deadline long past; once it is back in the
        # group, a successful probe closes the breaker (v3) whoever owns it now.
        await wait_until(lambda: breaker.members(2), 90, "the zombie to rejoin")
        await send(settings, outcome("prov-z", True, probe=True))
        await breaker.reaches(BreakerState.closed, 3, 60, "closed by the probe (v3)")
        await asyncio.sleep(2)  # let a late zombie write show up, if any
        await breaker.sample()
        published = await breaker.published()
    finally:
        await breaker.close()

    assert breaker.versions == sorted(breaker.versions)  # Redis never went backwards
    # Each version is one transition: a record sent again (a restored or timer-derived
    # transition, deduplicated downstream by provider and version) is the same event.
    distinct = sorted(set(published))
    assert [t[0] for t in distinct] == [1, 2, 3], distinct
    assert [t[1:3] for t in distinct] == [
        (BreakerState.closed, BreakerState.open),
        (BreakerState.open, BreakerState.half_open),
        (BreakerState.half_open, BreakerState.closed),
    ]


async def test_force_close_after_the_open_time_elapsed_closes_the_breaker(
    settings: Settings, tmp_path: Path
) -> None:
    breaker = _Breaker(settings, tmp_path, open_seconds=2)
    try:
        breaker.spawn("worker")
        await breaker.open_it()
        await breaker.reaches(BreakerState.half_open, 2, 30, "half-open by the timer (v2)")
        await send_control(settings, "prov-z", BreakerAction.force_close, "test", None)
        await breaker.reaches(BreakerState.closed, 3, 30, "closed by the control (v3)")
    finally:
        await breaker.close()
