"""Breaker agent throughput (ratio to a bare aiokafka consumer) and snapshot latency.

    python -m bench.breaker_agent [--events 50000] [--openings 200] [--load 5000]

1. Throughput: with the agent (a real ``llmpulse worker breaker`` process) idle
   and a bare aiokafka consumer idle on another topic prefix, N outcome events
   (10 providers) are produced as fast as possible; each side's time runs from
   the first send to the moment its group committed offset N (Faust commits
   every second, so the agent's figure is conservative by up to a second).
2. Latency at one hot provider: a separate process produces ``--load`` success
   events per second, all for one provider (so all on one partition), while
   ``--openings`` other providers whose key hashes to that same partition each
   get 3 failures (the agent opens at 3 in a row); each opening queues behind
   the hot provider's traffic. Latency runs from the third failure's
   event_time to the arrival of the open snapshot on the Redis pub/sub channel.

Peak RSS is the worker's ``VmHWM`` over both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka.partitioner import DefaultPartitioner

from bench.common import (
    bare_consumer,
    bench_outcome,
    bench_settings,
    blast,
    progress,
    wait_committed,
)
from bench.results import BreakerResult, Latency, Throughput
from bench.rss import peak_rss_mb_of
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.faust_app import app_id
from llmpulse.schemas import LLMOutcome, serving
from llmpulse.schemas.events import BreakerSnapshot
from llmpulse.schemas.topics import OUTCOMES, topic_spec

CONFIG = "default: {consecutive_failures: 3, failure_rate_threshold: null, open_seconds: 600}\n"
HOT = "hot"
#: How long an opening may take before the run gives up on the agent.
OPENING_TIMEOUT_S = 120.0


def outcome(provider: str, ok: bool) -> LLMOutcome:
    return bench_outcome(provider, ok=ok)


def start_worker(settings: Settings, tmp: Path) -> subprocess.Popen[bytes]:
    (tmp / "breaker.yaml").write_text(CONFIG)
    env = settings.child_env(
        LLMPULSE_STATE_DIR=str(tmp / "state"),
        LLMPULSE_BREAKER_CONFIG_FILE=str(tmp / "breaker.yaml"),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", "breaker"],
        env=env,
        stdout=(tmp / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


async def wait_ready(settings: Settings, rds: aioredis.Redis) -> None:
    """The agent is consuming once a warm-up event's snapshot shows up in Redis."""
    await blast(settings, [(b"warmup", encode(outcome("warmup", True)))])
    key = serving.breaker_key(settings.topic_prefix, "warmup")
    while not await rds.exists(key):
        await asyncio.sleep(0.1)


async def throughput(agent_s: Settings, bare_s: Settings, events: int) -> tuple[float, float]:
    """(bare, agent) events per second on the same ``events`` outcomes of 10 providers."""
    names = [f"p{i:02d}" for i in range(10)]
    payloads = [
        (names[i % 10].encode(), encode(outcome(names[i % 10], True))) for i in range(events)
    ]
    progress(f"bare aiokafka consumer, {events:,} events")
    ready = asyncio.Event()
    task = asyncio.create_task(bare_consumer(bare_s, "bench-bare", events, ready))
    await ready.wait()
    await asyncio.sleep(2)  # group join
    t0 = await blast(bare_s, payloads)
    bare_secs = await wait_committed(bare_s, "bench-bare", events) - t0
    await task
    progress(f"breaker agent, {events:,} events")
    t0 = await blast(agent_s, payloads)
    # +1: the warm-up event.
    agent_secs = await wait_committed(agent_s, app_id(agent_s, "breaker"), events + 1) - t0
    return events / bare_secs, events / agent_secs


def _partition(key: str) -> int:
    """The outcomes partition the producers' default partitioner picks for ``key``."""
    parts = list(range(topic_spec(OUTCOMES).partitions))
    return int(DefaultPartitioner()(key.encode(), parts, parts))


def same_partition_providers(n: int) -> tuple[int, list[str]]:
    """The hot provider's partition and ``n`` other provider names that hash to it."""
    hot = _partition(HOT)
    names = (f"lat{i:05d}" for i in itertools.count())
    return hot, list(itertools.islice((p for p in names if _partition(p) == hot), n))


def _background_load(
    settings: Settings,
    rate: int,
    ready: ProcessEvent,
    stop: ProcessEvent,
    achieved: Synchronized[float],
) -> None:
    """Child process: ``rate`` success events/s for :data:`HOT` until ``stop``."""
    asyncio.run(_produce_load(settings, rate, ready, stop, achieved))


