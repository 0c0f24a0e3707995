"""Prompt performance rollups and the registry materializer (``llmpulse worker prompts``).

Rollups: two Faust agents read ``llm.outcomes.v1`` (6 partitions) and
``llm.feedback.v1`` (3 partitions) without repartitioning. Each keeps partial
aggregates per (prompt version, window size, window start, source partition)
in a changelog-backed table, so every key has one writer and a restarted
worker continues exactly (``prompt_rollup.Partial.seen``). Each table also keeps
an input cursor per source partition, so events are applied strictly in offset
order even where Faust skips some after a rebalance (``llmpulse.processors.stream.input_cursor``).
Records arrive a fetched partition batch at a time (``OrderedStep.batch``): the
partials a batch touches are updated in memory and written to the table once
each when the batch ends, before its cursor.
Windows are tumbling, by event time, closed ``prompt_window_grace_seconds``
after their end; a closed window is emitted to ``llm.prompt-performance.v1`` (the sink
loads it into ClickHouse ``prompt_performance``). Events that arrive later are
counted (``llmpulse_late_events_total``) and emitted as correction partials.
Downstream, partials and corrections simply add up.

Registry: a task follows the compacted ``llm.prompt-versions.v1`` from the
beginning and writes each prompt's active versions with their effective A/B
weights to Redis (``llmpulse.schemas.serving.prompt_key``) for the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiokafka import TopicPartition

from llmpulse.core.registry import PromptState, fold
from llmpulse.core.rollup import OutcomeSample, Partial, partial_key
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka, metrics, redis_client
from llmpulse.processors.stream.codec import PoisonEvent, decode, encode
from llmpulse.processors.stream.dlq import Record
from llmpulse.processors.stream.faust_app import (
    FEEDBACK_PARTIALS_TABLE,
    OUTCOME_PARTIALS_TABLE,
    changelog_written,
    create_app,
    deliver_batches,
    run,
    table_delete,
    table_set,
)
from llmpulse.processors.stream.input_cursor import InputCursors, TableCursors, is_cursor_key
from llmpulse.processors.stream.ordered import OrderedStep, Route
from llmpulse.processors.stream.resends import Resends, is_resend_key
from llmpulse.schemas import serving
from llmpulse.schemas.events import (
    Feedback,
    LLMOutcome,
    OutcomeStatus,
    PromptPerformance,
    PromptVersionEvent,
)
from llmpulse.schemas.topics import (
    FEEDBACK,
    OUTCOMES,
    PROMPT_PERFORMANCE,
    PROMPT_VERSIONS,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
FLOW = "prompt_performance"
_NAMESPACE = uuid.UUID("6f1c2b7a-0d4e-4c53-9a8e-1b2c3d4e5f60")
_SWEEP_EVERY = 1.0


def record_id(p: Partial, source_topic: str) -> uuid.UUID:
    """Id of the emitted record of a partial: stable across re-emission."""
    return uuid.uuid5(_NAMESPACE, f"{source_topic}|{p.key()}|{p.first_offset}")


def performance_record(p: Partial, source_topic: str) -> PromptPerformance:
    """The emitted form of a closed partial."""
    start = datetime.fromtimestamp(p.window_start, UTC)
    return PromptPerformance(
        event_id=record_id(p, source_topic),
        event_time=datetime.fromtimestamp(p.window_start + p.window_seconds, UTC),
        prompt_name=p.prompt_name,
        prompt_version=p.prompt_version,
        window_seconds=p.window_seconds,
        window_start=start,
        source_topic=source_topic,
        source_partition=p.partition,
        first_offset=p.first_offset,
        is_correction=p.is_correction,
        executions=p.executions,
        successes=p.successes,
        failures=p.failures,
        latency_sum_ms=p.latency_sum_ms,
        latency_sq_ms=p.latency_sq_ms,
        latency_sketch=dict(p.latency_sketch),
        input_tokens=p.input_tokens,
        output_tokens=p.output_tokens,
        cost_usd=p.cost_usd,
        cost_sq=p.cost_sq,
        feedback_count=p.feedback_count,
        feedback_sum=p.feedback_sum,
        feedback_sq=p.feedback_sq,
    )


def registry_view(prompt: PromptState) -> serving.PromptView:
    """The Redis serving view of one prompt: active versions and effective weights."""
    weights = prompt.effective_weights()
    return serving.PromptView(
        prompt_name=prompt.name,
        versions=tuple(
            serving.PromptVersionEntry(
                version=v.version,
                weight=weights[v.version],
                content=v.content,
                system_message=v.system_message,
                temperature=v.temperature,
                max_tokens=v.max_tokens,
                model=v.model,
            )
            for v in prompt.active()
        ),
    )


class RegistryLog:
    """The registry topic as read so far, in memory bounded by the registry's versions.

    Only the last event of each (prompt, version) is kept: ``fold`` keeps each
    version's latest record, in the order versions first appeared, so folding
    these gives the same state as folding the whole log (which grows with every
    activation and deactivation for as long as the worker runs).
    """

    def __init__(self) -> None:
        self._latest: dict[tuple[str, int], PromptVersionEvent] = {}

    def add(self, event: PromptVersionEvent) -> None:
        self._latest[(event.prompt_name, event.version)] = event

    def state(self) -> dict[str, PromptState]:
        """Every prompt's state after the events added so far (``fold`` of the whole log)."""
        return fold(self._latest.values())

    def __len__(self) -> int:
        """Events held: one per (prompt, version)."""
        return len(self._latest)


