"""The emitter's spool on a disk that refuses writes: counters match what is on disk.

The refusal is the kernel's own: the emitter runs in a child process whose
``RLIMIT_FSIZE`` (``resource.setrlimit``, no root needed) caps every file it
writes, with ``SIGXFSZ`` ignored so that a write past the cap is cut short and
the next one fails with ``EFBIG``, as a full disk cuts a write short and then
fails with ``ENOSPC``. The cap applies per file, so each new segment takes a
few lines again; a cap of 0 is a disk where nothing fits. A tmpfs of a few
kilobytes would be the literal full disk but needs root (or a user namespace,
often disabled) to mount; a fault injected into Python's file objects would not
exercise the real short write.

Checked on the disk afterwards: an event counts as spooled iff its line is in a
segment (emitter attribute and Prometheus counter), as dropped iff not; no
segment is empty or ends with a partial line; a new spool on the directory
finds exactly the spooled events pending.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmpulse.gateway.spool import Spool, read_segment

EVENTS = 300
# The first EVENTS - QUEUE events spill one per write, then close() spools the
# queue as one batch. With 2.5 lines per file, every third spill fails (261 =
# 87 x 3), so the batch starts a fresh segment and only its first two lines fit.
QUEUE = 39

_CHILD = """
import asyncio, json, resource, signal, sys, uuid
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.schemas.events import LLMRequest, Operation

spool_dir = Path(sys.argv[1])
cap, events, queue = (int(a) for a in sys.argv[2:5])


async def main() -> dict[str, float]:
    emitter = EventEmitter(
        GatewayConfig(
            bootstrap_servers="127.0.0.1:1", spool_dir=spool_dir, emit_queue_size=queue
        ),
        max_segment_bytes=1 << 20,
    )
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cap, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    for i in range(events):  # never started: the queue fills, then every emit spills
        emitter.emit(
            LLMRequest(
                event_id=uuid.UUID(int=i),
                event_time=datetime(2026, 12, 1, tzinfo=UTC),
                request_id=uuid.UUID(int=i),
                org_id="org-1",
                operation=Operation.completion,
                provider="openai",
                model="model-a",
            )
        )
    await emitter.close()
    total = lambda name: sum(
        s.value for m in REGISTRY.collect() for s in m.samples if s.name == name
    )
    return {
        "emitted": emitter.emitted,
        "spooled": emitter.spooled,
        "dropped": emitter.dropped,
        "spooled_metric": total("llmpulse_gateway_spooled_events_total"),
        "dropped_metric": total("llmpulse_gateway_dropped_events_total"),
    }


print(json.dumps(asyncio.run(main())))
"""


def _run_child(spool_dir: Path, cap: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(spool_dir), str(cap), str(EVENTS), str(QUEUE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _on_disk(spool_dir: Path) -> tuple[list[str], list[str]]:
    """Event ids of the spooled lines, and the segments that are empty or end mid-line."""
    ids: list[str] = []
    bad: list[str] = []
    for segment in sorted(spool_dir.glob("*.jsonl")):
        read = read_segment(segment)
        if not read.records or read.skipped or read.truncated:
            bad.append(segment.name)
        ids.extend(r.event_id for r in read.records)
    return ids, bad


def _event_line_bytes(spool_dir: Path) -> int:
    return len(next(iter(sorted(spool_dir.glob("*.jsonl")))).read_bytes().splitlines()[0]) + 1


@pytest.mark.parametrize("lines_per_file", [0.0, 2.5], ids=["nothing-fits", "part-fits"])
def test_spool_counters_match_the_disk_when_the_disk_refuses_writes(
    tmp_path: Path, lines_per_file: float
) -> None:
    # The size of one line, measured on a disk that takes everything.
    probe = _run_child(tmp_path / "probe", 1 << 30)
    assert (probe["spooled"], probe["dropped"]) == (EVENTS, 0)
    line = _event_line_bytes(tmp_path / "probe")

    spool_dir = tmp_path / "spool"
    got = _run_child(spool_dir, int(line * lines_per_file))

    on_disk, bad_segments = _on_disk(spool_dir)
    assert len(set(on_disk)) == len(on_disk)
    assert got["emitted"] == EVENTS
    assert (got["spooled"], got["dropped"]) == (len(on_disk), EVENTS - len(on_disk))
    assert (got["spooled_metric"], got["dropped_metric"]) == (got["spooled"], got["dropped"])
    assert bad_segments == []
    if lines_per_file:
        assert len(on_disk) == 87 * 2 + 2
    else:
        assert on_disk == []
    reopened = Spool(spool_dir)
    try:
        assert reopened.pending() == len(on_disk)
    finally:
        reopened.close()
