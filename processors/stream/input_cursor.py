"""Input cursors: the next source offset an agent's state expects, per partition.

Faust delivers at least once, but not without holes. After a rebalance (a
restarted worker, for one) it resumes fetching a partition before seeking it
to the committed offset; records fetched around that seek can be dropped
while later ones are delivered, and its commit then moves past the dropped
ones (``min(acked) - committed > 1`` lets a one-offset hole through). Seen in
the SIGKILL test: a restarted worker skipped offsets 585-624 of one partition
and committed 1050.

So an agent asks its cursors about every event before applying it. An event is

- applied when its offset is the cursor (the offset of the next event the
  state expects; without one, where the partition starts for this app);
- a replay, skipped, when it is below the cursor;
- beyond a hole when it is above the cursor: it is not applied, and the
  consumer is sought back to the cursor (again every ``retry_seconds`` while
  the cursor does not move), so events are applied strictly in offset order.

Offsets are committed only up to the cursor (``commit_limit``, installed through
``llmpulse.processors.stream.faust_app.limit_commits``; nothing is committed for a partition
without a cursor). Where the cursor lives is the store's business:

- ``TableCursors``: in the agent's changelog-backed table (one key per source
  partition), written after the event's own updates to the same changelog
  partition, so a restored cursor never claims an event whose updates were
  lost. Exact state across crashes (the prompt rollups).
- ``MemoryCursors``: in the process, started at the group's committed offset
  for each assignment. Hole-free, in-order delivery while the worker runs; a
  restart replays from the committed offset as before (the breaker, whose
  window counts are coalesced anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, Protocol

import faust
from faust.types import TP

from llmpulse.processors.stream import metrics
from llmpulse.processors.stream.faust_app import limit_commits, table_set

log = logging.getLogger(__name__)
_PREFIX = "#cursor|"  # cannot collide with prompt names (they start alphanumeric)


class Step(Enum):
    APPLY = "apply"
    REPLAY = "replay"
    HOLE = "hole"


def cursor_key(partition: int) -> str:
    return f"{_PREFIX}{partition}"


def is_cursor_key(key: str) -> bool:
    return key.startswith(_PREFIX)


def step(cursor: int, offset: int) -> Step:
    """What to do with the event at ``offset`` when the state expects ``cursor`` next."""
    if offset == cursor:
        return Step.APPLY
    return Step.REPLAY if offset < cursor else Step.HOLE


class CursorStore(Protocol):
    topics: frozenset[str]

    def get(self, tp: TP) -> int | None: ...

    def set(self, tp: TP, cursor: int) -> None: ...

    def forget(self, tps: Iterable[TP]) -> None: ...

    async def start(self, consumer: Any, tp: TP) -> int:
        """Where ``tp`` starts when it has no cursor."""
        ...


class TableCursors:
    """Cursors kept in each source topic's changelog-backed table."""

    def __init__(self, tables: Mapping[str, Any]) -> None:
        self.tables = tables
        self.topics = frozenset(tables)

    def get(self, tp: TP) -> int | None:
        value = self.tables[tp.topic].get(cursor_key(tp.partition))
        return int(value) if value is not None else None

    def set(self, tp: TP, cursor: int) -> None:
        table_set(self.tables[tp.topic], tp.partition, cursor_key(tp.partition), cursor)

    def forget(self, tps: Iterable[TP]) -> None:
        """Nothing: a table is restored from its changelog on assignment."""

    async def start(self, consumer: Any, tp: TP) -> int:
        # No cursor means nothing was ever committed (commits stop at the cursor).
        return await _earliest(consumer, tp)


