"""Non-blocking, lossless emission of request/outcome/feedback events to Kafka.

:class:`EventEmitter` is what an application service calls on its hot path:
``emit(event)`` serializes the event to the canonical wire bytes (the same bytes
every worker produces: ``llmpulse.schemas.wire.encode``), puts it on a bounded in-memory
queue and returns. It never waits for the network and never raises because of Kafka.
A background sender drains the queue into an idempotent ``acks=all`` producer,
pipelining sends and awaiting acknowledgements batch by batch.

When Kafka cannot take events (a send fails, or a batch is not acknowledged
within the request timeout) the emitter switches to *spooling mode*: events go
to an append-only JSON-lines spool on local disk (:class:`Spool`) instead, while
a recovery loop probes Kafka about once a second. Once Kafka acknowledges
again, the spool is replayed oldest segment first (a segment's cursor advances
only after its batch is acknowledged) and the emitter returns to normal mode.
A producer whose send failed, or that holds sends unacknowledged for
``abandon_after`` seconds, is stopped and replaced, and those sends are
spooled (aiokafka's idempotent producer otherwise retries some failures, such
as a sequence gap after an outage, forever). A full memory queue also
overflows into the spool rather than blocking the caller; that spill is
replayed while Kafka is healthy too. A new emitter on the same ``spool_dir``
(an application restart) replays what an earlier process left there.

Guarantee: **at-least-once, with no intentional duplicates.** An emitted event
is in the memory queue, with the producer (sent, acknowledgement pending), or
in the spool (possibly also in a replay batch, whose records leave the spool
only once acknowledged), never in two of these; the emitter never sends again
an event that Kafka acknowledged. A duplicate in Kafka is possible only when
Kafka persisted a send whose acknowledgement never reached this process: the
broker went away between write and response, a send was given up after
``abandon_after`` and spooled although the broker had written it, or the
process died between a replay batch's acknowledgement and the durable cursor
update. Consumers deduplicate by ``event_id``, which the caller generates once
and which travels unchanged through spool and replay. Ordering between spooled
and later events is not preserved.

What can be lost: a process killed without :meth:`EventEmitter.close`
(SIGKILL, OOM) loses the events still in its memory queue and those sent but
not yet acknowledged (bounded by ``emit_queue_size`` plus one send batch);
spooled events are flushed to the operating system on every write and
``fsync``-ed when a segment is closed, so only a machine crash can lose the
unsynced tail of the current segment. A graceful :meth:`EventEmitter.close`
loses nothing: what Kafka did not acknowledge within the time bound is spooled.
The one other loss is a local disk that refuses the spool write (full, read
only): such events are logged at ERROR level and counted in
:attr:`EventEmitter.dropped` (and ``llmpulse_gateway_dropped_events_total``).
The counters match the disk: an event counts as spooled iff its line is in the
spool, as dropped iff not (a full disk can take part of a batch: the whole
lines it took stay, a partial line is cut off, an empty segment removed).

Not thread-safe: call :meth:`EventEmitter.emit` from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed
from prometheus_client import Counter

from llmpulse.core.kafka_security import KafkaSecurityError, preflight
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.exceptions import ConfigError, EmitterClosed, EmitterError
from llmpulse.gateway.metrics import (
    EMIT_QUEUE_DEPTH,
    EVENTS_DROPPED,
    EVENTS_REPLAYED,
    EVENTS_SPOOLED,
)
from llmpulse.gateway.spool import Spool, SpoolRecord, read_segment
from llmpulse.schemas.events import Feedback, LLMOutcome, LLMRequest
from llmpulse.schemas.topics import FEEDBACK, OUTCOMES, REQUESTS, TopicSpec, topic_spec
from llmpulse.schemas.wire import encode

__all__ = ["EmittableEvent", "EventEmitter"]

log = logging.getLogger(__name__)

#: The events an application service emits.
EmittableEvent: TypeAlias = LLMRequest | LLMOutcome | Feedback

#: The topic of each emittable model, from the registry (key_field included).
_SPECS: dict[type[EmittableEvent], TopicSpec] = {
    LLMRequest: topic_spec(REQUESTS),
    LLMOutcome: topic_spec(OUTCOMES),
    Feedback: topic_spec(FEEDBACK),
}

# --------------------------------------------------------------------------- emitter


@dataclass
class _ReplayBatch:
    segment: Path
    end: int
    records: list[SpoolRecord]
    futures: list[asyncio.Future[Any]] = field(default_factory=list)


def _acked(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


class EventEmitter:
    """Non-blocking, lossless emission of gateway events (see the module docstring).

    Use from one event loop: ``await start()``, ``emit(...)`` from anywhere in
    that loop, ``await close()`` on shutdown (or ``async with EventEmitter(...)``).
    Topic and key of an event come from the ``llmpulse.schemas.topics`` registry (key =
    the ``key_field`` values joined by ``@``); topic names get
    ``config.topic_prefix``. Tuning knobs are keyword arguments; the defaults
    suit production.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        request_timeout_ms: int = 5_000,
        linger_ms: int = 5,
        send_batch_size: int = 1_000,
        replay_batch_size: int = 500,
        probe_interval: float = 1.0,
        abandon_after: float | None = None,
        max_segment_bytes: int = 4 * 1024 * 1024,
        max_segment_records: int = 10_000,
    ) -> None:
        """Open (and lock) the spool; nothing touches the network until :meth:`start`.

        ``request_timeout_ms`` bounds each Kafka request (and how fast an outage
        is noticed); ``probe_interval`` is the pause between recovery attempts;
        a producer holding sends unacknowledged for ``abandon_after`` seconds
        (default three request timeouts) is replaced and those events spooled.
        Raises :class:`SpoolLocked` when another emitter owns ``config.spool_dir``.
        """
        self._config = config
        self._clock = clock
        self._request_timeout_ms = request_timeout_ms
        self._linger_ms = linger_ms
        self._send_batch_size = send_batch_size
        self._replay_batch_size = replay_batch_size
        self._probe_interval = probe_interval
        # A batch not acknowledged by then means Kafka is away (aiokafka's idempotent
        # producer retries in-flight batches forever, so this is our outage signal).
        self._ack_timeout = request_timeout_ms / 1000 + 1.0
        # How long a producer may hold unacknowledged sends before it is replaced.
        self._abandon_after = (
            abandon_after if abandon_after is not None else 3 * request_timeout_ms / 1000
        )
        self._spool = Spool(
            config.spool_dir,
            max_segment_bytes=max_segment_bytes,
            max_segment_records=max_segment_records,
        )
        self._queue: asyncio.Queue[SpoolRecord] = asyncio.Queue(maxsize=config.emit_queue_size)
        self._producer: AIOKafkaProducer | None = None
        # A send of the current producer failed: it may have a sequence gap, after
        # which aiokafka retries OutOfOrderSequenceNumber forever. Replace it.
        self._producer_faulty = False
        # Since when the current producer holds sends unacknowledged past the timeout.
        self._unacked_since: float | None = None
        self._unsent: deque[SpoolRecord] = deque()
        self._inflight: dict[asyncio.Future[Any], SpoolRecord] = {}
        self._replay: _ReplayBatch | None = None
        self._spooling = False
        self._spooling_since: float | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._sender_task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._recovery_task: asyncio.Task[None] | None = None
        self._emitted = 0
        self._sent = 0
        self._spooled = 0
        self._replayed = 0
        self._dropped = 0

    # -- monitoring ----------------------------------------------------------------

    @property
    def emitted(self) -> int:
        """Events accepted by :meth:`emit`."""
        return self._emitted

    @property
    def sent(self) -> int:
        """Events acknowledged by Kafka on the direct path (not via the spool)."""
        return self._sent

    @property
    def spooled(self) -> int:
        """Events written to the spool (a replay record re-spooled after a failure counts again).

        Counted only once the event's line is on disk (see :attr:`dropped`).
        """
        return self._spooled

    @property
    def replayed(self) -> int:
        """Spooled events acknowledged by Kafka after replay (earlier processes' included)."""
        return self._replayed

    @property
    def dropped(self) -> int:
        """Events lost because the local disk refused the spool write (logged at ERROR)."""
        return self._dropped

    @property
    def spooling(self) -> bool:
        """True while Kafka is considered unavailable and new events go to the spool."""
        return self._spooling

    @property
    def spooling_since(self) -> float | None:
        """Clock reading when spooling mode began, or None in normal mode."""
        return self._spooling_since

    def pending(self) -> int:
        """Events not yet acknowledged by Kafka: queued, in flight, or in the spool."""
        return self._queue.qsize() + len(self._unsent) + len(self._inflight) + self._spool.pending()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka (bounded by the request timeout) and start the sender.

        Never fails because Kafka is unreachable: the emitter then starts in
        spooling mode and keeps probing. Events left in the spool by an earlier
        process are replayed in the background. Fails fast when Kafka refuses
        ``config.kafka_security`` (wrong password, untrusted certificate, a TLS
        file that cannot be loaded): :class:`ConfigError` naming the
        ``LLMPULSE_KAFKA_*`` variable, and the emitter is not started (no retry
        would let it in; spooled events would only pile up).
        """
        if self._started:
            raise EmitterError("EventEmitter already started")
        try:
            unreachable = await preflight(
                self._config.bootstrap_servers,
                self._config.kafka_security,
                timeout=self._request_timeout_ms / 1000,
            )
        except KafkaSecurityError as exc:
            raise ConfigError(f"Kafka refused the gateway: {exc}", names=[exc.setting]) from None
        self._started = True
        if unreachable is not None or not await self._ensure_producer():
            self._enter_spooling(f"Kafka unreachable at start ({unreachable or 'no answer'})")
        else:
            # Events of an earlier process (or spilled before start) are replayed
            # alongside new events, which go straight to Kafka.
            self._kick_recovery()
        self._sender_task = asyncio.create_task(self._sender_loop(), name="emitter-sender")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def emit(self, event: EmittableEvent) -> None:
        """Hand ``event`` over for delivery; returns at once, never raises because of Kafka.

        The event goes to the memory queue, or to the disk spool when the queue
        is full or :meth:`close` is under way (a small local file append). Raises
        ``TypeError`` for an unsupported event type and :class:`EmitterClosed` (a
        ``RuntimeError``) after :meth:`close` has finished (both programming errors).
        """
        if self._closed:
            raise EmitterClosed("EventEmitter is closed")
        spec = _SPECS.get(type(event))
        if spec is None:
            raise TypeError(f"cannot emit {type(event).__name__}")
        record = SpoolRecord(
            topic=self._config.topic(spec.name),
            key=spec.key_of(event),
            value=encode(event),
            event_id=str(event.event_id),
        )
        self._emitted += 1
        if self._closing:
            self._spool_write([record])
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._spool_write([record])
        EMIT_QUEUE_DEPTH.set(self._queue.qsize())

    async def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, deliver what Kafka takes within ``timeout`` s, spool the rest.

        After it returns every emitted event is acknowledged by Kafka or in the
        (fsync-ed) spool, and the producer and spool are closed. Takes at most
        about ``timeout`` plus two request timeouts when Kafka is unreachable.
        """
        if self._closing:
            return
        self._closing = True
        deadline = self._clock() + timeout
        # The replay batch in flight is settled below, after the producer is down.
        await self._cancel(self._recovery_task)
        await asyncio.gather(*self._stopping, return_exceptions=True)
        sender = self._sender_task
        while (
            (self._queue.qsize() or self._unsent)
            and sender is not None
            and not sender.done()
            and self._clock() < deadline
        ):
            await asyncio.sleep(0.01)
        await self._cancel(sender)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=max(0.0, deadline - self._clock()))
        await self._discard_producer(max(0.5, deadline - self._clock()))
        # Everything the producer held is now final: acknowledged, or never to be sent.
        self._settle_replay()
        for fut in list(self._inflight):
            self._on_send_done(None, fut)
        leftovers = list(self._unsent)
        self._unsent.clear()
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        self._spool_write(leftovers)
        EMIT_QUEUE_DEPTH.set(0)
        self._spool.close()
        self._closed = True
        log.info(
            "event emitter closed: %d emitted, %d sent, %d spooled, %d replayed, "
            "%d left in the spool",
            self._emitted,
            self._sent,
            self._spooled,
            self._replayed,
            self._spool.pending(),
        )

    @staticmethod
    async def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- producer ------------------------------------------------------------------

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._config.bootstrap_servers,
            **self._config.kafka_security.aiokafka_options(),
            client_id=f"llmpulse-gateway-{self._config.instance_id}",
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=self._request_timeout_ms,
            linger_ms=self._linger_ms,
            max_batch_size=256 * 1024,
        )

    def _must_replace(self, producer: AIOKafkaProducer) -> bool:
        if self._producer_faulty:
            return True
        if (
            self._unacked_since is not None
            and self._clock() - self._unacked_since >= self._abandon_after
        ):
            return True
        # aiokafka has no public health flag; its sender task ends only on a fatal
        # error, after which every send fails.
        task = getattr(getattr(producer, "_sender", None), "sender_task", None)
        return task is not None and task.done()

    async def _ensure_producer(self) -> bool:
        """A started producer that is not known to be stuck exists (else start one)."""
        old = self._producer
        if old is not None and not self._must_replace(old):
            return True
        if old is not None:
            log.warning("replacing the Kafka producer; its unacknowledged events are spooled")
            await self._discard_producer(1.0)
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), self._request_timeout_ms / 1000)
        except BaseException as exc:
            # Also on cancellation (close() during a probe): release the connections.
            log.debug("Kafka not reachable yet (%s)", type(exc).__name__)
            await self._stop_producer_instance(producer, 1.0)
            if not isinstance(exc, Exception):
                raise
            return False
        self._producer = producer
        self._producer_faulty = False
        self._unacked_since = None
        return True

    async def _discard_producer(self, flush_timeout: float) -> None:
        """Stop the current producer; what it did not deliver is settled by callbacks."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        task = asyncio.create_task(self._stop_producer_instance(producer, flush_timeout))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        # Shielded: a cancelled caller must not leave a half-stopped producer that
        # could still deliver what close() then spools; close() awaits the task.
        await asyncio.shield(task)

    async def _stop_producer_instance(
        self, producer: AIOKafkaProducer, flush_timeout: float
    ) -> None:
        """Stop ``producer``; afterwards it can deliver nothing more.

        ``stop()`` flushes, which with an idempotent producer and Kafka away waits
        forever (in-flight batches are retried without expiry). Past the timeout
        the sender is cancelled and the remaining batches failed, so that nothing
        this emitter then spools can still be delivered by the old producer.
        """
        try:
            await asyncio.wait_for(producer.stop(), flush_timeout)
            return
        except TimeoutError:
            log.warning("Kafka producer did not flush in %.1fs; aborting it", flush_timeout)
        except Exception as exc:
            log.debug("Kafka producer stop failed (%r); aborting it", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender.close(), 2 * self._request_timeout_ms / 1000)
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is not None:
            # Batches that were sent and re-queued for a retry are no longer in the
            # pending set that their completion callback removes them from; put them
            # back so failing them does not raise KeyError inside aiokafka.
            for queued in list(getattr(accumulator, "_batches", {}).values()):
                accumulator._pending_batches.update(queued)
            accumulator.fail_all(ProducerClosed())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.client.close(), 5.0)

    # -- direct path -----------------------------------------------------------------

    async def _sender_loop(self) -> None:
        while True:
            self._unsent.append(await self._queue.get())
            while len(self._unsent) < self._send_batch_size and not self._queue.empty():
                self._unsent.append(self._queue.get_nowait())
            EMIT_QUEUE_DEPTH.set(self._queue.qsize())
            try:
                if self._spooling or self._producer is None:
                    self._spool_unsent()
                else:
                    await self._send_batch(self._producer)
            except Exception:
                # The sender must outlive any surprise, or the queue would stall.
                log.exception("event emitter sender failed; spooling the batch")
                self._spool_unsent()

    async def _send_batch(self, producer: AIOKafkaProducer) -> None:
        """Send ``_unsent`` without waiting per event, then wait for the batch's acks."""
        futures: list[asyncio.Future[Any]] = []
        while self._unsent:
            if self._spooling:
                self._spool_unsent()
                break
            record = self._unsent[0]
            try:
                fut = await producer.send(record.topic, record.value, key=record.key)
            except Exception as exc:
                # No metadata or no buffer space within the request timeout, or a dead
                # producer: Kafka is away, so the rest of the batch goes to the spool.
                if producer is self._producer:
                    self._producer_faulty = True
                self._enter_spooling(f"send failed: {type(exc).__name__}")
                self._spool_unsent()
                break
            self._unsent.popleft()
            self._inflight[fut] = record
            fut.add_done_callback(functools.partial(self._on_send_done, producer))
            futures.append(fut)
        if futures:
            _, pending = await asyncio.wait(futures, timeout=self._ack_timeout)
            if pending:
                # Left with the producer: it keeps retrying them and the callback
                # settles each one (acknowledged, or spooled on failure). Recovery
                # replaces the producer if they stay unacknowledged too long.
                if producer is self._producer and self._unacked_since is None:
                    self._unacked_since = self._clock()
                self._enter_spooling(f"{len(pending)} events unacknowledged after timeout")

    def _on_send_done(self, producer: AIOKafkaProducer | None, fut: asyncio.Future[Any]) -> None:
        """Settle one direct send: count it, or spool it if it was not acknowledged.

        Runs as the future's callback, and from close() for sends still pending
        after the producer was stopped (they can no longer be delivered).
        """
        record = self._inflight.pop(fut, None)
        if record is None:
            return  # already settled
        current = producer is not None and producer is self._producer
        if _acked(fut):
            self._sent += 1
            if current and not self._inflight:
                self._unacked_since = None
            return
        self._spool_write([record])
        if current:
            self._producer_faulty = True
        if fut.done() and not fut.cancelled():
            self._enter_spooling(f"send failed: {type(fut.exception()).__name__}")

    def _spool_unsent(self) -> None:
        records = list(self._unsent)
        self._unsent.clear()
        self._spool_write(records)

    def _spool_write(self, records: Sequence[SpoolRecord]) -> None:
        """Spool ``records``; what the disk refuses is counted dropped, the rest spooled.

        The counters match the disk: an event counts as spooled iff its line is
        in the spool (a full disk can take a prefix of a batch).
        """
        if not records:
            return
        try:
            written = self._spool.append(records)  # logs the disk's error itself
        except Exception:
            written = 0
            log.exception("could not write to the spool")
        if written < len(records):
            log.error(
                "%d of %d events not spooled: events lost", len(records) - written, len(records)
            )
        self._count(records[:written], EVENTS_SPOOLED)
        self._count(records[written:], EVENTS_DROPPED)
        self._spooled += written
        self._dropped += len(records) - written
        if written:
            # Also a full queue spills here while Kafka is fine: replay it soon.
            self._kick_recovery()

    def _count(self, records: Sequence[SpoolRecord], counter: Counter) -> None:
        for topic, count in _by_topic(records).items():
            counter.labels(topic=self._label(topic)).inc(count)

    def _label(self, topic: str) -> str:
        # The registry name, as at every other hop: prefixes would make labels unbounded.
        prefix = self._config.topic_prefix
        return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic

    def _enter_spooling(self, reason: str) -> None:
        if not self._spooling:
            self._spooling = True
            self._spooling_since = self._clock()
            log.warning("event emitter spooling to %s: %s", self._spool.directory, reason)
        self._kick_recovery()

    def _kick_recovery(self) -> None:
        """Run the recovery loop if it is not running (it ends once the spool is empty)."""
        if self._closing or not self._started:
            return
        if self._recovery_task is None or self._recovery_task.done():
            self._recovery_task = asyncio.get_running_loop().create_task(
                self._recovery_loop(), name="emitter-recovery"
            )

    # -- recovery and replay -----------------------------------------------------------

    async def _recovery_loop(self) -> None:
        """Replay the spool until it is empty; in spooling mode, then return to normal.

        Also the outage probe: each round needs a started producer and a replay
        batch acknowledged by Kafka; a failed round is retried after
        ``probe_interval``.
        """
        while True:
            drained = False
            try:
                drained = await self._ensure_producer() and await self._replay_spool()
                if drained and self._spooling and self._inflight:
                    # Unacknowledged direct sends are still with the producer; normal
                    # mode resumes once they are settled (acknowledged or spooled).
                    await asyncio.wait(list(self._inflight), timeout=self._probe_interval)
                    continue
                if drained and self._spool.pending() == 0:
                    # No await between this check and the return: anything spooled
                    # later starts a new loop (see _spool_write), nothing is stranded.
                    if self._spooling:
                        self._spooling = False
                        self._spooling_since = None
                        log.warning("event emitter: Kafka acknowledges again, spool replayed")
                    return
            except Exception:
                log.exception("event emitter recovery failed; retrying")
                drained = False
            await asyncio.sleep(0 if drained else self._probe_interval)

    async def _replay_spool(self) -> bool:
        """Replay every closed segment oldest first; True when all were acknowledged."""
        self._spool.seal()
        for segment in self._spool.segments():
            try:
                read = await asyncio.to_thread(read_segment, segment, self._spool.cursor(segment))
            except FileNotFoundError:
                log.warning("spool segment %s disappeared; skipping it", segment.name)
                self._spool.remove(segment)
                continue
            self._spool.forget(segment, read.skipped)
            step = self._replay_batch_size
            for i in range(0, len(read.records), step):
                records = read.records[i : i + step]
                batch = _ReplayBatch(segment, read.ends[i + len(records) - 1], records)
                if not await self._replay_batch(batch):
                    return False
            self._spool.remove(segment)
        return True

    async def _replay_batch(self, batch: _ReplayBatch) -> bool:
        producer = self._producer
        if producer is None:
            return False
        self._replay = batch
        for record in batch.records:
            try:
                batch.futures.append(
                    await producer.send(record.topic, record.value, key=record.key)
                )
            except Exception as exc:
                log.debug("spool replay: Kafka still unavailable (%s)", type(exc).__name__)
                if producer is self._producer:
                    self._producer_faulty = True
                break
        if batch.futures:
            # These sends belong to the producer until they resolve (it retries while
            # Kafka is away), so this wait is the probe. Past abandon_after the
            # producer is stopped, which settles them; close() cancels this wait and
            # settles the batch after stopping the producer itself.
            _, pending = await asyncio.wait(batch.futures, timeout=self._abandon_after)
            if pending and producer is self._producer:
                self._enter_spooling(f"{len(pending)} replayed events unacknowledged")
                await self._discard_producer(1.0)
        if producer is self._producer and any(
            f.done() and not f.cancelled() and f.exception() is not None for f in batch.futures
        ):
            self._producer_faulty = True
        return self._settle_replay()

    def _settle_replay(self) -> bool:
        """Account for the replay batch once its sends are final; True if all acked."""
        batch, self._replay = self._replay, None
        if batch is None:
            return True
        acked = [r for r, f in zip(batch.records, batch.futures, strict=False) if _acked(f)]
        self._count(acked, EVENTS_REPLAYED)
        self._replayed += len(acked)
        if len(acked) == len(batch.records):
            self._spool.advance(batch.segment, batch.end, len(acked))
            return True
        if acked:
            # Some were acknowledged: move the rest to a new segment and advance past
            # the whole batch, so the acknowledged ones are never sent again.
            # Records after a failed send() have no future: they were never sent.
            unacked = [
                r
                for i, r in enumerate(batch.records)
                if i >= len(batch.futures) or not _acked(batch.futures[i])
            ]
            self._spool_write(unacked)
            self._spool.advance(batch.segment, batch.end, len(batch.records))
        # Nothing acknowledged: the cursor stays and the batch is tried again.
        return False


def _by_topic(records: Iterable[SpoolRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.topic] = counts.get(r.topic, 0) + 1
    return counts
