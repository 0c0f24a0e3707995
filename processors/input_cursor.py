"""Input cursors: the next source offset a table's state expects, kept in the table.

Faust delivers at least once, but not without holes. After a rebalance (a
restarted worker, for one) it resumes fetching a partition before seeking it
to the committed offset; records fetched around that seek can be dropped
while later ones are delivered, and its commit then moves past the dropped
ones (``min(acked) - committed > 1`` lets a one-offset hole through). Seen in
the SIGKILL test: a restarted worker skipped offsets 585-624 of one partition
and committed 1050.

So every table that aggregates a source topic also stores, per source
partition, a cursor: the offset of the next event it will apply. It is
written after the event's own updates, to the same changelog partition, so a
restored cursor never claims an event whose updates were lost. An event is

- applied when its offset is the cursor (or, with no cursor yet, the
  partition's earliest offset: nothing was ever committed for it, see below);
- a replay, skipped, when it is below the cursor;
- beyond a hole when it is above the cursor: it is not applied, and the
  consumer is sought back to the cursor (again every ``retry_seconds`` while
  the cursor does not move), so events are applied strictly in offset order.

Offsets are committed only up to the cursor (``commit_limit``; a partition
without a cursor is not committed), and the changelog barrier in
``processors.faust_app`` makes the cursor durable before such a commit. A
restarted worker therefore resumes at or below its restored cursor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import faust
from faust.types import TP

from processors import metrics

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


class InputCursors:
    """Cursors of the source topics of one Faust app, one table per topic."""

    def __init__(
        self,
        app: faust.App,
        tables: Mapping[str, Any],
        flow: str,
        *,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.tables = tables
        self.flow = flow
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._earliest: dict[TP, int] = {}
        # Partition with a hole -> (cursor it waits for, when it last sought back).
        self._holes: dict[TP, tuple[int, float]] = {}

    def cursor(self, topic: str, partition: int) -> int | None:
        value = self.tables[topic].get(cursor_key(partition))
        return int(value) if value is not None else None

    async def step(self, topic: str, partition: int, offset: int) -> Step:
        """Classify an event; on a hole, seek back to the cursor (at most every retry)."""
        tp = TP(topic, partition)
        cursor = self.cursor(topic, partition)
        if cursor is None:
            cursor = await self._earliest_offset(tp)
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
        """Record that the event at ``offset`` is applied (after its own table writes)."""
        self.tables[topic][cursor_key(partition)] = offset + 1

    def commit_limit(self, tp: TP, offset: int) -> int | None:
        """The offset that may be committed for ``tp`` (None: commit nothing)."""
        if tp.topic not in self.tables:
            return offset
        cursor = self.cursor(tp.topic, tp.partition)
        return None if cursor is None else min(offset, cursor)

    async def repair_holes(self) -> None:
        """Seek back again where a hole has not closed within ``retry_seconds``."""
        for tp, (cursor, sought_at) in list(self._holes.items()):
            if self.cursor(tp.topic, tp.partition) not in (None, cursor):
                del self._holes[tp]
            elif self.clock() - sought_at >= self.retry_seconds:
                await self._seek(tp, cursor)

    async def _seek(self, tp: TP, cursor: int) -> None:
        self._holes[tp] = (cursor, self.clock())
        await self.app.consumer.seek(tp, cursor)

    async def _earliest_offset(self, tp: TP) -> int:
        if tp not in self._earliest:
            earliest = await self.app.consumer.earliest_offsets(tp)
            self._earliest[tp] = int(earliest.get(tp) or 0)
        return self._earliest[tp]


__all__ = ["InputCursors", "Step", "cursor_key", "is_cursor_key", "step"]
