"""Identical resends applied once by a stateful agent, through restarts.

Each source partition's ``SeenIds`` (``llmpulse.core.dedup``) lives in memory
and is persisted in the agent's own changelog-backed table, on the source
partition's changelog partition, so a restarted worker (or the next owner of
the partition) rebuilds exactly what was applied:

- ``flush`` writes the keys a batch recorded, one value per event-time minute
  (``#resends|<partition>|<minute>|<first offset of the batch>``), after the
  batch's state and before its input cursor. Writes to one changelog
  partition are ordered, so a restored table never remembers an id whose
  state update was lost; it may forget ids whose update was kept, which the
  agent's own replay check covers (the partials' offsets, the breaker's
  watermark).
- ``maintain`` (each sweep) rewrites a past minute as one value once
  (``#resends|<partition>|<minute>|all``), again only when 16 values of late
  events piled up on it, and deletes the minutes beyond the horizon.

Why persisted rather than rebuilt by re-reading the partition on assignment:
the horizon (an hour and more for the rollups) would mean re-reading and
decoding an hour of events before the first new one is applied, and a late
event's first copy can lie anywhere in the log. The table costs the changelog
about 11 bytes per event and keeps the restore to the agent's own changelog.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

from llmpulse.core.dedup import BUCKET_SECONDS, Seen, SeenIds, id_key, pack, unpack
from llmpulse.processors.stream import metrics
from llmpulse.processors.stream.faust_app import table_delete, table_set

_PREFIX = "#resends|"  # cannot collide with prompt names or breaker keys (alphanumeric first)
_ALL = "all"
_CONSOLIDATE_AT = 16  # values of one past minute that are rewritten as one


def is_resend_key(key: str) -> bool:
    """Whether a table key holds resend memory (not the agent's own state)."""
    return key.startswith(_PREFIX)


def _key(partition: int, minute: int, tag: int | str) -> str:
    return f"{_PREFIX}{partition}|{minute}|{tag}"


class Resends:
    """The resend memory of one source topic's partitions, kept in ``table``."""

    def __init__(self, table: Any, horizon_seconds: float, flow: str) -> None:
        self.table = table
        self.horizon_seconds = horizon_seconds
        self._seen: dict[int, SeenIds] = {}
        # partition -> minute -> table keys holding its ids (what a drop deletes).
        self._stored: dict[int, dict[int, list[str]]] = {}
        self._unchecked = metrics.DEDUP_HORIZON_EXCEEDED.labels(flow=flow)

    def first_time(self, partition: int, event_id: UUID, event_time: float, now: float) -> bool:
        """Whether the event is to be applied: not a resend of one applied within the horizon.

        An event beyond the horizon cannot be checked: it is applied and counted
        (``llmpulse_dedup_horizon_exceeded_total``).
        """
        seen = self._seen.get(partition)
        if seen is None:
            seen = self._restore(partition)
        verdict = seen.check(id_key(event_id), event_time, now)
        if verdict is Seen.UNCHECKED:
            self._unchecked.inc()
        return verdict is not Seen.DUPLICATE

    def flush(self, partition: int, first_offset: int) -> None:
        """Write the keys recorded since the last flush (after the state, before the cursor)."""
        seen = self._seen.get(partition)
        if seen is None:
            return
        stored = self._stored[partition]
        for minute, keys in seen.take_new().items():
            key = _key(partition, minute, first_offset)
            held = self.table.get(key)  # a replayed batch starting at the same offset
            table_set(self.table, partition, key, pack([*keys, *(unpack(held) if held else ())]))
            at = stored.setdefault(minute, [])
            if key not in at:
                at.append(key)

    def maintain(self, partition: int, now: float) -> None:
        """Compact past minutes (in memory and in the table); delete those past the horizon."""
        seen = self._seen.get(partition)
        if seen is None:
            return
        _, dropped = seen.seal(now)
        stored = self._stored[partition]
        for minute in dropped:
            for key in stored.pop(minute, ()):
                table_delete(self.table, partition, key)
        for minute, keys in stored.items():
            whole = _key(partition, minute, _ALL)
            past = minute + 2 * BUCKET_SECONDS <= now
            if past and (whole not in keys or len(keys) >= _CONSOLIDATE_AT):
                table_set(self.table, partition, whole, pack(seen.keys(minute)))
                for key in keys:
                    if key != whole:
                        table_delete(self.table, partition, key)
                stored[minute] = [whole]

    def forget(self) -> None:
        """Revoked partitions may be another worker's now: restore from the table later."""
        self._seen.clear()
        self._stored.clear()

    def held(self) -> int:
        """Keys held in memory over every partition."""
        return sum(len(seen) for seen in self._seen.values())

    def _restore(self, partition: int) -> SeenIds:
        seen = self._seen[partition] = SeenIds(self.horizon_seconds)
        stored = self._stored[partition] = {}
        for key, minute, value in self._values(partition):
            seen.restore(minute, unpack(value))
            stored.setdefault(minute, []).append(key)
        return seen

    def _values(self, partition: int) -> Iterator[tuple[str, int, str]]:
        prefix = f"{_PREFIX}{partition}|"
        for key, value in list(self.table.items()):
            if value and key.startswith(prefix):
                yield key, int(key.split("|")[2]), value


__all__ = ["Resends", "is_resend_key"]
