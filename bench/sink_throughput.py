"""Usage sink throughput as a ratio to a bare aiokafka consumer, measured in the same run.

    python -m bench.sink_throughput [--events 100000] [--batch-rows 5000]

Produces N outcome events to fresh topics on the local stack, then measures
(1) a bare aiokafka consumer that decodes each event (the ceiling) and (2) the
usage sink (decode, dedup lookup, insert into embedded chDB, commit) on the
same events. The sink time runs from its first fetched batch to the moment
ClickHouse acknowledged the last row.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Rate, bare_consumer_rate, bench_settings, max_rss_mib, produce_outcomes
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks.usage import UsageSink
from llmpulse.processors.stream.clickhouse import connect, migrate


async def sink_rate(settings: Settings, n: int, batch_rows: int) -> Rate:
    client = connect(settings)
    migrate(client)
    sink = UsageSink(settings, client, group="bench-sink", max_rows=batch_rows, max_seconds=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    while sink.stats.consumed == 0:
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


async def main_async(events: int, batch_rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        base = Settings().model_copy(update={"clickhouse_dsn": f"chdb://{Path(tmp) / 'chdb'}"})
        settings = await bench_settings(base)
        print(f"producing {events} outcome events to {settings.topic_prefix}*", flush=True)
        await produce_outcomes(settings, events)
        bare = await bare_consumer_rate(settings, events)
        rss_bare = max_rss_mib()
        sink = await sink_rate(settings, events, batch_rows)
        print(f"bare aiokafka + decode : {bare.per_second:10.0f} ev/s ({bare.seconds:.2f} s)")
        print(
            f"usage sink (batch {batch_rows:>5}): {sink.per_second:10.0f} ev/s "
            f"({sink.seconds:.2f} s)"
        )
        print(f"ratio sink / bare      : {sink.per_second / bare.per_second:10.2f}")
        print(
            f"max RSS: {rss_bare:.0f} MiB after bare consumer, {max_rss_mib():.0f} MiB after sink"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=5_000)
    args = parser.parse_args()
    asyncio.run(main_async(args.events, args.batch_rows))


if __name__ == "__main__":
    main()
