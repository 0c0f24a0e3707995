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
from pathlib import Path

from processors import billing, kafka, pricing, stack
from processors.clickhouse import connect, migrate
from processors.codec import encode
from processors.cost_report import render_csv, render_table
from processors.samples import sample_outcome
from processors.settings import Settings
from processors.topics import create_topics
from processors.usage_sink import UsageSink
from schemas.topics import OUTCOMES, topic_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "schemas" / "examples" / "invalid"
PRICING_FILE = ROOT / "examples" / "pricing.yaml"


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
    loaded = pricing.load(client, pricing.parse_file(PRICING_FILE))
    _say(f"==> loaded {PRICING_FILE.name}: " + ", ".join(f"{n} {t}" for t, n in loaded.items()))

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
    report = billing.cost_report(
        client, period_start, period_end, default_rate=settings.chargeback_default_rate
    )
    _say("")
    _say(render_table(report))
    csv_path = settings.state_dir / "reports" / f"cost-allocation-{period_start:%Y%m%dT%H%M%S}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(render_csv(report))
    _say(f"==> cost allocation CSV written to {csv_path}")
    settled = stats.inserted + stats.duplicates + stats.conflicts
    ok = settled == events and stats.dead_lettered == len(invalid)
    _say(
        f"==> {'done' if ok else 'INCOMPLETE'} in {time.monotonic() - started:.1f}s: "
        f"{stats.inserted} new rows in usage_events ({stats.duplicates} duplicates, "
        f"{stats.conflicts} conflicts quarantined), {stats.dead_lettered} events in "
        f"{settings.topic(spec.dlq)}"
    )
    return 0 if ok else 1