class MemoryCursors:
    """Cursors kept in the process, for the current assignment only."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self._cursors: dict[TP, int] = {}

    def get(self, tp: TP) -> int | None:
        return self._cursors.get(tp)

    def set(self, tp: TP, cursor: int) -> None:
        self._cursors[tp] = cursor

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._cursors.pop(tp, None)

    async def start(self, consumer: Any, tp: TP) -> int:
        committed = await consumer.committed(tp)
        return int(committed) if committed is not None else await _earliest(consumer, tp)


async def _earliest(consumer: Any, tp: TP) -> int:
    """The first offset ``tp`` still holds (retention may have deleted older ones)."""
    return int((await consumer.earliest_offsets(tp)).get(tp) or 0)


class InputCursors:
    """The cursors of an app's source topics: classify events, repair holes, limit commits."""

    def __init__(
        self,
        app: faust.App,
        store: CursorStore,
        flow: str,
        *,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.store = store
        self.flow = flow
        self.retry_seconds = retry_seconds
        self.clock = clock
        # Partition with a hole -> (cursor it waits for, when it last sought back).
        self._holes: dict[TP, tuple[int, float]] = {}
        # Partition whose cursor points below its earliest offset -> that offset.
        self._expired: dict[TP, int] = {}
        limit_commits(app, self.commit_limit)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.timer(retry_seconds)(self.repair_holes)

    async def step(self, topic: str, partition: int, offset: int) -> Step:
        """Classify an event; on a hole, seek back to the cursor (at most every retry)."""
        tp = TP(topic, partition)
        cursor = self.store.get(tp)
        if cursor is None:
            cursor = await self.store.start(self.app.consumer, tp)
            self.store.set(tp, cursor)
        if cursor < self._expired.get(tp, -1):
            cursor = self._expired.pop(tp)
            self.store.set(tp, cursor)
        verdict = step(cursor, offset)
        if verdict is Step.HOLE:
            waiting = self._holes.get(tp)
            if waiting is None or waiting[0] != cursor:
                metrics.SOURCE_HOLES.labels(flow=self.flow, topic=topic).inc()
                log.warning(
                    "%s[%d]: offset %d arrived before %d; re-reading from %d",
                    topic,
                    partition,
                    offset,
                    cursor,
                    cursor,
                )
                await self._seek(tp, cursor)
        elif verdict is Step.APPLY:
            self._holes.pop(tp, None)
        return verdict

    def advance(self, topic: str, partition: int, offset: int) -> None:
        """Record that the event at ``offset`` is applied (after its own state writes)."""
        self.store.set(TP(topic, partition), offset + 1)

    def position(self, tp: TP) -> int | None:
        """The offset that may be committed for ``tp``: its cursor (None: none yet)."""
        return self.store.get(tp) if tp.topic in self.store.topics else None

    def commit_limit(self, tp: TP, offset: int) -> int | None:
        """The offset that may be committed for ``tp`` (None: commit nothing)."""
        if tp.topic not in self.store.topics:
            return offset
        cursor = self.store.get(tp)
        return None if cursor is None else min(offset, cursor)

    async def _on_revoked(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        # After the revocation's commit: these partitions may be another worker's now.
        revoked: list[TP] = list(args[0]) if args else []
        self.store.forget(revoked)
        for tp in revoked:
            self._holes.pop(tp, None)
            self._expired.pop(tp, None)

    async def repair_holes(self) -> None:
        """Seek back again where a hole has not closed within ``retry_seconds``.

        A hole below the partition's earliest offset cannot close: retention
        deleted those records before they were applied. That loss is logged and
        counted (``llmpulse_source_expired_total``) and the cursor moves to the
        earliest offset at the partition's next event, instead of seeking forever.
        """
        for tp, (cursor, sought_at) in list(self._holes.items()):
            if self.store.get(tp) not in (None, cursor):
                del self._holes[tp]
            elif self.clock() - sought_at >= self.retry_seconds:
                earliest = await _earliest(self.app.consumer, tp)
                if earliest > cursor and tp not in self._expired:
                    log.error(
                        "%s[%d]: offsets %d-%d were deleted by retention before they were "
                        "applied; continuing at %d",
                        tp.topic,
                        tp.partition,
                        cursor,
                        earliest - 1,
                        earliest,
                    )
                    metrics.SOURCE_EXPIRED.labels(flow=self.flow, topic=tp.topic).inc(
                        earliest - cursor
                    )
                    self._expired[tp] = earliest
                await self._seek(tp, max(cursor, earliest))

    async def _seek(self, tp: TP, cursor: int) -> None:
        self._holes[tp] = (cursor, self.clock())
        try:
            await self.app.consumer.seek(tp, cursor)
        except Exception as exc:  # e.g. revoked meanwhile: retried, or forgotten on revoke
            log.warning(
                "seek %s[%d] to %d failed (retried): %s", tp.topic, tp.partition, cursor, exc
            )


__all__ = [
    "CursorStore",
    "InputCursors",
    "MemoryCursors",
    "Step",
    "TableCursors",
    "cursor_key",
    "is_cursor_key",
    "step",
]
