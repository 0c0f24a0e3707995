"""Breaker agent throughput (ratio to a bare aiokafka consumer) and snapshot latency.

    python -m bench.breaker_agent [--events 50000] [--providers 200] [--load 1000]

1. Throughput: with the agent (a real ``llmpulse worker breaker`` process) idle
   and a bare aiokafka consumer idle on another topic prefix, N outcome events
   are produced as fast as possible; each side's time runs from the first send
   to the moment its group committed offset N (Faust commits every second, so
   the agent's figure is conservative by up to a second).
2. Latency: while ``--load`` success events per second flow, each of
   ``--providers`` providers gets 3 failures (the agent opens at 3 in a row);
   latency is from the third failure's event_time to the arrival of the open
   snapshot on the Redis pub/sub channel.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

from bench.common import bare_consumer, bench_outcome, bench_settings, blast, wait_committed
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import LLMOutcome, serving
from llmpulse.schemas.events import BreakerSnapshot
from llmpulse.schemas.topics import OUTCOMES

CONFIG = "default: {consecutive_failures: 3, failure_rate_threshold: null, open_seconds: 600}\n"


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


async def main_async(events: int, providers: int, load: int) -> None:
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        agent_s = await bench_settings(base)
        bare_s = await bench_settings(base)
        rds = aioredis.Redis.from_url(str(agent_s.redis_url))
        worker = start_worker(agent_s, Path(tmp))
        try:
            await wait_ready(agent_s, rds)
            names = [f"p{i:02d}" for i in range(10)]
            payloads = [
                (names[i % 10].encode(), encode(outcome(names[i % 10], True)))
                for i in range(events)
            ]
            # Bare consumer ceiling, measured the same way.
            ready = asyncio.Event()
            task = asyncio.create_task(bare_consumer(bare_s, "bench-bare", events, ready))
            await ready.wait()
            await asyncio.sleep(2)  # group join
            t0 = await blast(bare_s, payloads)
            bare_secs = await wait_committed(bare_s, "bench-bare", events) - t0
            await task
            # The agent (its group is the Faust app id).
            t0 = await blast(agent_s, payloads)
            agent_secs = (
                await wait_committed(agent_s, f"{agent_s.topic_prefix}llmpulse-breaker", events + 1)
                - t0
            )
            print(f"throughput, {events} outcome events (10 providers):")
            print(f"  bare aiokafka consumer + decode : {events / bare_secs:9.0f} events/s")
            print(f"  breaker agent (Faust)           : {events / agent_secs:9.0f} events/s")
            print(f"  ratio agent / bare              : {bare_secs / agent_secs:9.2f}")
            await latency(agent_s, rds, providers, load)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            await rds.aclose()


async def latency(settings: Settings, rds: aioredis.Redis, providers: int, load: int) -> None:
    pubsub = rds.pubsub()
    await pubsub.subscribe(serving.breaker_channel(settings.topic_prefix))
    trigger_time: dict[str, datetime] = {}
    arrivals: dict[str, datetime] = {}
    stop = asyncio.Event()

    async def background() -> None:
        producer = kafka.producer(settings)
        await producer.start()
        try:
            while not stop.is_set():
                tick = time.perf_counter()
                for i in range(load // 10):
                    o = outcome(f"bg{i % 20}", True)
                    await producer.send(
                        settings.topic(OUTCOMES), encode(o), key=o.provider.encode()
                    )
                await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
        finally:
            await producer.stop()

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg["type"] != "message":
                continue
            snap = BreakerSnapshot.model_validate_json(msg["data"])
            if snap.state.value == "open" and snap.provider.startswith("lat"):
                arrivals.setdefault(snap.provider, datetime.now(UTC))
                if len(arrivals) == providers:
                    return

    bg = asyncio.create_task(background())
    listener = asyncio.create_task(listen())
    await asyncio.sleep(2)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for i in range(providers):
            name = f"lat{i:03d}"
            for _ in range(3):
                o = outcome(name, False)
                await producer.send(settings.topic(OUTCOMES), encode(o), key=name.encode())
            trigger_time[name] = o.event_time
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()
    await asyncio.wait_for(listener, 120)
    stop.set()
    await bg
    lat = sorted((arrivals[p] - trigger_time[p]).total_seconds() * 1000 for p in trigger_time)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"latency event_time -> Redis snapshot, {providers} openings under ~{load} events/s:")
    print(f"  p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   max {lat[-1]:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--providers", type=int, default=200)
    parser.add_argument("--load", type=int, default=1000, help="background events per second")
    args = parser.parse_args()
    asyncio.run(main_async(args.events, args.providers, args.load))


if __name__ == "__main__":
    main()
