"""``llmpulse demo``: the main job, end to end on the real local stack.

Brings the stack up, creates topics and tables, starts the usage sink,
produces sample traffic (including invalid events) and prints what reached
ClickHouse and the DLQ. Later flows (breaker, prompts, gateway simulator,
chargeback) extend this same command.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from processors import kafka, stack
from processors.clickhouse import connect, migrate, run_query
from processors.codec import encode
from processors.samples import sample_outcome
from processors.settings import Settings
from processors.topics import create_topics
from processors.usage_sink import UsageSink
from schemas.topics import OUTCOMES, topic_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples" / "invalid"


def _say(msg: str) -> None:
    print(msg, flush=True)


async def run_demo(settings: Settings, *, events: int, seed: int | None) -> int:
    """Run the demo; returns the process exit code."""
    started = time.monotonic()
    # A fresh broker answers "coordinator not available" for a moment; aiokafka
    # retries it but logs at ERROR, which would only alarm a demo viewer.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    _say("==> starting the local stack (Kafka, Redis, Prometheus)")
    stack.up(settings, progress=lambda m: _say(f"    {m}"))
    _say("==> creating topics")
    created = await create_topics(settings)
    _say(
        f"    {sum(r.status == 'created' for r in created)} created, "
        f"{sum(r.status == 'exists' for r in created)} already there"
    )
    client = connect(settings)
    _say("==> applying ClickHouse migrations")
    for name in migrate(client):
        _say(f"    applied {name}")

    period_start = datetime.now(UTC)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    spec = topic_spec(OUTCOMES)
    # Event times inside the report period [period_start, period_end).
    outcomes = [
        sample_outcome(rng, period_start + timedelta(microseconds=i)) for i in range(events)
    ]
    invalid = sorted(EXAMPLES.glob("outcome_*"))
    _say(f"==> producing {events} outcome events (seed {seed}) and {len(invalid)} invalid ones")
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for o in outcomes:
            await producer.send(settings.topic(OUTCOMES), encode(o), key=spec.key_of(o))
        for path in invalid:
            await producer.send(settings.topic(OUTCOMES), path.read_bytes(), key=b"demo")
        await producer.flush()
    finally:
        await producer.stop()

    _say("==> usage sink: llm.outcomes.v1 -> ClickHouse usage_events")
    stop = asyncio.Event()
    sink = UsageSink(settings, client, group=f"{settings.consumer_group_prefix}.demo")
    task = asyncio.create_task(sink.run(stop))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not task.done():
        s = sink.stats
        _say(
            f"    consumed {s.consumed}, inserted {s.inserted}, duplicates {s.duplicates}, "
            f"conflicts {s.conflicts}, dead-lettered {s.dead_lettered}"
        )
        settled = s.inserted + s.duplicates + s.conflicts + s.dead_lettered
        if settled >= events + len(invalid):
            break
        await asyncio.sleep(1)
    stop.set()
    stats = await task

    period_end = datetime.now(UTC) + timedelta(seconds=1)
    rows = run_query(
        client, "usage_events__by_org_operation", {"start": period_start, "end": period_end}
    )
    _print_usage(rows)
    settled = stats.inserted + stats.duplicates + stats.conflicts
    ok = settled == events and stats.dead_lettered == len(invalid)
    _say(
        f"==> {'done' if ok else 'INCOMPLETE'} in {time.monotonic() - started:.1f}s: "
        f"{stats.inserted} new rows in usage_events ({stats.duplicates} duplicates, "
        f"{stats.conflicts} conflicts quarantined), {stats.dead_lettered} events in "
        f"{settings.topic(spec.dlq)}"
    )
    return 0 if ok else 1


def _print_usage(rows: list[dict[str, object]]) -> None:
    _say(f"{'organization':<14}{'operation':<12}{'requests':>10}{'tokens':>12}{'cost_usd':>16}")
    total = Decimal(0)
    for r in rows:
        cost = r["cost_usd"]
        assert isinstance(cost, Decimal)
        total += cost
        _say(
            f"{r['org_id']!s:<14}{r['operation']!s:<12}{r['requests']!s:>10}"
            f"{r['tokens']!s:>12}{cost:>16.6f}"
        )
    _say(f"{'total':<48}{total:>16.6f}")
