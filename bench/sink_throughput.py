"""Usage sink throughput as a ratio to a bare aiokafka consumer, measured in the same run.

    python -m bench.sink_throughput [--events 100000] [--batch-rows 5000]

Produces N outcome events to fresh topics on the local stack, then measures
(1) a bare aiokafka consumer that decodes each event (the ceiling) and (2) the
usage sink (decode, dedup lookup, insert into embedded chDB, commit) on the
same events. The sink time runs from its first fetched batch to the moment
ClickHouse acknowledged the last row. The sink runs in a child process with its
own chDB folder, so its peak RSS is the sink's alone (not the producer's or
the bare consumer's).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from clickhouse_connect.driver.client import Client

from bench.child import in_child
from bench.common import Rate, bare_consumer_rate, bench_settings, produce_outcomes, progress
from bench.results import Throughput
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream.clickhouse import connect, migrate


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


async def _sink_alone(settings: Settings, n: int, batch_rows: int) -> Rate:
    """Runs in the child process: a fresh chDB database, then the sink."""
    client = connect(settings)
    migrate(client)
    return await sink_rate(settings, client, n, batch_rows)


async def run(events: int = 100_000, batch_rows: int = 5_000) -> Throughput:
    """Bare consumer, then the sink, on the same ``events`` outcome events."""
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        base = Settings().model_copy(update={"clickhouse_dsn": f"chdb://{Path(tmp) / 'chdb'}"})
        settings = await bench_settings(base)
        progress(f"producing {events:,} outcome events to {settings.topic_prefix}*")
        await produce_outcomes(settings, events)
        progress("bare aiokafka consumer")
        bare = await bare_consumer_rate(settings, events)
        progress(f"usage sink (batch {batch_rows:,} rows, child process)")
        sink, rss = await in_child(_sink_alone, settings, events, batch_rows)
    return Throughput(events, bare.per_second, sink.per_second, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=5_000)
    args = parser.parse_args()
    r = asyncio.run(run(args.events, args.batch_rows))
    print(f"bare aiokafka + decode : {r.bare_per_second:10,.0f} ev/s")
    print(f"usage sink (batch {args.batch_rows:>5}): {r.ours_per_second:10,.0f} ev/s")
    print(f"ratio sink / bare      : {r.ratio:10.2f}")
    print(f"peak RSS of the sink process: {r.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
