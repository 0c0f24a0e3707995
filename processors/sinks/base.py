"""Kafka -> ClickHouse loading with at-least-once delivery and commit after insert.

* each message is decoded once; poison goes to ``<topic>.dlq`` (after the broker
  acknowledged it) and its offset is committed with the next batch;
* rows are buffered and written in batches bounded by rows and seconds;
* offsets are committed only after ClickHouse acknowledged the batch, and only
  for partitions this worker still owns; a revoked partition's buffer is
  dropped, never committed (its new owner re-reads it; the flows' storage is
  idempotent, so the re-read is harmless);
* ClickHouse errors are retried with capped exponential backoff while every
  partition is paused, so the worker stays in the group and nothing is
  dead-lettered or skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka, metrics
from llmpulse.processors.stream.codec import PoisonEvent, decode
from llmpulse.processors.stream.dlq import DeadLetterPublisher, PoisonLimiter, SourceRecord
from llmpulse.schemas.topics import topic_spec

log = logging.getLogger(__name__)
_CLIENT_LOCK = threading.Lock()


class _Located(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


P = TypeVar("P", bound=_Located)


@dataclass
class SinkStats:
    """Counters of one sink run (also exported as Prometheus metrics)."""

    consumed: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0


class _DropRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: ClickHouseSink[Any]) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._sink.drop_partitions(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


class ClickHouseSink(ABC, Generic[P]):
    """Consume one registry topic, validate, batch, insert, then commit.

    Subclasses say which topic and model (``SOURCE``, ``MODEL``, ``FLOW``), how a
    decoded event becomes a buffered item (``pending``) and how a batch is
    written (``write``, blocking, run in a thread). Everything about offsets,
    batching, retries, pausing, rebalances and the DLQ lives here.
    """

    SOURCE: ClassVar[str]
    MODEL: ClassVar[type[BaseModel]]
    FLOW: ClassVar[str]

    def __init__(
        self,
        settings: Settings,
        client: Client,
        *,
        group: str | None = None,
        max_rows: int | None = None,
        max_seconds: float | None = None,
        on_flush: Callable[[SinkStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.topic = settings.topic(self.SOURCE)
        self.dlq_topic = settings.topic(topic_spec(self.SOURCE).dlq)
        self.group = group or f"{settings.consumer_group_prefix}.{self.FLOW}"
        self.max_rows = max_rows or settings.sink_batch_max_rows
        self.max_seconds = max_seconds or settings.sink_batch_max_seconds
        self.stats = SinkStats()
        self._on_flush = on_flush
        self._buffer: list[P] = []
        self._next_offsets: dict[TopicPartition, int] = {}
        self._batch_started: float | None = None
        self._inserts_done = 0

    # --- rebalance -----------------------------------------------------------
    def drop_partitions(self, revoked: set[TopicPartition]) -> None:
        """Forget buffered rows and offsets of partitions this worker no longer owns."""
        self._buffer = [
            p for p in self._buffer if TopicPartition(p.topic, p.partition) not in revoked
        ]
        for tp in revoked:
            self._next_offsets.pop(tp, None)

    # --- main loop -----------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> SinkStats:
        """Consume until ``stop`` is set (or forever), flushing a final batch on the way out."""
        stop = stop or asyncio.Event()
        consumer = kafka.consumer(self.settings, group=self.group, max_poll_interval_ms=300_000)
        consumer.subscribe([self.topic], listener=_DropRevoked(self))
        producer = kafka.producer(self.settings)
        dlq = DeadLetterPublisher(producer, PoisonLimiter(self.settings.dlq_max_consecutive))
        await consumer.start()
        await producer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=self.max_rows)
                for tp, records in batches.items():
                    metrics.EVENTS_CONSUMED.labels(flow=self.FLOW, topic=tp.topic).inc(len(records))
                    for record in records:
                        await self._accept(tp, record, dlq)
                if self._due():
                    await self._flush(consumer)
            if self._next_offsets:
                await self._flush(consumer)
        finally:
            await producer.stop()
            await consumer.stop()
        return self.stats

    async def _accept(self, tp: TopicPartition, record: Any, dlq: DeadLetterPublisher) -> None:
        self.stats.consumed += 1
        source = SourceRecord(
            record.topic, record.partition, record.offset, record.key, record.value
        )
        try:
            event = decode(self.MODEL, record.value, bounds=self.settings.event_time_bounds)
        except PoisonEvent as poison:
            await dlq.publish(source, poison, self.dlq_topic)
            self.stats.dead_lettered += 1
            dlq.poisoned(source)
        else:
            dlq.ok(source)
            self._buffer.append(self.pending(event, record))
        self._next_offsets[tp] = record.offset + 1
        if self._batch_started is None:
            self._batch_started = time.monotonic()

    def _due(self) -> bool:
        if self._batch_started is None:
            return False
        return (
            len(self._buffer) >= self.max_rows
            or time.monotonic() - self._batch_started >= self.max_seconds
        )

    async def _flush(self, consumer: AIOKafkaConsumer) -> None:
        batch, offsets = self._buffer, dict(self._next_offsets)
        if batch:
            await self._write_with_retry(consumer, batch)
            self._failpoint_after_insert()
        # The old owner never commits for partitions it lost while writing.
        owned = consumer.assignment()
        commit = {tp: off for tp, off in offsets.items() if tp in owned}
        if commit:
            try:
                await consumer.commit(commit)
            except (CommitFailedError, KafkaError) as exc:
                # Rebalanced under us: the new owner re-reads; dedup keeps storage exact.
                log.warning("offset commit skipped after rebalance: %s", exc)
        # Nothing is accepted while a flush runs (the loop is sequential), so all
        # that is left is either flushed now or was dropped by a revocation.
        self._buffer = []
        self._next_offsets.clear()
        self._batch_started = None
        self.stats.batches += 1
        if self._on_flush:
            self._on_flush(self.stats)

    async def _write_with_retry(self, consumer: AIOKafkaConsumer, batch: list[P]) -> None:
        delay, paused = 0.2, False
        while True:
            try:
                await asyncio.to_thread(self._write_locked, batch)
                break
            except Exception as exc:
                # Every event in the batch already passed validation, so an insert
                # failure is infrastructure trouble: retry in place, never DLQ.
                self.stats.retries += 1
                metrics.SINK_RETRIES.labels(flow=self.FLOW).inc()
                log.warning("ClickHouse write failed (retry in %.1fs): %s", delay, exc)
                paused = True
                await self._idle(consumer, delay)
                delay = min(delay * 2, self.settings.sink_retry_max_seconds)
        if paused:
            consumer.resume(*consumer.assignment())

    def _failpoint_after_insert(self) -> None:
        """Test-only: die by SIGKILL between an acknowledged insert and its commit."""
        name, _, count = self.settings.failpoint.partition(":")
        self._inserts_done += 1
        if name == "sink.kill_after_insert" and self._inserts_done >= int(count):
            log.warning("failpoint %s: SIGKILL before committing offsets", self.settings.failpoint)
            os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    async def _idle(consumer: AIOKafkaConsumer, seconds: float) -> None:
        """Wait while staying in the group: poll with every partition paused."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            consumer.pause(*consumer.assignment())
            got = await consumer.getmany(timeout_ms=max(1, int(min(left, 1.0) * 1000)))
            for tp, records in got.items():
                # Newly assigned partitions are not paused yet: rewind, read them later.
                if records:
                    consumer.seek(tp, records[0].offset)

    def _write_locked(self, batch: list[P]) -> None:
        # chDB is one engine per process: sinks sharing it take turns.
        with _CLIENT_LOCK:
            self.write(batch)

    @abstractmethod
    def pending(self, event: Any, record: Any) -> P:
        """The buffered item for a decoded ``event`` read from Kafka ``record``."""

    @abstractmethod
    def write(self, batch: list[P]) -> None:
        """Write ``batch`` to ClickHouse (blocking; raises on any failure to retry it)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded event and the partition it came from (the buffer item of ``RowSink``)."""

    event: Any
    topic: str
    partition: int


class RowSink(ClickHouseSink[Decoded]):
    """A flow whose storage is idempotent by itself: one row per event, plain insert.

    Subclasses give ``TABLE``, ``COLUMNS`` and ``row`` (event -> values in order);
    re-delivered events must collapse in the table (ReplacingMergeTree on a key
    that the event determines).
    """

    TABLE: ClassVar[str]
    COLUMNS: ClassVar[tuple[str, ...]]

    @abstractmethod
    def row(self, event: Any) -> list[Any]:
        """Column values of ``event`` in ``COLUMNS`` order."""

    def pending(self, event: Any, record: Any) -> Decoded:
        return Decoded(event, record.topic, record.partition)

    def write(self, batch: list[Decoded]) -> None:
        self.client.insert(
            self.TABLE, [self.row(item.event) for item in batch], column_names=list(self.COLUMNS)
        )
        self.stats.inserted += len(batch)
        metrics.SINK_BATCH_ROWS.labels(flow=self.FLOW).observe(len(batch))
