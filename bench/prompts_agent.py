"""Prompt rollup agent throughput as a ratio to a bare aiokafka consumer, same run.

    python -m bench.prompts_agent [--events 30000]

The agent (a real ``llmpulse worker prompts`` process, 60 s and 3600 s windows)
and a bare aiokafka consumer (decoding each event) are idle; N outcome events
of 4 prompt versions are produced as fast as possible, and each side's time
runs from the first send until its group committed offset N. Peak RSS is the
worker's ``VmHWM``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    bare_consumer,
    bench_outcome,
    bench_settings,
    blast,
    progress,
    wait_committed,
)
from bench.results import Throughput
from bench.rss import peak_rss_mb_of
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.faust_app import app_id
from llmpulse.schemas import LLMOutcome


def outcome(rng: random.Random) -> LLMOutcome:
    return bench_outcome(
        f"p{rng.randrange(6)}",
        prompt_version=rng.randint(1, 4),
        latency_ms=rng.randint(50, 2000),
        input_tokens=rng.randint(10, 1000),
        output_tokens=rng.randint(10, 500),
    )


def payloads(events: int) -> list[tuple[bytes, bytes]]:
    """The same ``events`` outcomes each call (seeded draws), with new ids and event times.

    Each side gets them just before its run, as production traffic arrives: made
    once for both, the agent's events would be as old as the bare consumer's run,
    and those of minute windows that closed meanwhile would count as late.
    """
    rng = random.Random(1)
    out = []
    for _ in range(events):
        o = outcome(rng)
        out.append((o.provider.encode(), encode(o)))
    return out


async def run(events: int = 30_000) -> Throughput:
    """Bare consumer, then the rollup agent, on the same ``events`` outcomes."""
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        agent_s = await bench_settings(base)
        bare_s = await bench_settings(base)
        env = agent_s.child_env(LLMPULSE_STATE_DIR=str(Path(tmp) / "state"))
        progress("starting llmpulse worker prompts")
        worker = subprocess.Popen(
            [sys.executable, "-m", "llmpulse", "worker", "prompts"],
            env=env,
            stdout=(Path(tmp) / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            group = app_id(agent_s, "prompts")
            await blast(agent_s, payloads(1))  # warm-up
            await wait_committed(agent_s, group, 1)
            progress(f"bare aiokafka consumer, {events:,} events")
            ready = asyncio.Event()
            task = asyncio.create_task(bare_consumer(bare_s, "bench-bare", events, ready))
            await ready.wait()
            await asyncio.sleep(2)
            t0 = await blast(bare_s, payloads(events))
            bare_secs = await wait_committed(bare_s, "bench-bare", events) - t0
            await task
            progress(f"prompt rollup agent, {events:,} events")
            t0 = await blast(agent_s, payloads(events))
            agent_secs = await wait_committed(agent_s, group, events + 1) - t0
            rss = peak_rss_mb_of(worker.pid)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    return Throughput(events, events / bare_secs, events / agent_secs, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    r = asyncio.run(run(args.events))
    print(f"throughput, {r.events:,} outcome events (4 prompt versions, windows 60 s + 3600 s):")
    print(f"  bare aiokafka consumer + decode : {r.bare_per_second:9,.0f} events/s")
    print(f"  prompt rollup agent (Faust)     : {r.ours_per_second:9,.0f} events/s")
    print(f"  ratio agent / bare              : {r.ratio:9.2f}")
    print(f"peak RSS of the worker: {r.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
