"""The sink loop with fake Kafka and a fake ClickHouse write: ordering of writes and commits.

The loop writes one batch in a thread while it reads the next. These tests pin
what that must never change: a commit only after its batch was acknowledged,
one write at a time (so every dedup lookup sees the rows written before it),
failed writes retried in place before anything is committed, a revoked
partition's write in flight settled (and committed) before the partition moves,
and no offset committed past rows that a revocation dropped.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from llmpulse.core.usage import Pending
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import decode, encode
from llmpulse.schemas import LLMOutcome
from llmpulse.schemas.topics import OUTCOMES
from llmpulse.simulator.samples import sample_outcome

SETTINGS = Settings()
TOPIC = SETTINGS.topic(OUTCOMES)
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
Fetch = dict[TopicPartition, list[Any]]
Step = Fetch | Callable[["_Consumer"], Awaitable[Fetch]]


@dataclass(frozen=True)
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _records(tp: TopicPartition, start: int, values: list[bytes]) -> list[_Record]:
    return [_Record(tp.topic, tp.partition, start + i, None, v) for i, v in enumerate(values)]


def _valid(rng: random.Random, n: int) -> list[bytes]:
    return [encode(sample_outcome(rng)) for _ in range(n)]


class _Consumer:
    """Serves scripted fetches; an empty fetch once the script is done."""

    def __init__(self, journal: list[tuple[Any, ...]], script: list[Step]) -> None:
        self.journal = journal
        self.script = script
        self.assigned = {P0, P1}
        self.paused: set[TopicPartition] = set()
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Fetch:
        await asyncio.sleep(0.01)
        if self.paused or not self.script:
            return {}
        step = self.script.pop(0)
        return await step(self) if callable(step) else step

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert set(offsets) <= self.assigned
        self.journal.append(("commit", dict(offsets)))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        return None


class _Producer:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.on_send: Callable[[], Awaitable[None]] | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_and_wait(self, topic: str, **_: Any) -> None:
        self.sent.append(topic)
        if self.on_send:
            await self.on_send()


class _Sink:
    """A real ``UsageSink`` whose ``write`` goes nowhere.

    Each write is journalled; one can be held (``gate``) or failed (``failures``).
    A wrapper, not a subclass: the contract tests enumerate the sink classes.
    """

    def __init__(self, journal: list[tuple[Any, ...]], **kwargs: Any) -> None:
        self.sink = UsageSink(SETTINGS, client=None, group="g", **kwargs)  # type: ignore[arg-type]
        setattr(self.sink, "write", self.write)  # noqa: B010 (replaces the ClickHouse write)
        self.journal = journal
        self.gate = threading.Event()
        self.gate.set()
        self.failures = 0
        self.writing = 0

    def write(self, batch: list[Pending]) -> None:
        self.writing += 1
        try:
            assert self.writing == 1, "two writes in flight"
            assert self.gate.wait(10)
            if self.failures:
                self.failures -= 1
                raise RuntimeError("ClickHouse unavailable")
            parts = sorted({p.partition for p in batch})
            self.journal.append(("written", len(batch), parts))
            self.sink.stats.inserted += len(batch)
        finally:
            self.writing -= 1


async def _run(
    monkeypatch: pytest.MonkeyPatch,
    sink: _Sink,
    script: list[Step],
    until: Callable[[], bool],
    prepare: Callable[[_Consumer, _Producer], None] | None = None,
) -> None:
    consumer = _Consumer(sink.journal, script)
    producer = _Producer()
    if prepare:
        prepare(consumer, producer)
    monkeypatch.setattr(kafka, "consumer", lambda *a, **k: consumer)
    monkeypatch.setattr(kafka, "producer", lambda *a, **k: producer)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.sink.run(stop))
    for _ in range(1000):
        if until() or task.done():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_each_commit_follows_its_acknowledged_write(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1)
    journal: list[tuple[Any, ...]] = []
    sink = _Sink(journal, max_rows=3, max_seconds=30)
    script: list[Step] = [
        {P0: _records(P0, 0, _valid(rng, 3))},
        {P1: _records(P1, 0, _valid(rng, 3))},
        {P0: _records(P0, 3, _valid(rng, 2))},
    ]
    await _run(monkeypatch, sink, script, lambda: not script)
    assert journal == [
        ("written", 3, [0]),
        ("commit", {P0: 3}),
        ("written", 3, [1]),
        ("commit", {P1: 3}),
        ("written", 2, [0]),  # the rest, flushed on stop
        ("commit", {P0: 5}),
    ]
    assert sink.sink.stats.consumed == sink.sink.stats.inserted == 8


async def test_a_large_fetch_is_written_in_batches_of_max_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(7)
    journal: list[tuple[Any, ...]] = []
    sink = _Sink(journal, max_rows=3, max_seconds=30)
    script: list[Step] = [{P0: _records(P0, 0, _valid(rng, 7))}]
    await _run(monkeypatch, sink, script, lambda: sink.sink.stats.inserted == 7)
    assert journal == [
        ("written", 3, [0]),
        ("commit", {P0: 3}),
        ("written", 3, [0]),
        ("commit", {P0: 6}),
        ("written", 1, [0]),  # the rest, once the input is drained
        ("commit", {P0: 7}),
    ]


async def test_next_batch_is_read_while_a_write_is_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(2)
    journal: list[tuple[Any, ...]] = []
    sink = _Sink(journal, max_rows=3, max_seconds=30)
    sink.gate.clear()

    async def read_while_held(consumer: _Consumer) -> Fetch:
        journal.append(("read during write",))
        sink.gate.set()
        return {P1: _records(P1, 0, _valid(rng, 3))}

    script: list[Step] = [{P0: _records(P0, 0, _valid(rng, 3))}, read_while_held]
    await _run(monkeypatch, sink, script, lambda: not script)
    assert journal == [
        ("read during write",),
        ("written", 3, [0]),
        ("commit", {P0: 3}),
        ("written", 3, [1]),
        ("commit", {P1: 3}),
    ]


async def test_failed_write_is_retried_before_anything_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(3)
    journal: list[tuple[Any, ...]] = []
    sink = _Sink(journal, max_rows=4, max_seconds=30)
    sink.failures = 2
    script: list[Step] = [{P0: _records(P0, 0, _valid(rng, 4))}]
    await _run(monkeypatch, sink, script, lambda: sink.sink.stats.inserted == 4)
    assert journal == [("written", 4, [0]), ("commit", {P0: 4})]
    assert sink.sink.stats.retries == 2


async def test_revoked_partition_gets_its_write_in_flight_committed_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(4)
    journal: list[tuple[Any, ...]] = []
    sink = _Sink(journal, max_rows=4, max_seconds=30)
    sink.gate.clear()

    async def revoke_p0(consumer: _Consumer) -> Fetch:
        # A rebalance while the first batch is being written: the listener waits for it.
        sink.gate.set()
        await consumer.listener.on_partitions_revoked({P0})
        consumer.assigned = {P1}
        journal.append(("revoked", 0))
        return {P1: _records(P1, 2, _valid(rng, 1))}

    script: list[Step] = [
        {P0: _records(P0, 0, _valid(rng, 2)), P1: _records(P1, 0, _valid(rng, 2))},
        revoke_p0,
    ]
    await _run(monkeypatch, sink, script, lambda: not script)
    assert journal == [
        ("written", 4, [0, 1]),
        ("commit", {P0: 2}),  # before the partition moves
        ("revoked", 0),
        ("commit", {P1: 2}),
        ("written", 1, [1]),
        ("commit", {P1: 3}),
    ]


async def test_revocation_during_a_dead_letter_drops_the_rest_of_that_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(5)
    journal: list[tuple[Any, ...]] = []
    sink = _Sink(journal, max_rows=100, max_seconds=30)
    fetched = [b"not json", *_valid(rng, 2)]
    script: list[Step] = [{P0: _records(P0, 0, _valid(rng, 2))}, {P0: _records(P0, 2, fetched)}]

    def lose_p0_while_dead_lettering(consumer: _Consumer, producer: _Producer) -> None:
        async def lose_p0() -> None:
            await consumer.listener.on_partitions_revoked({P0})
            consumer.assigned = {P1}

        producer.on_send = lose_p0

    await _run(monkeypatch, sink, script, lambda: not script, lose_p0_while_dead_lettering)
    # Nothing of P0 is written or committed: the new owner re-reads all of it.
    assert journal == []
    assert sink.sink.stats.dead_lettered == 1
    assert not sink.sink._buffer
    assert not sink.sink._next_offsets


async def test_drained_input_writes_a_partial_batch_at_most_once_per_max_seconds() -> None:
    rng = random.Random(6)
    sink = _Sink([], max_rows=100, max_seconds=30).sink
    values = _valid(rng, 4)
    sink._batch_started = time.monotonic()
    sink._buffer = [Pending.of(decode_outcome(v), v, TOPIC, 0, i) for i, v in enumerate(values[:3])]
    assert not sink._due(caught_up=False)  # more to read: keep filling
    assert sink._due(caught_up=True)
    sink._start_write()
    assert sink._writing is not None
    assert sink._writing.task is not None
    await sink._writing.task
    sink._writing = None
    sink._batch_started = time.monotonic()
    sink._buffer = [Pending.of(decode_outcome(values[3]), values[3], TOPIC, 0, 3)]
    assert not sink._due(caught_up=True)  # a partial batch just went: wait for the timer


def decode_outcome(value: bytes) -> LLMOutcome:
    return decode(LLMOutcome, value, bounds=SETTINGS.event_time_bounds)


async def test_a_write_starts_at_once_not_at_the_next_await() -> None:
    """Decoding never awaits, so a write that waited for the loop would not overlap it."""
    rng = random.Random(8)
    harness = _Sink([], max_rows=100, max_seconds=30)
    sink, started = harness.sink, threading.Event()

    def write(batch: list[Pending]) -> None:
        started.set()
        harness.write(batch)

    setattr(sink, "write", write)  # noqa: B010
    value = _valid(rng, 1)[0]
    sink._batch_started = time.monotonic()
    sink._buffer = [Pending.of(decode_outcome(value), value, TOPIC, 0, 0)]
    sink._start_write()
    assert started.wait(5)  # blocking the loop: only a thread started without it can set this
    assert sink._writing is not None
    assert sink._writing.task is not None
    await sink._writing.task
