"""Identical resends counted once: the event ids one source partition applied, by minute.

An at-least-once producer resends an event with the same ``event_id`` and the
same payload, so the same event time: a resend is looked up only in the
bucket of its event-time minute. The stateful agents (prompt rollups,
breaker) ask ``SeenIds.check`` before an event changes any state.

Exact within a horizon: every bucket whose minute still overlaps
``[now - horizon, ...)`` is kept, so a resend whose event time is within
``horizon`` seconds of the clock is always recognised. Older buckets are
dropped (memory is bounded by the events of ``horizon`` plus a minute); an
event older than that cannot be checked (``Seen.UNCHECKED``): the caller
applies it and counts it.

Ids are kept as 64-bit keys (``id_key``): the two halves of the 128-bit id
XORed. For random (v4) ids, which every llmpulse producer makes, every key
bit is random (62 of them for v7 ids), and two ids are only compared within
one partition's minute, so the chance of a false duplicate in a minute of
``n`` ids is about ``n**2 / 2**65``: 1e-8 for
600,000 ids (10,000 events per second into one partition, one miscount in
about 200 years of it), for half the memory of the full ids.

A minute being written is a ``set``; once it is past (``seal``) it becomes a
sorted ``array('Q')`` (8 bytes an id, binary search); late events that land
in a sealed minute go to a small set again, merged by a later ``seal`` once it
holds an eighth as many keys (so merging costs O(1) per key).
``take_new`` hands the ids recorded since its last call to the caller, which
persists them (``pack`` / ``unpack``) so a restarted worker rebuilds the same
memory (``restore``).
"""

from __future__ import annotations

import base64
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from enum import Enum
from uuid import UUID

BUCKET_SECONDS = 60
_MASK = (1 << 64) - 1


class Seen(Enum):
    """What ``SeenIds.check`` found."""

    NEW = "new"  # first time within the horizon: apply it (now recorded)
    DUPLICATE = "duplicate"  # a resend of an applied event: skip it
    UNCHECKED = "unchecked"  # older than the horizon: cannot tell, apply and count it


def id_key(event_id: UUID) -> int:
    """The 64-bit key of an event id (its two halves XORed)."""
    n = event_id.int
    return (n >> 64) ^ (n & _MASK)


def minute_of(epoch_seconds: float) -> int:
    """The bucket (start of the event-time minute, epoch seconds) of a time."""
    return int(epoch_seconds // BUCKET_SECONDS) * BUCKET_SECONDS


def pack(keys: Iterable[int]) -> str:
    """Keys as text for a table value (sorted little-endian 64-bit words, base64)."""
    words = array("Q", sorted(keys))
    if sys.byteorder != "little":
        words.byteswap()
    return base64.b64encode(words.tobytes()).decode("ascii")


def unpack(text: str) -> array[int]:
    """The sorted keys ``pack`` wrote."""
    words = array("Q")
    words.frombytes(base64.b64decode(text))
    if sys.byteorder != "little":
        words.byteswap()
    return words


class SeenIds:
    """Keys of the events one source partition applied within ``horizon_seconds``."""

    def __init__(self, horizon_seconds: float) -> None:
        if horizon_seconds <= 0:
            raise ValueError("horizon_seconds must be > 0")
        self.horizon_seconds = horizon_seconds
        self._open: dict[int, set[int]] = {}  # minute -> keys not yet sealed
        self._sealed: dict[int, array[int]] = {}  # minute -> sorted keys
        self._new: dict[int, list[int]] = {}  # minute -> keys since ``take_new``
        self._floor = -(2**62)  # minutes below it are dropped

    def check(self, key: int, event_time: float, now: float) -> Seen:
        """Record ``key`` of an event at ``event_time`` unless already seen (``now``: clock)."""
        minute = int(event_time // BUCKET_SECONDS) * BUCKET_SECONDS
        if minute < self._floor or minute + BUCKET_SECONDS <= now - self.horizon_seconds:
            return Seen.UNCHECKED
        keys = self._open.get(minute)
        if keys is not None and key in keys:
            return Seen.DUPLICATE
        sealed = self._sealed.get(minute)
        if sealed is not None:
            i = bisect_left(sealed, key)
            if i < len(sealed) and sealed[i] == key:
                return Seen.DUPLICATE
        if keys is None:
            keys = self._open[minute] = set()
        keys.add(key)
        new = self._new.get(minute)
        if new is None:
            self._new[minute] = [key]
        else:
            new.append(key)
        return Seen.NEW

    def take_new(self) -> dict[int, list[int]]:
        """Keys recorded since the last call, by minute (to persist them)."""
        new, self._new = self._new, {}
        return new

    def restore(self, minute: int, keys: Iterable[int]) -> None:
        """Add persisted keys of ``minute`` (a restart); they are not handed out as new."""
        if minute >= self._floor:
            self._open.setdefault(minute, set()).update(keys)

    def seal(self, now: float) -> tuple[list[int], list[int]]:
        """Compact past minutes, drop those beyond the horizon: (sealed, dropped) minutes.

        A minute is sealed once it ended a full bucket before ``now`` (events of
        the current minute keep arriving); it is dropped once it ends at or
        before ``now - horizon_seconds``.
        """
        self._floor = max(self._floor, minute_of(now - self.horizon_seconds))
        dropped = sorted(m for m in {*self._open, *self._sealed} if m < self._floor)
        for minute in dropped:
            self._open.pop(minute, None)
            self._sealed.pop(minute, None)
            self._new.pop(minute, None)
        sealed = []
        for minute in [m for m in self._open if m + 2 * BUCKET_SECONDS <= now]:
            keys = self._open[minute]
            old = self._sealed.get(minute)
            if old is not None and len(keys) * 8 < len(old):
                continue  # a few late keys: merged once they are an eighth (amortized O(1))
            del self._open[minute]
            self._sealed[minute] = array("Q", sorted(keys if old is None else keys.union(old)))
            sealed.append(minute)
        return sorted(sealed), dropped

    def keys(self, minute: int) -> set[int]:
        """Every key of ``minute`` (to persist a sealed minute in one piece)."""
        return set(self._sealed.get(minute, ())) | self._open.get(minute, set())

    def __len__(self) -> int:
        """Keys held (sealed and open)."""
        return sum(map(len, self._sealed.values())) + sum(map(len, self._open.values()))


__all__ = ["BUCKET_SECONDS", "Seen", "SeenIds", "id_key", "minute_of", "pack", "unpack"]
