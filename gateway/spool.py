"""The emitter's disk spool: append-only JSON-lines segments with acknowledged cursors.

Events Kafka could not take are appended here (one JSON object per line:
topic, key, value, event_id) and replayed later. A segment's ``.acked`` cursor
records how far replay got, so a restart continues after what Kafka already
acknowledged; a partially written last line (a crash mid-write) is skipped.
One process owns a spool directory at a time (``flock``). Spooled events hold
user and organization data: the directory is 0700 and its files 0600, whatever
the process umask.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import IO, NamedTuple

from llmpulse.gateway.exceptions import SpoolLocked

__all__ = ["SegmentRead", "Spool", "SpoolLocked", "SpoolRecord", "read_segment"]

log = logging.getLogger(__name__)

_SEGMENT_SUFFIX = ".jsonl"
_CURSOR_SUFFIX = ".acked"
_LOCK_NAME = ".lock"
_FOLDER_MODE = 0o700
_FILE_MODE = 0o600


def _owner_only(path: str, flags: int) -> int:
    """``open()`` opener: a spool file is 0600 from its creation on (a umask only narrows)."""
    fd = os.open(path, flags, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


class SpoolRecord(NamedTuple):
    """One event ready for Kafka: qualified topic, key and value bytes, event id."""

    topic: str
    key: bytes
    value: bytes
    event_id: str

    def to_line(self) -> bytes:
        """The spool line: ``{"topic","key","value","event_id"}`` JSON and a newline."""
        doc = {
            "topic": self.topic,
            "key": self.key.decode("utf-8"),
            "value": self.value.decode("utf-8"),
            "event_id": self.event_id,
        }
        # json.dumps escapes every newline inside strings, so one record is one line.
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> SpoolRecord | None:
        """The record on ``line``, or None when the line is not a valid spool record."""
        try:
            doc = json.loads(line)
        except ValueError:  # includes UnicodeDecodeError
            return None
        if not isinstance(doc, dict):
            return None
        topic, key, value, event_id = (doc.get(k) for k in ("topic", "key", "value", "event_id"))
        if not all(isinstance(v, str) and v for v in (topic, value, event_id)):
            return None
        if not isinstance(key, str):
            return None
        return cls(str(topic), key.encode("utf-8"), str(value).encode("utf-8"), str(event_id))


# --------------------------------------------------------------------------- spool


@dataclass(frozen=True)
class SegmentRead:
    """The records of one spool segment from a byte offset on.

    ``ends[i]`` is the byte offset just after ``records[i]``'s line, so a replay
    can advance the segment's cursor to exactly what was acknowledged. ``end``
    is the offset after the last complete line. ``skipped`` counts complete
    lines that were not valid records; ``truncated`` says the file ends with a
    partial line (a crash in the middle of a write), which is not a record.
    """

    records: list[SpoolRecord]
    ends: list[int]
    end: int
    skipped: int = 0
    truncated: bool = False


def read_segment(path: Path, offset: int = 0) -> SegmentRead:
    """Read the records of the segment ``path`` from byte ``offset`` (no side effects).

    Never raises for bad content: invalid lines are skipped and a partial last
    line is ignored, each with a warning naming the segment and byte offset
    (never the content). Safe to call from a worker thread.
    """
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    records: list[SpoolRecord] = []
    ends: list[int] = []
    skipped = 0
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        record = SpoolRecord.from_line(data[pos:nl])
        if record is None:
            skipped += 1
            log.warning("spool %s: skipping invalid line at byte %d", path.name, offset + pos)
        else:
            records.append(record)
            ends.append(offset + nl + 1)
        pos = nl + 1
    truncated = pos < len(data)
    if truncated:
        log.warning(
            "spool %s: skipping a partially written last line at byte %d (%d bytes)",
            path.name,
            offset + pos,
            len(data) - pos,
        )
    return SegmentRead(records, ends, offset + pos, skipped, truncated)


def _count_lines(path: Path, offset: int) -> int:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().count(b"\n")


@dataclass
class _Active:
    path: Path
    fh: FileIO
    size: int = 0
    lines: int = 0


class Spool:
    """Append-only JSON-lines segments in one directory, owned by one process.

    Segments are named ``<sequence>.jsonl`` and replayed in sequence order. A
    segment is written only by the spool that created it and is rotated after
    ``max_segment_bytes`` or ``max_segment_records``; every :meth:`append` is
    flushed to the operating system, and a segment is ``fsync``-ed when it is
    closed (rotation, :meth:`seal`, :meth:`close`). Segments found at start-up
    (from an earlier process) are never appended to. Replay progress is a byte
    offset per segment in ``<sequence>.acked``, replaced atomically and synced,
    so an acknowledged prefix is not replayed again after a restart.

    The directory is locked (``flock``) for the spool's lifetime: a second spool
    on it raises :class:`SpoolLocked` instead of replaying the same events twice.
    Not thread-safe; use it from one thread (the emitter's event loop).
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_segment_bytes: int = 4 * 1024 * 1024,
        max_segment_records: int = 10_000,
    ) -> None:
        self.directory = Path(directory)
        self._max_bytes = max_segment_bytes
        self._max_records = max_segment_records
        self.directory.mkdir(parents=True, exist_ok=True, mode=_FOLDER_MODE)
        if self.directory.stat().st_uid == os.geteuid():
            self.directory.chmod(_FOLDER_MODE)  # whatever the umask; a spool of an older version
        lock = _owner_only(str(self.directory / _LOCK_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._lock: IO[bytes] | None = os.fdopen(lock, "ab")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise SpoolLocked(
                f"spool directory {self.directory} is in use by another emitter"
            ) from None
        self._active: _Active | None = None
        # Lines not yet acknowledged per segment (complete lines after the cursor).
        self._counts: dict[Path, int] = {}
        self._forgotten: dict[Path, int] = {}
        self._next_seq = 1
        self._scan()

    def _scan(self) -> None:
        for leftover in self.directory.glob(f"*{_CURSOR_SUFFIX}.tmp"):
            leftover.unlink(missing_ok=True)
        for path in sorted(self.directory.glob(f"*{_SEGMENT_SUFFIX}")):
            if not path.stem.isdigit():
                log.warning("spool %s: ignoring unexpected file %s", self.directory, path.name)
                continue
            self._next_seq = max(self._next_seq, int(path.stem) + 1)
            self._counts[path] = _count_lines(path, self.cursor(path))
        for cursor in self.directory.glob(f"*{_CURSOR_SUFFIX}"):
            # A crash between removing a segment and its cursor leaves the cursor.
            if not cursor.with_suffix(_SEGMENT_SUFFIX).exists():
                cursor.unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------

    def append(self, records: Sequence[SpoolRecord]) -> int:
        """Append ``records`` to the current segment and hand them to the OS.

        Returns how many of ``records`` are on disk: all of them, or when the
        disk refuses a write (full, read only; logged at ERROR level) the ones
        before it, whole lines only, and the rest are not on disk at all. A
        partially written line is cut off and a segment left without a line is
        removed, so the disk holds exactly the records counted in
        :meth:`pending`; the segment is closed, so a later append never
        continues after a failed write.
        """
        if self._lock is None:
            raise RuntimeError("spool is closed")
        lines = [r.to_line() for r in records]
        i = 0
        try:
            while i < len(lines):
                active = self._active or self._open_segment()
                # As many lines as the segment's record and byte limits allow (at least one).
                chunk: list[bytes] = []
                size = active.size
                for line in lines[i : i + self._max_records - active.lines]:
                    if (chunk or active.lines) and size + len(line) > self._max_bytes:
                        break
                    chunk.append(line)
                    size += len(line)
                if chunk:
                    written = self._write(active, chunk)
                    i += written
                    if written < len(chunk):
                        return i
                if not chunk or active.size >= self._max_bytes or active.lines >= self._max_records:
                    self.seal()
        except OSError as exc:
            # Opening or sealing a segment failed: the records before are on disk
            # (counted by _write), a failed rotation does not take them back.
            log.error("spool %s: could not open or seal a segment: %s", self.directory, exc)
        return i

    def _write(self, active: _Active, lines: list[bytes]) -> int:
        """Write ``lines`` to ``active``; returns how many are on disk (fewer: it failed)."""
        data = b"".join(lines)
        done = 0
        try:
            while done < len(data):
                # Unbuffered: a short write tells exactly how many bytes the disk took.
                done += active.fh.write(memoryview(data)[done:])
        except OSError as exc:
            whole = data.count(b"\n", 0, done)
            log.error(
                "spool %s: the disk refused a write (%s); %d of its %d lines kept",
                active.path.name,
                exc,
                whole,
                len(lines),
            )
            self._abandon(active, whole, sum(map(len, lines[:whole])))
            return whole
        active.size += len(data)
        active.lines += len(lines)
        self._counts[active.path] += len(lines)
        return len(lines)

    def _abandon(self, active: _Active, lines: int, size: int) -> None:
        """Close ``active`` after a failed write that left ``lines`` whole lines (``size`` bytes).

        Never written again (the next line would continue a partial one): the
        partial line is cut off, and a segment with no line at all is removed.
        """
        self._active = None
        active.lines += lines
        active.size += size
        self._counts[active.path] += lines
        try:
            active.fh.truncate(active.size)
            os.fsync(active.fh.fileno())
        except OSError as exc:
            # Replay skips a partial last line anyway (read_segment); only log it.
            log.warning(
                "spool %s: could not cut off a partial line or sync: %s", active.path.name, exc
            )
        with contextlib.suppress(OSError):
            active.fh.close()
        if not active.lines:
            self._counts.pop(active.path, None)
            with contextlib.suppress(OSError):
                active.path.unlink()

    def _open_segment(self) -> _Active:
        path = self.directory / f"{self._next_seq:012d}{_SEGMENT_SUFFIX}"
        self._next_seq += 1
        # "xb": a segment name is never reused, even if an old file were left over.
        self._active = _Active(path, FileIO(path, "xb", opener=_owner_only))
        self._counts[path] = 0
        return self._active

    def _close_active(self, *, sync: bool) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        try:
            active.fh.flush()
            if sync:
                os.fsync(active.fh.fileno())
        finally:
            active.fh.close()
        if not active.lines and not self._counts.get(active.path):
            active.path.unlink(missing_ok=True)
            self._counts.pop(active.path, None)

    def seal(self) -> None:
        """Close (and fsync) the current segment so it can be replayed."""
        self._close_active(sync=True)

    # -- replay bookkeeping ------------------------------------------------------

    def segments(self) -> list[Path]:
        """Closed segments that still hold records, oldest first."""
        active = self._active.path if self._active is not None else None
        return sorted(p for p in self._counts if p != active)

    def cursor(self, segment: Path) -> int:
        """Byte offset up to which ``segment`` has been acknowledged (0 if none)."""
        try:
            return int(segment.with_suffix(_CURSOR_SUFFIX).read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("spool %s: unreadable cursor, replaying from the start", segment.name)
            return 0

    def advance(self, segment: Path, offset: int, records: int) -> None:
        """Record that ``segment`` is acknowledged up to ``offset`` (``records`` lines)."""
        path = segment.with_suffix(_CURSOR_SUFFIX)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", opener=_owner_only) as fh:
            fh.write(str(offset))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.forget(segment, records)

    def forget(self, segment: Path, lines: int) -> None:
        """Stop counting the ``lines`` invalid lines found in ``segment`` as pending.

        Idempotent: a replay that is retried reads the same invalid lines again,
        so only the excess over what was already forgotten is subtracted.
        """
        done = self._forgotten.get(segment, 0)
        if segment in self._counts and lines > done:
            self._counts[segment] = max(0, self._counts[segment] - (lines - done))
            self._forgotten[segment] = lines

    def remove(self, segment: Path) -> None:
        """Delete a fully replayed segment and its cursor."""
        segment.unlink(missing_ok=True)
        segment.with_suffix(_CURSOR_SUFFIX).unlink(missing_ok=True)
        self._counts.pop(segment, None)
        self._forgotten.pop(segment, None)

    def pending(self) -> int:
        """Records in the spool not yet acknowledged by Kafka."""
        return sum(self._counts.values())

    def close(self) -> None:
        """Seal the current segment (fsync) and release the directory lock."""
        if self._lock is None:
            return
        try:
            self.seal()
        finally:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