async def _produce_load(
    settings: Settings,
    rate: int,
    ready: ProcessEvent,
    stop: ProcessEvent,
    achieved: Synchronized[float],
) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    topic, key = settings.topic(OUTCOMES), HOT.encode()
    sent = 0
    started = time.perf_counter()
    try:
        while not stop.is_set():
            due = int((time.perf_counter() - started) * rate)
            while sent < due:
                await producer.send(topic, encode(outcome(HOT, True)), key=key)
                sent += 1
            if not ready.is_set() and time.perf_counter() - started > 1.0:
                ready.set()
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()
    achieved.value = sent / (time.perf_counter() - started)


async def latency(settings: Settings, rds: aioredis.Redis, openings: int, load: int) -> Latency:
    """Openings measured while ``load`` events/s of one hot provider share their partition."""
    partition, names = same_partition_providers(openings)
    pubsub = rds.pubsub()
    await pubsub.subscribe(serving.breaker_channel(settings.topic_prefix))
    trigger_time: dict[str, datetime] = {}
    arrivals: dict[str, datetime] = {}

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] != "message":
                continue
            snap = BreakerSnapshot.model_validate_json(msg["data"])
            if snap.state.value == "open" and snap.provider.startswith("lat"):
                arrivals.setdefault(snap.provider, datetime.now(UTC))
                if len(arrivals) == openings:
                    return

    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    achieved = ctx.Value("d", 0.0)
    loader = ctx.Process(
        target=_background_load, args=(settings, load, ready, stop, achieved), daemon=True
    )
    listener = asyncio.create_task(listen())
    progress(f"background load: {load:,} events/s for provider {HOT!r} (partition {partition})")
    loader.start()
    try:
        while not ready.is_set():
            if not loader.is_alive():
                raise RuntimeError(f"background load process exited ({loader.exitcode})")
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)  # the agent at steady state under the load
        progress(f"{openings} openings on partition {partition}")
        producer = kafka.producer(settings)
        await producer.start()
        try:
            for name in names:
                for _ in range(3):
                    o = outcome(name, False)
                    await producer.send(settings.topic(OUTCOMES), encode(o), key=name.encode())
                trigger_time[name] = o.event_time
                await asyncio.sleep(0.01)
            await producer.flush()
        finally:
            await producer.stop()
        try:
            await asyncio.wait_for(listener, OPENING_TIMEOUT_S)
        except TimeoutError:
            raise TimeoutError(
                f"{len(arrivals)} of {openings} openings arrived within {OPENING_TIMEOUT_S:.0f} s"
            ) from None
    finally:
        listener.cancel()
        stop.set()
        loader.join(30)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    lat = sorted((arrivals[p] - trigger_time[p]).total_seconds() * 1000 for p in trigger_time)
    return Latency(
        openings=openings,
        load_target=load,
        load_achieved=achieved.value,
        partition=partition,
        p50_ms=statistics.median(lat),
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        max_ms=lat[-1],
    )


async def run(events: int = 50_000, openings: int = 200, load: int = 5_000) -> BreakerResult:
    """Throughput against the bare ceiling, then latency under one hot provider's load."""
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        agent_s = await bench_settings(base)
        bare_s = await bench_settings(base)
        rds = redis_client.connect(agent_s)
        progress("starting llmpulse worker breaker")
        worker = start_worker(agent_s, Path(tmp))
        try:
            await wait_ready(agent_s, rds)
            bare, ours = await throughput(agent_s, bare_s, events)
            lat = await latency(agent_s, rds, openings, load)
            rss = peak_rss_mb_of(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            await rds.aclose()
    return BreakerResult(Throughput(events, bare, ours, rss), lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--openings", type=int, default=200, help="providers opened (latency)")
    parser.add_argument(
        "--load", type=int, default=5_000, help="background events/s, all on one provider"
    )
    args = parser.parse_args()
    r = asyncio.run(run(args.events, args.openings, args.load))
    t, lat = r.throughput, r.latency
    print(f"throughput, {t.events:,} outcome events (10 providers):")
    print(f"  bare aiokafka consumer + decode : {t.bare_per_second:9,.0f} events/s")
    print(f"  breaker agent (Faust)           : {t.ours_per_second:9,.0f} events/s")
    print(f"  ratio agent / bare              : {t.ratio:9.2f}")
    print(
        f"latency event_time -> Redis snapshot, {lat.openings} openings on partition "
        f"{lat.partition} under {lat.load_achieved:,.0f} events/s of one provider "
        f"(asked {lat.load_target:,}):"
    )
    print(f"  p50 {lat.p50_ms:7.1f} ms   p99 {lat.p99_ms:7.1f} ms   max {lat.max_ms:7.1f} ms")
    print(f"peak RSS of the worker: {t.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