class PromptsService:
    """Wiring of the rollup logic to Faust, Kafka and Redis."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.app = create_app(settings, "prompts")
        self.sources = {
            settings.topic(OUTCOMES): OUTCOME_PARTIALS_TABLE.create(self.app),
            settings.topic(FEEDBACK): FEEDBACK_PARTIALS_TABLE.create(self.app),
        }
        self.cursors = InputCursors(self.app, TableCursors(self.sources), FLOW)
        # Resends (same event_id) count once if their event time is within the longest
        # window plus its grace of the clock: until then an event can still add to an
        # open window or a correction of it.
        horizon = max(settings.prompt_windows) + settings.prompt_window_grace_seconds
        self._resends = {
            topic: Resends(table, horizon, FLOW) for topic, table in self.sources.items()
        }
        self.perf_topic = settings.topic(PROMPT_PERFORMANCE)
        self.ordered = OrderedStep.for_app(
            self.app,
            settings,
            {
                settings.topic(OUTCOMES): Route(LLMOutcome, self._on_outcome),
                settings.topic(FEEDBACK): Route(Feedback, self._on_feedback),
            },
            cursors=self.cursors,
            flush=self._flush,
        )
        deliver_batches(self.app, self.ordered)
        # The partials of the partitions this worker owns, by table key, authoritative
        # in process (decoding a table value costs more than the events of a batch).
        self._live: dict[str, dict[str, Partial]] = {topic: {} for topic in self.sources}
        # Keys of the partials the batch being processed touched (written at its end).
        self._touched: set[str] = set()
        # The live regular partials of open windows by (prompt, version, size, start,
        # partition): an event finds its partials without building their table keys.
        self._hot: dict[str, dict[tuple[str, int, int, int, int], tuple[str, Partial]]] = {
            topic: {} for topic in self.sources
        }
        self.app.on_partitions_revoked.connect(self._forget)
        # Table key -> last offset its partial was emitted with (timer emissions are
        # not written to the table, so a partial that grew is emitted again; the
        # sink's ReplacingMergeTree keeps the copy that counted most). Keyed like the
        # table, not by record id: a correction replaced by the next one (a new first
        # offset, so a new record id) takes over its entry instead of leaving it
        # behind. Entries go with their partial (long closed) or with the partitions
        # (revoked): at most one per partial of the table.
        self._emitted: dict[str, int] = {}
        self._last_sweep: dict[tuple[str, int], float] = {}
        self._late_events = metrics.LATE_EVENTS.labels(flow=FLOW)
        self.app.timer(1.0)(self._emit_idle_windows)
        self.app.task(self._materialize_registry)

    # --- batches --------------------------------------------------------------------------
    async def _flush(self, topic: str, partition: int, applied: Sequence[Record]) -> None:
        """End of a batch: one table write per touched partial, then sweep closed windows."""
        table = self.sources[topic]
        for key in self._touched:
            table_set(table, partition, key, self._live[topic][key].to_dict())
        self._touched.clear()
        self._resends[topic].flush(partition, applied[0].offset)  # after the partials
        metrics.EVENTS_CONSUMED.labels(flow=FLOW, topic=topic).inc(len(applied))
        await self._sweep(topic, partition)

    def _partial(self, topic: str, key: str) -> Partial | None:
        """The partial at ``key``: the live one, else as the table holds it (then live)."""
        live = self._live[topic]
        partial = live.get(key)
        if partial is None:
            data = self.sources[topic].get(key)
            if data:
                partial = live[key] = Partial.from_dict(data)
        return partial

    async def _forget(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these partitions now: read from the tables again.
        for live in self._live.values():
            live.clear()
        for hot in self._hot.values():
            hot.clear()
        self._emitted.clear()  # re-emitting a record is harmless (the sink keeps one copy)
        for resends in self._resends.values():
            resends.forget()

    def _targets(
        self,
        topic: str,
        name: str,
        version: int,
        ts: float,
        partition: int,
        offset: int,
        now: float,
    ) -> list[tuple[str, Partial]]:
        """(table key, partial) of each window size the event at ``offset`` still adds to.

        An event of an open window goes to the window's regular partial (found
        through ``_hot`` without building its key); one of a closed window is
        late and goes to a correction.
        """
        grace = self.settings.prompt_window_grace_seconds
        hot = self._hot[topic]
        out = []
        for size in self.settings.prompt_windows:
            start = int(ts // size) * size  # window_start, inlined: once per event and size
            at = (name, version, size, start, partition)
            if now < start + size + grace:
                target = hot.get(at)
                if target is None:
                    target = hot[at] = self._regular(topic, at, offset)
            else:
                target = self._correction(topic, at, offset)
            if offset > target[1].last_offset:  # not seen (replays after a crash are)
                out.append(target)
        return out

    def _regular(
        self, topic: str, at: tuple[str, int, int, int, int], offset: int
    ) -> tuple[str, Partial]:
        """The regular partial of window ``at``, new from the event at ``offset`` if none."""
        key = partial_key(*at, False)
        partial = self._partial(topic, key)
        if partial is None:
            partial = Partial(*at, offset, False)
        return key, partial

    def _correction(
        self, topic: str, at: tuple[str, int, int, int, int], offset: int
    ) -> tuple[str, Partial]:
        """The open correction of closed window ``at`` for a late event (counted late once)."""
        key = partial_key(*at, True)
        partial = self._partial(topic, key)
        if partial is None or partial.emitted:
            # A new correction starts above every offset this window has applied
            # (regular partial and earlier corrections), so an event replayed
            # after a crash is never counted twice.
            regular = self._partial(topic, partial_key(*at, False))
            watermark = max(
                partial.last_offset if partial else -1,
                regular.last_offset if regular else -1,
            )
            partial = Partial(*at, offset, True, last_offset=watermark)
        if not partial.seen(offset):
            self._late_events.inc()
        return key, partial

    def _on_outcome(self, o: LLMOutcome, record: Record) -> None:
        if o.prompt_name is None or o.prompt_version is None:
            return
        if o.status is OutcomeStatus.cancelled:
            return  # the caller gave up: not an execution result of the prompt version

        sample = OutcomeSample.of(
            success=o.status is OutcomeStatus.success,
            latency_ms=o.latency_ms,
            input_tokens=o.input_tokens,
            output_tokens=o.output_tokens,
            cost_usd=o.cost_usd,
        )
        name, version = o.prompt_name, o.prompt_version
        self._apply(record, o.event_id, name, version, o.event_time, Partial.add_sample, sample)

    def _on_feedback(self, f: Feedback, record: Record) -> None:
        name, version = f.prompt_name, f.prompt_version
        self._apply(record, f.event_id, name, version, f.event_time, Partial.add_feedback, f.score)

    def _apply(
        self,
        record: Record,
        event_id: uuid.UUID,
        name: str,
        version: int,
        event_time: datetime,
        add: Callable[[Partial, int, T], None],
        value: T,
    ) -> None:
        """``add(partial, offset, value)`` to each window size's partial, once per event."""
        topic, partition, offset = record.topic, record.partition, record.offset
        ts = event_time.timestamp()
        now = self.clock()
        if not self._resends[topic].first_time(partition, event_id, ts, now):
            return
        live = self._live[topic]
        for key, p in self._targets(topic, name, version, ts, partition, offset, now):
            add(p, offset, value)
            live[key] = p
            self._touched.add(key)

    # --- closing windows -------------------------------------------------------------------
    def _partials_in(
        self, topic: str, partition: int | None = None
    ) -> Iterator[tuple[str, Partial]]:
        """The partials of ``topic`` (of one source partition if given), cursors skipped."""
        live = self._live[topic]
        for key, data in list(self.sources[topic].items()):
            if is_cursor_key(key) or is_resend_key(key) or not data:
                continue
            if partition is None or int(data["partition"]) == partition:
                yield key, live.get(key) or Partial.from_dict(data)

    async def _sweep(self, topic: str, partition: int) -> None:
        """After a batch of ``partition``: emit closed windows, drop long-closed partials."""
        now = self.clock()
        if now - self._last_sweep.get((topic, partition), 0.0) < _SWEEP_EVERY:
            return
        self._last_sweep[(topic, partition)] = now
        self._resends[topic].maintain(partition, now)
        table = self.sources[topic]
        grace = self.settings.prompt_window_grace_seconds
        keep = self.settings.prompt_partial_retention_seconds
        due: dict[str, Partial] = {}
        for key, p in self._partials_in(topic, partition):
            if not p.closed(now, grace):
                continue
            if not p.emitted:
                due[key] = p
            elif p.closed(now, grace + keep):
                # Long closed: no uncommitted replay can still belong to it.
                table_delete(table, partition, key)
                self._live[topic].pop(key, None)
                self._emitted.pop(key, None)
        hot = self._hot[topic]
        for at in [at for at, (_, p) in hot.items() if p.closed(now, grace)]:
            del hot[at]  # events of a closed window are late: never looked up here again
        await self._emit(list(due.values()), topic)
        for key, p in due.items():
            p.emitted = True
            table_set(table, partition, key, p.to_dict())

    async def _emit(self, partials: list[Partial], topic: str) -> None:
        if not partials:
            return
        # Only durable state leaves the worker: were a partial lost in a crash, its
        # replayed events could land in a correction as well (counted twice).
        await changelog_written(self.app)
        for p in partials:
            rec = performance_record(p, topic)
            await self.app.producer.send_and_wait(
                self.perf_topic, p.prompt_name.encode(), encode(rec), None, None, None
            )
            self._emitted[p.key()] = p.last_offset
            metrics.EVENT_LAG_SECONDS.labels(flow=FLOW).observe(
                max(0.0, self.clock() - rec.event_time.timestamp())
            )

    async def _emit_idle_windows(self) -> None:
        """Emit windows that closed while their partition had no traffic (no table write)."""
        now = self.clock()
        grace = self.settings.prompt_window_grace_seconds
        for topic in self.sources:
            due = [
                p
                for key, p in self._partials_in(topic)
                if p.closed(now, grace)
                and not p.emitted
                and self._emitted.get(key) != p.last_offset
            ]
            await self._emit(due, topic)

    # --- registry -----------------------------------------------------------------------------
    async def _materialize_registry(self) -> None:
        """Follow the registry topic from the start; write each changed prompt to Redis."""
        topic = self.settings.topic(PROMPT_VERSIONS)
        rds = redis_client.connect(self.settings, socket_timeout=2)
        group = f"llmpulse-registry-{uuid.uuid4().hex[:8]}"
        consumer = await kafka.started(
            lambda: kafka.consumer(self.settings, group=group),
            "prompt registry reader",
            settings=self.settings,
        )
        registry = RegistryLog()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                changed: set[str] = set()
                for records in batch.values():
                    for r in records:
                        try:
                            e = decode(
                                PromptVersionEvent, r.value, bounds=self.settings.event_time_bounds
                            )
                        except PoisonEvent as poison:
                            log.warning("invalid registry event at offset %d: %s", r.offset, poison)
                            continue
                        registry.add(e)
                        changed.add(e.prompt_name)
                if changed:
                    state = registry.state()
                    await self._write_registry(rds, [state[name] for name in changed])
        finally:
            await consumer.stop()
            await rds.aclose()

    async def _write_registry(self, rds: aioredis.Redis, prompts: list[PromptState]) -> None:
        while True:
            try:
                for prompt in prompts:
                    await rds.set(
                        serving.prompt_key(self.settings.topic_prefix, prompt.name),
                        registry_view(prompt).model_dump_json(),
                    )
                return
            except (aioredis.RedisError, OSError) as exc:
                redis_client.log_failure(log, exc, "registry view retried in 1s")
                await asyncio.sleep(1)


def run_worker(settings: Settings) -> None:
    """Run the prompts worker until SIGINT/SIGTERM (Faust owns the event loop)."""
    run(PromptsService(settings).app)


__all__ = ["PromptsService", "RegistryLog", "performance_record", "registry_view", "run_worker"]
