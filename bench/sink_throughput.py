"""Usage sink throughput as a ratio to a bare aiokafka consumer, measured in the same run.

    python -m bench.sink_throughput [--events 100000] [--batch-rows N]

Produces N outcome events to fresh topics on the local stack, then measures
(1) a bare aiokafka consumer that decodes each event (the ceiling) and (2) the
usage sink (decode, dedup lookup, insert into embedded chDB, commit) on the
same events, run by a real ``llmpulse worker sink`` process with its own chDB
folder (migrated first by ``llmpulse migrate``): what is measured is what is
deployed (the worker's four sinks, its allocator settings), and its peak RSS
(``VmHWM``) is the worker's alone, not the producer's or the bare consumer's.
The sink's time runs from its first commit to the commit of the last event
(offsets are committed only after ClickHouse acknowledged the rows), over the
events committed in between; a batch is at most a quarter of the events, so
that window spans several batches.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from clickhouse_connect.driver.client import Client

from bench.common import Rate, bare_consumer_rate, bench_settings, produce_outcomes, progress
from bench.results import Throughput
from bench.rss import peak_rss_mb_of
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import FLOW, UsageSink
from llmpulse.processors.stream import kafka

#: Seconds without a new commit before the run gives up on the worker.
STALL_TIMEOUT_S = 120.0


async def sink_rate(settings: Settings, client: Client, n: int, batch_rows: int) -> Rate:
    """The usage sink's rate on the ``n`` events waiting in ``settings``' outcomes topic."""
    group = f"bench-sink-{uuid.uuid4().hex[:6]}"
    sink = UsageSink(settings, client, group=group, max_rows=batch_rows, max_seconds=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    while sink.stats.consumed == 0:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    while sink.stats.inserted < n:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return Rate(n, elapsed)


async def worker_rate(settings: Settings, tmp: Path, n: int, batch_rows: int) -> tuple[Rate, float]:
    """A ``llmpulse worker sink`` process's rate on the ``n`` events waiting, and its peak RSS."""
    prefix = f"bench-sink-{uuid.uuid4().hex[:6]}"
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp / "state"), LLMPULSE_CONSUMER_GROUP_PREFIX=prefix
    )
    llmpulse = [sys.executable, "-m", "llmpulse"]
    # As deployed: the schema is migrated before the worker starts, by another process.
    migrated = subprocess.run([*llmpulse, "migrate"], env=env, capture_output=True, text=True)
    if migrated.returncode:
        raise RuntimeError(f"llmpulse migrate failed: {migrated.stderr.strip()[-500:]}")
    command = [*llmpulse, "worker", "sink", f"--batch-rows={batch_rows}"]
    with (tmp / "worker.log").open("wb") as log:
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        rate = await _committed_rate(settings, f"{prefix}.{FLOW}", n, worker)
        return rate, peak_rss_mb_of(worker.pid)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # stuck (say, retrying a write): no orphan
            worker.kill()
            worker.wait()


async def _committed_rate(
    settings: Settings, group: str, n: int, worker: subprocess.Popen[bytes]
) -> Rate:
    """Events/s between ``group``'s first commit and its commit of all ``n`` events."""
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    await admin.start()
    try:
        first: tuple[int, float] | None = None
        done, moved = 0, time.perf_counter()
        while done < n:
            if worker.poll() is not None:
                raise RuntimeError(f"the sink worker exited with code {worker.returncode}")
            offsets = await admin.list_consumer_group_offsets(group)
            now = time.perf_counter()
            committed = sum(max(0, meta.offset) for meta in offsets.values())
            if committed > done:
                done, moved = committed, now
                first = first or (done, now)
            elif now - moved > STALL_TIMEOUT_S:
                raise RuntimeError(f"the sink worker committed nothing for {STALL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.01)
        start = first or (0, moved)
        return Rate(n - start[0], moved - start[1])
    finally:
        await admin.close()


async def run(events: int = 100_000, batch_rows: int | None = None) -> Throughput:
    """Bare consumer, then the sink, on the same ``events`` outcome events."""
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        settings = await bench_settings(Settings())
        progress(f"producing {events:,} outcome events to {settings.topic_prefix}*")
        await produce_outcomes(settings, events)
        progress("bare aiokafka consumer")
        bare = await bare_consumer_rate(settings, events)
        # The deployed default unless asked; at most a quarter of the events, so that
        # several commits are timed.
        batch_rows = min(batch_rows or settings.sink_batch_max_rows, max(1, events // 4))
        progress(f"usage sink (batch {batch_rows:,} rows, llmpulse worker sink)")
        sink, rss = await worker_rate(settings, Path(tmp), events, batch_rows)
    return Throughput(events, bare.per_second, sink.per_second, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="rows per insert (default: the worker's, LLMPULSE_SINK_BATCH_MAX_ROWS)",
    )
    args = parser.parse_args()
    r = asyncio.run(run(args.events, args.batch_rows))
    print(f"bare aiokafka + decode : {r.bare_per_second:10,.0f} ev/s")
    print(f"usage sink             : {r.ours_per_second:10,.0f} ev/s")
    print(f"ratio sink / bare      : {r.ratio:10.2f}")
    print(f"peak RSS of the sink worker: {r.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
