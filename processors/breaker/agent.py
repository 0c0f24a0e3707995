"""Fleet-wide circuit breaker: ``llm.outcomes.v1`` + ``llm.breaker-control.v1`` -> state.

One Faust agent reads outcomes (keyed by provider, no repartition) and operator
controls (same key and partition count) into the changelog-backed table
``breaker_state``: one writer per provider, restored after a crash. Every
transition is published as a versioned ``BreakerSnapshot`` to Redis (applied
only if newer), to the compacted ``llm.breaker-state.v1``, to
``llm.breaker-transitions.v1`` (loaded into ClickHouse ``breaker_transitions``
by the sink) and to Prometheus. Events are applied in offset order, once per
assignment: in-memory input cursors skip re-deliveries and re-read any records
Faust drops after a rebalance (``llmpulse.processors.stream.input_cursor``).
Records arrive a fetched partition batch at a time (``OrderedStep.batch``); a
transition is published as soon as the event that caused it is applied, after
the breaker's earlier publications (``BreakerService._in_turn``) and as it was
when applied (``Publication``), so every version reaches the topics.

Open -> half_open happens on time without traffic: a timer derives the due
transition from the stored state (deterministic: it happens at ``open_until``
with the next version) and publishes it; the agent stores the same transition
when the provider's next event arrives. The timer also re-applies every
snapshot to Redis, so Redis recovers from restarts or outages on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from llmpulse.core.breaker import BreakerCore, Transition, Verdict, classify
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import metrics, redis_client
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.dlq import Record
from llmpulse.processors.stream.faust_app import (
    BREAKER_STATE_TABLE,
    create_app,
    deliver_batches,
    run,
    table_set,
)
from llmpulse.processors.stream.input_cursor import InputCursors, MemoryCursors
from llmpulse.processors.stream.ordered import OrderedStep, Route
from llmpulse.processors.stream.resends import Resends, is_resend_key
from llmpulse.schemas import serving
from llmpulse.schemas.events import (
    BREAKER_STATE_GAUGE,
    BreakerControl,
    BreakerSnapshot,
    BreakerState,
    LLMOutcome,
)
from llmpulse.schemas.topics import (
    BREAKER_CONTROL,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    OUTCOMES,
)

log = logging.getLogger(__name__)
FLOW = "breaker_state"
_OFFSET = "offset"  # table value field: the last outcome offset the breaker applied
_NAMESPACE = uuid.UUID("0b4a3f0e-3c1d-4a47-9d0e-6c1b2a9f7e55")


def snapshot_of(core: BreakerCore, now: datetime, t: Transition | None = None) -> BreakerSnapshot:
    """Serving view after transition ``t`` (default: the current state).

    The event id is stable per (provider, version), so a re-sent snapshot is
    recognisably the same event downstream. Its event time is when the state
    began, any age (a state record), never later than ``now`` (a transition
    dated by an outcome's event time may lie ahead of this worker's clock).
    """
    calls, fails, _ = core.calls_in_window(now)
    current = t is None or t.version == core.version
    version = core.version if t is None else t.version
    since = core.since if t is None else t.at
    previous = core.previous_state if t is None else t.from_state
    reason = core.reason if t is None else t.reason
    return BreakerSnapshot(
        event_id=uuid.uuid5(_NAMESPACE, f"{core.provider}:{version}"),
        event_time=min(since, now) if since.year > 1970 else now,
        provider=core.provider,
        state=core.state if t is None else t.to_state,
        version=version,
        since=since,
        as_of=now,
        failure_rate=fails / calls if calls else 0.0,
        calls_in_window=calls,
        next_attempt_at=core.open_until if current else None,
        previous_state=previous,
        reason=reason,
        probe_permits=core.config.half_open_probes,
    )


@dataclass(frozen=True)
class Publication:
    """What one change of a breaker publishes, taken when the change is applied.

    Taken at once because the breaker moves on while the publication waits its
    turn: built later, it would name versions it never sends.
    """

    provider: str
    transitions: tuple[tuple[Transition, BreakerSnapshot], ...]
    view: BreakerSnapshot  # the serving view after the change (its version: the breaker's)
    resync: bool = False  # re-apply the view to Redis even if nothing changed

    @classmethod
    def of(
        cls, core: BreakerCore, transitions: list[Transition], now: datetime, resync: bool = False
    ) -> Publication:
        return cls(
            core.provider,
            tuple((t, snapshot_of(core, now, t)) for t in transitions),
            snapshot_of(core, now, transitions[-1] if transitions else None),
            resync,
        )


class BreakerService:
    """Wiring of the breaker core to Faust, Redis, Kafka and Prometheus."""

    def __init__(
        self,
        settings: Settings,
        *,
        configs: BreakerConfigs | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.configs = configs or BreakerConfigs.load(settings.breaker_config_file)
        self._model_keys_json = json.dumps(self.configs.model_keys())  # for the gateway
        self.clock = clock
        self.app = create_app(settings, "breaker")
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.outcomes = settings.topic(OUTCOMES)
        self.controls = settings.topic(BREAKER_CONTROL)
        self.state_topic = self.app.topic(settings.topic(BREAKER_STATE), **raw)
        self.transitions_topic = self.app.topic(settings.topic(BREAKER_TRANSITIONS), **raw)
        self.table = BREAKER_STATE_TABLE.create(self.app)
        self.redis = redis_client.connect(settings, socket_timeout=2)
        # Per breaker: the version up to which every transition was sent, and its
        # last scheduled publication (each waits for the one before: ``_in_turn``).
        self._published: dict[str, int] = {}
        self._turns: dict[str, asyncio.Future[None]] = {}
        self._publishing: set[asyncio.Future[None]] = set()
        # Breakers of the partitions this worker owns, authoritative in process;
        # the table (changelog) gets every transition at once and the other
        # changes at the end of their batch (see ``_store``), each with the last
        # outcome offset it applied (``_applied``): a restart replays from the
        # committed offset, and an outcome at or below it is already counted.
        self._cores: dict[str, BreakerCore] = {}
        self._applied: dict[str, int] = {}
        self._touched: dict[str, int] = {}  # breaker -> partition, written at the batch end
        # Resends (same event_id) count once: every outcome that can still count is
        # within the longest window of the clock (``BreakerCore.record``).
        windows = [c.window_seconds for c in (self.configs.default, *self.configs.by_key.values())]
        self._resends = Resends(self.table, max(windows), FLOW)
        self.app.on_partitions_revoked.connect(self._forget)
        self._set_if_newer = self.redis.register_script(serving.SET_IF_NEWER)
        self._release = self.redis.register_script(serving.RELEASE_PERMIT)
        self.cursors = InputCursors(self.app, MemoryCursors([self.outcomes, self.controls]), FLOW)
        self.ordered = OrderedStep.for_app(
            self.app,
            settings,
            {
                self.outcomes: Route(LLMOutcome, self._on_outcome),
                self.controls: Route(BreakerControl, self._on_control),
            },
            cursors=self.cursors,
            flush=self._flush,
        )
        deliver_batches(self.app, self.ordered)
        self.app.timer(settings.breaker_tick_seconds)(self._tick)

    # --- batches -------------------------------------------------------------------
    async def _flush(self, topic: str, partition: int, applied: Sequence[Record]) -> None:
        """End of a batch: the breakers it changed, then its resend memory (before the cursor)."""
        if topic != self.outcomes:
            return
        for key, at in self._touched.items():
            self._write(self._cores[key], at)
        self._touched.clear()
        self._resends.flush(partition, applied[0].offset)
        self._resends.maintain(partition, self.clock().timestamp())
        metrics.EVENTS_CONSUMED.labels(flow=FLOW, topic=topic).inc(len(applied))

    def _load(self, key: str) -> BreakerCore:
        core = self._cores.get(key)
        if core is None:
            data = self.table.get(key)
            config = self.configs.config_for(key)
            core = BreakerCore.from_dict(data, config) if data else BreakerCore(key, config)
            self._cores[key] = core
            self._applied[key] = int(data.get(_OFFSET, -1)) if data else -1
        return core

    def _store(self, core: BreakerCore, changed_state: bool, partition: int) -> None:
        """Write to the changelog-backed table: a transition at once, else at the batch end."""
        if changed_state:
            self._write(core, partition)
        else:
            self._touched[core.provider] = partition

    def _write(self, core: BreakerCore, partition: int) -> None:
        value = {**core.to_dict(), _OFFSET: self._applied.get(core.provider, -1)}
        table_set(self.table, partition, core.provider, value)

    async def _forget(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these breakers now: reload from the table later.
        self._cores.clear()
        self._applied.clear()
        self._touched.clear()
        self._resends.forget()

    def _on_outcome(self, outcome: LLMOutcome, record: Record) -> None:
        """Apply one outcome once; publishing and permit release go to the background."""
        key = self.configs.key_for(outcome.provider, outcome.model)
        core = self._load(key)
        now = self.clock()
        window_start = now - timedelta(seconds=core.config.window_seconds)
        if outcome.event_time >= window_start and not self._resends.first_time(
            record.partition, outcome.event_id, outcome.event_time.timestamp(), now.timestamp()
        ):
            return None  # a resend (an older outcome changes nothing: ``BreakerCore.record``)
        if record.offset <= self._applied[key]:
            return None  # replayed after a restart: already in the restored breaker
        self._applied[key] = record.offset
        transitions = core.tick(now)
        half_open = core.version if core.state is BreakerState.half_open else None
        call = classify(outcome, core.config)
        transitions += core.record(call, now)
        self._store(core, bool(transitions), record.partition)
        # A successful probe frees its permit for the next probe of the same period,
        # unless it closed the breaker: freed then, the permit could be taken by a
        # caller that has not yet seen the closed snapshot (one probe too many).
        release = (
            outcome.is_probe
            and half_open is not None
            and call.verdict is Verdict.success
            and core.state is BreakerState.half_open
        )
        publish = bool(transitions) or core.version > self._published.get(core.provider, -1)
        if release or publish:
            # In the background, in order per breaker (``_in_turn``): the partition
            # goes on with the next events meanwhile, so one opening does not delay
            # every later event of the partition by its broker and Redis round trips.
            # The transition is in the table already; were the worker killed before
            # the send, the restored breaker sends it again (``_send``).
            publication = Publication.of(core, transitions, now) if publish else None
            holder = str(outcome.request_id) if release else None
            work = self._after_outcome(core, publication, holder, half_open)
            self._background(core.provider, work)
        return None

    def _background(self, provider: str, work: Coroutine[Any, Any, None]) -> None:
        task = self._in_turn(provider, work)
        self._publishing.add(task)
        task.add_done_callback(self._published_one)

    def _published_one(self, task: asyncio.Future[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Redis and broker errors are retried inside ``_send``: what reaches here
            # is a bug, and a worker must not run on without publishing (exit 1).
            log.error("publishing a breaker transition failed", exc_info=exc)
            crash = asyncio.ensure_future(self.app.crash(exc))
            self._publishing.add(crash)
            crash.add_done_callback(self._publishing.discard)

    async def _after_outcome(
        self,
        core: BreakerCore,
        publication: Publication | None,
        probe_holder: str | None,
        half_open: int | None,
    ) -> None:
        if publication is not None:
            await self._send(publication)
        if probe_holder is not None and half_open is not None:
            await self._release_permit(
                core.provider, half_open, probe_holder, core.config.half_open_probes
            )

    async def _on_control(self, control: BreakerControl, record: Record) -> None:
        # ``until`` is checked by the contract: a control breaking it is dead-lettered.
        key = control.provider
        core = self._load(key)
        now = self.clock()
        # The timer may have published a transition the stored breaker has not taken
        # yet (an open period that ended): take it first, so the control's version
        # comes after it instead of being dropped as already published.
        transitions = core.tick(now) + core.control(control.action, now, control.until)
        self._store(core, True, record.partition)
        await self._in_turn(key, self._send(Publication.of(core, transitions, now)))

    # --- timer -----------------------------------------------------------------------
    async def _tick(self) -> None:
        now = self.clock()
        await self._heartbeat(now)
        for key, data in list(self.table.items()):
            if not data or is_resend_key(key):
                continue
            cached = self._cores.get(key)
            base = cached.to_dict() if cached else data
            core = BreakerCore.from_dict(base, self.configs.config_for(key))
            # Derived only: the agent stores the same transition on the next event.
            transitions = core.tick(now)
            await self._in_turn(key, self._send(Publication.of(core, transitions, now, True)))

    # --- publishing --------------------------------------------------------------------
    def _in_turn(self, provider: str, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run ``work`` once every publication scheduled before it for ``provider`` is done.

        In the order of scheduling, which is the order the changes were applied:
        the agent, the controls and the timer all publish, and a later version
        sent first would count the earlier one as sent (``_published``) and drop it.
        """
        turn = asyncio.ensure_future(_after(self._turns.get(provider), work))
        self._turns[provider] = turn
        turn.add_done_callback(lambda done: self._end_turn(provider, done))
        return turn

    def _end_turn(self, provider: str, turn: asyncio.Future[None]) -> None:
        if self._turns.get(provider) is turn:
            del self._turns[provider]

    async def _send(self, publication: Publication) -> None:
        """Send a publication's transitions not sent yet, then show its view in Redis."""
        provider, view = publication.provider, publication.view
        last = self._published.get(provider, -1)
        snapshots = [s for t, s in publication.transitions if t.version > last]
        if not snapshots and view.version > max(last, 0):
            # Restored after a restart: the last transition may never have reached
            # the topics (killed before the send completed). Sending it again is
            # harmless: compaction and ClickHouse dedup by (provider, version).
            snapshots = [view]
        key = provider.encode()
        for snap in snapshots:
            value = encode(snap)
            # Acknowledged by the broker before Redis shows the state.
            sent = [
                await self.state_topic.send(key=key, value=value),
                await self.transitions_topic.send(key=key, value=value),
            ]
            await asyncio.gather(*sent)
        for t, _ in publication.transitions:
            if t.version > last:
                metrics.BREAKER_TRANSITIONS.labels(
                    provider=provider, from_state=t.from_state.value, to_state=t.to_state.value
                ).inc()
        metrics.CIRCUIT_BREAKER_STATE.labels(provider=provider).set(BREAKER_STATE_GAUGE[view.state])
        if publication.transitions or publication.resync or view.version > last:
            await self._to_redis(view)
        # Every version up to the view's is sent: each earlier one was applied, and
        # so scheduled, before this publication.
        self._published[provider] = max(last, view.version)

    async def _to_redis(self, snap: BreakerSnapshot) -> None:
        prefix = self.settings.topic_prefix
        try:
            applied = await self._set_if_newer(
                keys=[serving.breaker_key(prefix, snap.provider)],
                args=[snap.version, snap.model_dump_json(), serving.breaker_channel(prefix)],
            )
            if applied:
                metrics.EVENT_LAG_SECONDS.labels(flow=FLOW).observe(
                    max(0.0, (datetime.now(UTC) - snap.since).total_seconds())
                )
        except (aioredis.RedisError, OSError) as exc:
            # Redis is a rebuildable view: the timer re-applies snapshots when it is back.
            redis_client.log_failure(
                log, exc, f"snapshot v{snap.version} of {snap.provider} deferred"
            )

    async def _heartbeat(self, now: datetime) -> None:
        """Tell readers this worker is alive (their views go stale without it), and which
        models have breakers of their own."""
        prefix = self.settings.topic_prefix
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(
                    serving.heartbeat_key(prefix),
                    int(now.timestamp() * 1000),
                    px=serving.HEARTBEAT_TTL_MS,
                )
                pipe.set(
                    serving.model_breakers_key(prefix),
                    self._model_keys_json,
                    px=serving.HEARTBEAT_TTL_MS,
                )
                await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            log.debug("redis unavailable, heartbeat skipped: %s", exc)

    async def _release_permit(self, key: str, generation: int, holder: str, slots: int) -> None:
        try:
            await self._release(
                keys=serving.permit_keys(self.settings.topic_prefix, key, generation, slots),
                args=[holder],
            )
        except (aioredis.RedisError, OSError) as exc:
            redis_client.log_failure(log, exc, "probe permit left to expire")


async def _after(previous: asyncio.Future[None] | None, work: Coroutine[Any, Any, None]) -> None:
    """``work`` once ``previous`` is done (its failure is reported where it was scheduled)."""
    try:
        if previous is not None:
            await asyncio.wait([previous])
    except asyncio.CancelledError:
        work.close()  # stopped before its turn: never started, never to be awaited
        raise
    await work


def run_worker(settings: Settings) -> None:
    """Run the breaker agent until SIGINT/SIGTERM (Faust's worker owns the event loop)."""
    run(BreakerService(settings).app)


__all__ = ["BreakerService", "Publication", "run_worker", "snapshot_of"]
