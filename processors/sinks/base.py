"""Kafka -> ClickHouse loading with at-least-once delivery and commit after insert.

* each message is decoded once; poison goes to ``<topic>.dlq`` (after the broker
  acknowledged it) and its offset is committed with the next batch;
* rows are buffered and written in batches bounded by rows and seconds (a
  partial batch goes early once the input is drained, see ``_due``);
* a batch is written in a thread while the next one is read and decoded, so
  ClickHouse work (which releases the GIL) overlaps Kafka fetching and
  decoding. At most one write is in flight: the next one starts only after the
  previous one was acknowledged, so every batch's dedup lookup sees all rows
  written before it, and a slow ClickHouse stops reading after one more batch;
* offsets are committed only after ClickHouse acknowledged the batch, and only
  for partitions this worker still owns; a revoked partition's buffer is
  dropped, never committed (its new owner re-reads it; the flows' storage is
  idempotent, so the re-read is harmless). Before a partition moves, a write in
  flight is awaited and, if it landed, its offsets for that partition are
  committed, so the new owner starts after those rows instead of racing them;
* ClickHouse errors are retried with capped exponential backoff while every
  partition is paused, so the worker stays in the group and nothing is
  dead-lettered or skipped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka, metrics
from llmpulse.processors.stream.codec import PoisonEvent, decode
from llmpulse.processors.stream.dlq import (
    DeadLetterPublisher,
    PoisonLimiter,
    PoisonLimitExceeded,
    SourceRecord,
)
from llmpulse.schemas.topics import topic_spec

log = logging.getLogger(__name__)
_CLIENT_LOCK = threading.Lock()
#: Most records taken from the consumer at once (a few fetches' worth, ~10 MB decoded).
_TAKE_RECORDS = 20_000


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
    #: Why the sink stopped on its own (the consecutive-poison limit); None while it runs.
    stopped: str | None = None


@dataclass
class _Write(Generic[P]):
    """A batch handed to ClickHouse and the offsets to commit once it is stored."""

    items: list[P]
    offsets: dict[TopicPartition, int]
    task: asyncio.Future[None] | None  # None for a batch of poison only: nothing to write

    def done(self) -> bool:
        return self.task is None or self.task.done()

    def landed(self) -> bool:
        """Finished and acknowledged (only meaningful once ``done``)."""
        return self.task is None or (not self.task.cancelled() and self.task.exception() is None)


class _CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs ``release`` before a partition leaves this worker (aiokafka awaits it)."""

    def __init__(self, sink: ClickHouseSink[Any], consumer: AIOKafkaConsumer) -> None:
        self._sink = sink
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._sink.release(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._sink.check_expired(self._consumer, set(assigned))


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
        self._bounds = settings.event_time_bounds
        self._buffer: list[P] = []
        self._next_offsets: dict[TopicPartition, int] = {}
        self._batch_started: float | None = None
        self._partial_written = -float("inf")  # when a batch below max_rows last went
        self._writing: _Write[P] | None = None
        self._stop = asyncio.Event()  # ``run``'s
        # Partitions revoked since the last fetch: their remaining fetched records are stale.
        self._revoked: set[TopicPartition] = set()
        self._inserts_done = 0

    # --- rebalance -----------------------------------------------------------
    def drop_partitions(self, revoked: set[TopicPartition]) -> None:
        """Forget buffered rows and offsets of partitions this worker no longer owns."""
        # In place: a fetch being accepted keeps appending to the same list.
        self._buffer[:] = [
            p for p in self._buffer if TopicPartition(p.topic, p.partition) not in revoked
        ]
        for tp in revoked:
            self._next_offsets.pop(tp, None)
        self._revoked |= revoked

    async def check_expired(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> None:
        """Count and log the events retention deleted before this group loaded them.

        A committed offset below a partition's first offset means events were
        deleted while the sink was down or behind: the consumer then starts at the
        first offset that exists (``auto_offset_reset``), so they are lost for
        good. Never silent: ``llmpulse_source_expired_total`` and an error line
        (alert ``SourceEventsExpired``). A group without a commit has lost nothing.
        """
        if not assigned:
            return
        firsts = await consumer.beginning_offsets(list(assigned))
        for tp in sorted(assigned):
            committed = await consumer.committed(tp)
            if committed is not None and committed < firsts[tp]:
                lost = firsts[tp] - committed
                metrics.SOURCE_EXPIRED.labels(flow=self.FLOW, topic=tp.topic).inc(lost)
                log.error(
                    "%d events of %s[%d] (offsets %d-%d) were deleted by retention before "
                    "this sink loaded them: lost",
                    lost,
                    tp.topic,
                    tp.partition,
                    committed,
                    firsts[tp] - 1,
                )

    async def release(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Hand ``revoked`` over: settle a write in flight for them, then drop the rest."""
        writing = self._writing
        if writing is not None:
            if writing.task is not None:
                await asyncio.wait([writing.task])
            handed = {tp: writing.offsets.pop(tp) for tp in revoked if tp in writing.offsets}
            if writing.landed() and handed:
                await self._commit(consumer, handed)
        self.drop_partitions(revoked)

    # --- main loop -----------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> SinkStats:
        """Consume until ``stop`` is set (or forever), flushing a final batch on the way out."""
        stop = self._stop = stop or asyncio.Event()
        # aiokafka fetches a partition again only once its fetched records are
        # consumed, and meanwhile long-polls the idle partitions: with one hot
        # partition (outcomes are keyed by provider) every refill waits for that
        # poll (up to fetch_max_wait_ms) and a round trip. Shorter polls and larger
        # fetches make those waits short and rare (~15,000 outcomes per refill).
        consumer = kafka.consumer(
            self.settings,
            group=self.group,
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        consumer.subscribe([self.topic], listener=_CommitBeforeRevoke(self, consumer))
        producer = kafka.producer(self.settings)
        dlq = DeadLetterPublisher(producer, PoisonLimiter(self.settings.dlq_max_consecutive))
        await consumer.start()
        await producer.start()
        _freeze_startup_heap()
        up = metrics.SINK_UP.labels(flow=self.FLOW)
        up.set(1)
        try:
            while not stop.is_set():
                # All that was fetched (bounded): aiokafka asks for a partition's next
                # records only once it handed out the last ones, so the refill then
                # overlaps the decoding of these.
                batches = await consumer.getmany(timeout_ms=100, max_records=_TAKE_RECORDS)
                self._revoked.clear()
                for tp, records in batches.items():
                    metrics.EVENTS_CONSUMED.labels(flow=self.FLOW, topic=tp.topic).inc(len(records))
                    await self._take(consumer, tp, records, dlq)
                if self._writing is not None and self._writing.done():
                    await self._settle(consumer)
                if self._due(caught_up=not batches):
                    await self._settle(consumer)
                    self._start_write()
            await self._settle(consumer)
            if self._next_offsets:
                self._start_write()
                await self._settle(consumer)
        except PoisonLimitExceeded as exc:
            await self._stop_on_poison(consumer, exc)
            up.set(0)
        except _Stopped:
            log.warning(
                "stopped while ClickHouse writes were failing: the batch in flight was not "
                "written and its offsets are not committed (read again on restart)"
            )
        finally:
            await self._abandon()
            await producer.stop()
            await consumer.stop()
        return self.stats

    async def _stop_on_poison(self, consumer: AIOKafkaConsumer, exc: PoisonLimitExceeded) -> None:
        """Store what came before the poison run, commit past its dead letters, stop this sink.

        The dead-lettered messages are committed, so a restart never copies them
        to the DLQ again; the other sinks of the process go on (one flow's broken
        producer does not stop billing). ``llmpulse_sink_up`` goes to 0 (alert
        ``SinkStopped``); README "Poison messages" has the operator's path.
        """
        await self._settle(consumer)
        if self._next_offsets:
            self._start_write()
            await self._settle(consumer)
        self.stats.stopped = str(exc)
        log.error("%s; the %s sink stopped, the other flows go on", exc, self.FLOW)

    async def _take(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: list[Any],
        dlq: DeadLetterPublisher,
    ) -> None:
        """Accept one partition's fetched ``records``, writing the buffer each time it fills.

        Taken off the front of ``records`` as they are decoded, so the records
        already done are freed rather than rescanned by the garbage collector.
        """
        while records:
            chunk = records[: max(1, self.max_rows - len(self._buffer))]
            del records[: len(chunk)]
            await self._accept(tp, chunk, dlq)
            if len(self._buffer) >= self.max_rows:
                await self._settle(consumer)
                self._start_write()

    async def _accept(
        self, tp: TopicPartition, records: list[Any], dlq: DeadLetterPublisher
    ) -> None:
        """Decode one partition's fetched ``records`` into the buffer; poison to the DLQ."""
        self.stats.consumed += len(records)
        if tp in self._revoked:
            return  # revoked since the fetch: the new owner reads these
        model, bounds, pending, buffer = self.MODEL, self._bounds, self.pending, self._buffer
        after_poison = True  # a run of poison may continue from the previous fetch
        for record in records:
            try:
                event = decode(model, record.value, bounds=bounds)
            except PoisonEvent as poison:
                source = _source(record)
                await dlq.publish(source, poison, self.dlq_topic)
                self.stats.dead_lettered += 1
                try:
                    dlq.poisoned(source)
                except PoisonLimitExceeded:
                    # Everything up to this message is stored or dead-lettered.
                    self._next_offsets[tp] = record.offset + 1
                    raise
                if tp in self._revoked:
                    return  # revoked while we awaited the DLQ: the new owner reads the rest
                after_poison = True
                continue
            if after_poison:
                dlq.ok(_source(record))
                after_poison = False
            buffer.append(pending(event, record))
        self._next_offsets[tp] = records[-1].offset + 1
        if self._batch_started is None:
            self._batch_started = time.monotonic()

    def _due(self, *, caught_up: bool) -> bool:
        """Time to write the buffer: full, ``max_seconds`` old, or the input is drained.

        Batching keeps inserts few and large; once a fetch comes back empty,
        waiting for the timer only delays rows that are already here. A batch
        below ``max_rows`` therefore goes as soon as the input is drained, but
        such partial batches still go at most once per ``max_seconds``, so
        trickling traffic makes no more inserts than the timer alone would.
        """
        if self._batch_started is None:
            return False
        now = time.monotonic()
        return (
            len(self._buffer) >= self.max_rows
            or now - self._batch_started >= self.max_seconds
            or (
                caught_up
                and self._writing is None
                and now - self._partial_written >= self.max_seconds
            )
        )

    def _start_write(self) -> None:
        """Hand the buffer to a writer thread; reading goes on into a fresh buffer."""
        items, offsets = self._buffer, self._next_offsets
        self._buffer, self._next_offsets, self._batch_started = [], {}, None
        if len(items) < self.max_rows:
            self._partial_written = time.monotonic()
        # Submitted now, not when the loop next runs a task (``asyncio.to_thread`` in a
        # task would start only at the next await, and decoding does not await).
        task = (
            asyncio.get_running_loop().run_in_executor(None, self._write_locked, items)
            if items
            else None
        )
        self._writing = _Write(items, offsets, task)

    async def _settle(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for the write in flight (retrying it until it lands), then commit its offsets."""
        writing = self._writing
        if writing is None:
            return
        if writing.task is not None:
            try:
                await writing.task
            except Exception as exc:
                await self._retry(consumer, writing.items, exc)
            self._failpoint_after_insert()
        self._writing = None
        # The old owner never commits for partitions it lost while writing.
        owned = consumer.assignment()
        await self._commit(consumer, {tp: o for tp, o in writing.offsets.items() if tp in owned})
        self.stats.batches += 1
        if self._on_flush:
            self._on_flush(self.stats)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Rebalanced under us: the new owner re-reads; dedup keeps storage exact.
            log.warning("offset commit skipped after rebalance: %s", exc)

    async def _retry(self, consumer: AIOKafkaConsumer, batch: list[P], error: Exception) -> None:
        """Write ``batch`` again until it lands, every partition paused meanwhile."""
        delay = 0.2
        while True:
            # Every event in the batch already passed validation, so an insert
            # failure is infrastructure trouble: retry in place, never DLQ.
            self.stats.retries += 1
            metrics.SINK_RETRIES.labels(flow=self.FLOW).inc()
            log.warning("ClickHouse write failed (retry in %.1fs): %s", delay, _brief(error))
            await self._idle(consumer, delay)
            if self._stop.is_set():
                raise _Stopped  # SIGTERM while ClickHouse is down: stop, commit nothing
            delay = min(delay * 2, self.settings.sink_retry_max_seconds)
            try:
                await asyncio.to_thread(self._write_locked, batch)
                break
            except Exception as exc:
                error = exc
        consumer.resume(*consumer.assignment())

    async def _abandon(self) -> None:
        """On the way out after an error: let a write in flight finish, commit nothing."""
        writing, self._writing = self._writing, None
        if writing is not None and writing.task is not None:
            await asyncio.wait([writing.task])
            if not writing.landed():
                log.warning("abandoned ClickHouse write failed (not committed)")

    def _failpoint_after_insert(self) -> None:
        """Test-only: die by SIGKILL between an acknowledged insert and its commit."""
        name, _, count = self.settings.failpoint.partition(":")
        self._inserts_done += 1
        if name == "sink.kill_after_insert" and self._inserts_done >= int(count):
            log.warning("failpoint %s: SIGKILL before committing offsets", self.settings.failpoint)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _idle(self, consumer: AIOKafkaConsumer, seconds: float) -> None:
        """Wait while staying in the group (every partition paused), or until a stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
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


def _freeze_startup_heap() -> None:
    """Take what exists after startup (modules, clients, settings) out of garbage collection.

    A batch keeps thousands of decoded events alive, so the collector's
    allocation counters keep firing and every full collection rescans the whole
    startup heap (collections took a fifth of the usage sink's time, mostly full
    ones). Frozen objects are never scanned again; events and batches stay
    collectable as before.
    """
    gc.collect()
    gc.freeze()


class _Stopped(Exception):
    """A stop was asked for while a write was being retried (it never landed)."""


def _brief(error: Exception, limit: int = 300) -> str:
    """An error for a log line: a failed query's text can hold the batch's 5,000 ids."""
    text = str(error)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _source(record: Any) -> SourceRecord:
    return SourceRecord(record.topic, record.partition, record.offset, record.key, record.value)


class Decoded(NamedTuple):
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
