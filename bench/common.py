"""Shared benchmark plumbing: stack, unique topics, event production, the bare-consumer ceiling."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from llmpulse.devstack import stack
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import decode, encode
from llmpulse.processors.stream.topics import create_topics
from llmpulse.schemas.events import ErrorClass, LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.topics import OUTCOMES, topic_spec
from llmpulse.simulator.samples import sample_outcome
from tests.harness import committed_offsets


def bench_outcome(
    provider: str = "p1",
    *,
    ok: bool = True,
    prompt_version: int | None = None,
    latency_ms: int = 50,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> LLMOutcome:
    """A fresh outcome for the benchmarks (new ids, event time now)."""
    return LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        request_id=uuid.uuid4(),
        org_id="bench",
        operation=Operation.completion,
        provider=provider,
        model="m",
        prompt_name="bench-prompt" if prompt_version is not None else None,
        prompt_version=prompt_version,
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        latency_ms=latency_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


@dataclass(frozen=True)
class Rate:
    events: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


def progress(message: str) -> None:
    """One indented progress line (the runner prints its own unindented ones)."""
    print(f"  {message}", flush=True)


async def bench_settings(base: Settings) -> Settings:
    """Running stack endpoints and a fresh topic prefix with every topic created."""
    ep = stack.up(base, progress=lambda m: progress(f"[stack] {m}"))
    s = stack.with_endpoints(base, ep).model_copy(
        update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}."}
    )
    await create_topics(s)
    return s


async def produce_outcomes(settings: Settings, n: int, seed: int = 1) -> list[LLMOutcome]:
    rng = random.Random(seed)
    events = [sample_outcome(rng) for _ in range(n)]
    spec = topic_spec(OUTCOMES)
    producer = kafka.producer(settings, linger_ms=20)
    await producer.start()
    try:
        for i in range(0, n, 10_000):
            futures = [
                await producer.send(settings.topic(OUTCOMES), encode(o), key=spec.key_of(o))
                for o in events[i : i + 10_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return events


async def bare_consumer_rate(settings: Settings, n: int) -> Rate:
    """Ceiling: a bare aiokafka consumer that reads and decodes the same ``n`` events."""
    consumer = kafka.consumer(
        settings, settings.topic(OUTCOMES), group=f"bench-bare-{uuid.uuid4().hex[:6]}"
    )
    await consumer.start()
    bounds = settings.event_time_bounds
    seen = 0
    try:
        started = None
        while seen < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            if started is None and batches:
                started = time.perf_counter()
            for records in batches.values():
                for r in records:
                    decode(LLMOutcome, r.value, bounds=bounds)
                    seen += 1
        return Rate(seen, time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()


async def blast(settings: Settings, payloads: list[tuple[bytes, bytes]]) -> float:
    producer = kafka.producer(settings, linger_ms=10)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(settings.topic(OUTCOMES), v, key=k) for k, v in payloads]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return started


async def wait_committed(settings: Settings, group: str, n: int) -> float:
    while True:
        offsets = await committed_offsets(settings, settings.topic(OUTCOMES), group)
        if sum(v or 0 for v in offsets.values()) >= n:
            return time.perf_counter()
        await asyncio.sleep(0.2)


async def bare_consumer(settings: Settings, group: str, n: int, ready: asyncio.Event) -> None:
    consumer = kafka.consumer(
        settings, settings.topic(OUTCOMES), group=group, auto_offset_reset="earliest"
    )
    await consumer.start()
    ready.set()
    seen = 0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    decode(LLMOutcome, r.value, bounds=settings.event_time_bounds)
                    seen += 1
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()
