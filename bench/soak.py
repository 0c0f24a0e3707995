"""Soak: every worker under steady traffic for a long time; resident memory must stay flat.

    python -m bench.soak [--minutes 30] [--rate 2000] [--sample-seconds 30]

Starts real ``llmpulse worker sink``, ``worker breaker`` and ``worker prompts``
processes on the running local stack (fresh topics), then produces outcomes at
``--rate`` events/s (a mix of providers, organizations, failures and prompt
versions, event times of now) for ``--minutes``. Every ``--sample-seconds`` it
prints each worker's resident memory (``VmRSS``) and how far its group's
committed offsets trail the produced count. At the end it compares each worker's
memory after warm-up (the first sample past a sixth of the run) with its last
sample, and says whether every worker kept up (lag back to zero after the
producer stopped). A figure, not a verdict of the test suite: nothing here is
asserted; the note of the run reads the table.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.common import bench_settings, progress
from bench.rss import rss_mb_of
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.processors.stream.faust_app import app_id
from llmpulse.schemas.events import LLMOutcome
from llmpulse.schemas.topics import OUTCOMES, topic_spec
from llmpulse.simulator.samples import sample_outcome
from tests.harness import committed_offsets

WORKERS = ("sink", "breaker", "prompts")
_TICK = 0.1  # seconds between producer bursts


def group_of(settings: Settings, worker: str) -> str:
    """The consumer group that reads ``llm.outcomes.v1`` in ``worker``."""
    if worker == "sink":
        return f"{settings.consumer_group_prefix}.usage_events"
    return app_id(settings, worker)


def soak_outcomes(rng: random.Random, n: int = 1000) -> list[LLMOutcome]:
    """``n`` simulator outcomes to draw from; two in three carry one of 8 prompt versions."""
    out = []
    for _ in range(n):
        o = sample_outcome(rng)
        if rng.random() < 2 / 3:
            o = o.model_copy(
                update={
                    "prompt_name": f"soak-{rng.randrange(4)}",
                    "prompt_version": rng.randint(1, 2),
                }
            )
        out.append(o)
    return out


def fresh(o: LLMOutcome) -> LLMOutcome:
    """``o`` as a new event of now (new ids): validated once, copied many times."""
    return o.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "request_id": uuid.uuid4(),
            "event_time": datetime.now(UTC),
        }
    )


@dataclass
class WorkerTrace:
    """One worker's samples: (seconds since start, RSS MB, events behind)."""

    name: str
    samples: list[tuple[float, float, int]] = field(default_factory=list)

    def after_warmup(self, warmup_s: float) -> tuple[float, float, int]:
        return next((s for s in self.samples if s[0] >= warmup_s), self.samples[-1])

    def row(self, warmup_s: float) -> str:
        t0, warm, _ = self.after_warmup(warmup_s)
        t1, last, lag = self.samples[-1]
        peak = max(s[1] for s in self.samples)
        growth = (last - warm) / warm * 100 if warm else 0.0
        return (
            f"| {self.name} | {warm:,.0f} MB at {t0 / 60:.1f} min | {last:,.0f} MB at "
            f"{t1 / 60:.1f} min | {growth:+.1f}% | {peak:,.0f} MB | {lag:,} |"
        )


async def _behind(settings: Settings, group: str, produced: int) -> int:
    offsets = await committed_offsets(settings, settings.topic(OUTCOMES), group)
    # The count is updated after each burst is acknowledged: a fast consumer may be ahead.
    return max(0, produced - sum(v or 0 for v in offsets.values()))


async def _produce(settings: Settings, rate: int, seconds: float, sent: list[int]) -> None:
    """``rate`` events/s for ``seconds``, in bursts every ``_TICK`` s; ``sent[0]`` counts."""
    rng = random.Random(7)
    pool = soak_outcomes(rng)
    spec = topic_spec(OUTCOMES)
    producer = kafka.producer(settings, linger_ms=5)
    await producer.start()
    topic = settings.topic(OUTCOMES)
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            # At most a second's worth per burst: a producer that fell behind catches up
            # in steps (and the count stays current) instead of one huge burst.
            due = min(int(elapsed * rate) - sent[0], rate)
            futures = []
            for _ in range(max(0, due)):
                o = fresh(pool[rng.randrange(len(pool))])
                futures.append(await producer.send(topic, encode(o), key=spec.key_of(o)))
            await asyncio.gather(*futures)
            sent[0] += len(futures)
            await asyncio.sleep(_TICK)
    finally:
        await producer.stop()


async def run(minutes: float, rate: int, sample_s: float) -> list[WorkerTrace]:
    settings = await bench_settings(Settings())
    seconds = minutes * 60
    with tempfile.TemporaryDirectory(prefix="llmpulse-soak-") as tmp:
        env = settings.child_env(LLMPULSE_STATE_DIR=str(Path(tmp) / "state"))
        subprocess.run([sys.executable, "-m", "llmpulse", "migrate"], env=env, check=True)
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "llmpulse", "worker", name],
                env=env,
                stdout=(Path(tmp) / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for name in WORKERS
        }
        traces = {name: WorkerTrace(name) for name in WORKERS}
        try:
            await asyncio.sleep(5)  # group joins
            sent = [0]
            started = time.monotonic()
            producing = asyncio.create_task(_produce(settings, rate, seconds, sent))
            while not producing.done() or any(
                t.samples and t.samples[-1][2] > 0 for t in traces.values()
            ):
                await asyncio.sleep(sample_s if not producing.done() else 2)
                if producing.done() and time.monotonic() - started > seconds + 120:
                    break  # a worker that cannot catch up in 2 minutes shows its lag
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker {name} exited with {proc.returncode}")
                    behind = await _behind(settings, group_of(settings, name), sent[0])
                    traces[name].samples.append(
                        (time.monotonic() - started, rss_mb_of(proc.pid), behind)
                    )
                elapsed = time.monotonic() - started
                progress(
                    f"{elapsed / 60:5.1f} min, {sent[0]:,} sent "
                    f"({sent[0] / min(elapsed, seconds):,.0f}/s): "
                    + ", ".join(
                        f"{n} {t.samples[-1][1]:.0f} MB ({t.samples[-1][2]:,} behind)"
                        for n, t in traces.items()
                    )
                )
            await producing
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=60)
    return list(traces.values())


def table(traces: list[WorkerTrace], minutes: float, rate: int) -> str:
    warmup_s = minutes * 60 / 6
    return "\n".join(
        [
            f"Soak: {minutes:g} min at {rate:,} events/s "
            f"(warm-up: the first {warmup_s / 60:.1f} min)",
            "",
            "| worker | RSS after warm-up | RSS at the end | growth | peak | behind at the end |",
            "|---|---|---|---|---|---|",
            *(t.row(warmup_s) for t in traces),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="run length (30)")
    parser.add_argument("--rate", type=int, default=2000, help="events per second (2000)")
    parser.add_argument(
        "--sample-seconds", type=float, default=30.0, help="seconds between samples (30)"
    )
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.sample_seconds <= 0:
        parser.error("--minutes, --rate and --sample-seconds must be positive")
    traces = asyncio.run(run(args.minutes, args.rate, args.sample_seconds))
    print(table(traces, args.minutes, args.rate))


if __name__ == "__main__":
    main()
