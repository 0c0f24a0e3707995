"""``llmpulse demo``: the main job, end to end on the real local stack.

1. stack up (Kafka, Redis, Prometheus), topics, ClickHouse migrations, price list;
2. the breaker worker (a real ``llmpulse worker breaker`` process) and the
   sinks (usage and breaker transitions, in this process: chDB is in-process);
3. simulated app traffic that fails over on the fleet-wide breaker view, with
   a scripted outage of the preferred provider, plus invalid events for the DLQ;
4. the breaker timeline, outage ledger, failovers, availability and the cost
   allocation report (table on screen, CSV on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from processors import billing, kafka, pricing, prompt_ops, stack
from processors.breaker_transitions_sink import BreakerTransitionsSink
from processors.clickhouse import connect, migrate, run_query
from processors.cost_report import render_csv, render_table
from processors.demo_traffic import PROMPT, Outage, TrafficStats, run_traffic
from processors.prompt_compare import compare
from processors.prompt_compare import render_text as render_compare
from processors.prompt_registry import VersionRecord, plan_activate, plan_create
from processors.prompt_sinks import PromptPerformanceSink, PromptVersionsSink
from processors.settings import Settings
from processors.sink import ClickHouseSink
from processors.topics import create_topics
from processors.usage_sink import UsageSink
from schemas.topics import OUTCOMES, topic_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "schemas" / "examples" / "invalid"
PRICING_FILE = ROOT / "examples" / "pricing.yaml"
DEMO_WINDOW = 10
DEMO_BREAKER = """\
# Written by `llmpulse demo`: short durations so the outage plays out in seconds.
default:
  window_seconds: 30
  consecutive_failures: 5
  failure_rate_threshold: 0.5
  minimum_calls: 20
  open_seconds: 3
  open_multiplier: 2
  open_max_seconds: 8
  jitter_fraction: 0.1
  half_open_probes: 1
"""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


async def run_demo(
    settings: Settings, *, seconds: float = 30.0, rate: float = 100.0, seed: int | None = None
) -> int:
    """Run the demo; returns the process exit code."""
    started = time.monotonic()
    # A fresh broker answers "coordinator not available" for a moment; aiokafka
    # retries it but logs at ERROR, which would only alarm a demo viewer.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)

    _say("==> starting the local stack (Kafka, Redis, Prometheus)")
    ep = stack.up(settings, progress=lambda m: _say(f"    {m}"))
    settings = stack.with_endpoints(settings, ep)
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

    config = settings.state_dir / "demo-breaker.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(DEMO_BREAKER)
    await _prepare_prompt(settings)
    breaker = _start_worker(
        settings,
        "breaker",
        LLMPULSE_BREAKER_CONFIG_FILE=str(config.resolve()),
        LLMPULSE_BREAKER_TICK_SECONDS="0.2",
    )
    prompts = _start_worker(
        settings,
        "prompts",
        LLMPULSE_PROMPT_WINDOWS=f"[{DEMO_WINDOW}]",
        LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS="2",
    )
    stop = asyncio.Event()
    usage = UsageSink(settings, client, group=f"{settings.consumer_group_prefix}.demo")
    transitions = BreakerTransitionsSink(
        settings, client, group=f"{settings.consumer_group_prefix}.demo", max_seconds=0.5
    )
    performance = PromptPerformanceSink(settings, client, max_seconds=0.5)
    sinks: list[ClickHouseSink[Any]] = [
        usage,
        transitions,
        performance,
        PromptVersionsSink(settings, client, max_seconds=0.5),
    ]
    tasks = [asyncio.create_task(s.run(stop)) for s in sinks]
    try:
        await _wait_workers_ready(breaker, prompts)
        period_start = datetime.now(UTC)
        outage = Outage("openai", start=seconds * 0.25, end=seconds * 0.6)
        _say(
            f"==> {seconds:.0f}s of app traffic at {rate:.0f} requests/s (seed {seed}); "
            f"openai fails every call from t={outage.start:.0f}s to t={outage.end:.0f}s"
        )
        stats = await _traffic_with_progress(settings, seconds, rate, outage, seed)
        invalid = sorted(EXAMPLES.glob("outcome_*"))
        await _produce_invalid(settings, invalid)
        _say(f"==> sinks catching up ({len(invalid)} invalid events go to the DLQ)")
        expected_outcomes = sum(stats.attempts.values())
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            u = usage.stats
            if (
                u.inserted + u.duplicates + u.conflicts >= expected_outcomes
                and u.dead_lettered >= len(invalid)
                and not usage._next_offsets
            ):
                break
            await asyncio.sleep(0.5)
        # The last A/B windows close DEMO_WINDOW + grace seconds after traffic ends.
        _say(f"==> waiting for the last {DEMO_WINDOW}s prompt windows to close")
        await asyncio.sleep(DEMO_WINDOW + 4)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for worker in (breaker, prompts):
            worker.terminate()
        for worker in (breaker, prompts):
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=20)

    period_end = datetime.now(UTC) + timedelta(seconds=1)
    period = {"start": period_start, "end": period_end}
    _print_timeline(client, period_start, period_end)
    _print_ledger(client, period)
    _print_availability(stats)
    await _print_ab_verdict(settings, client, period_start, period_end)
    report = billing.cost_report(
        client, period_start, period_end, default_rate=settings.chargeback_default_rate
    )
    _say()
    _say(render_table(report))
    csv_path = settings.state_dir / "reports" / f"cost-allocation-{period_start:%Y%m%dT%H%M%S}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(render_csv(report))
    _say(f"==> cost allocation CSV written to {csv_path}")
    u = usage.stats
    ok = (
        u.inserted + u.duplicates + u.conflicts == expected_outcomes
        and u.dead_lettered == len(invalid)
        and report.grand_total("requests") == u.inserted
    )
    _say(
        f"==> {'done' if ok else 'INCOMPLETE'} in {time.monotonic() - started:.1f}s: "
        f"{u.inserted} usage rows, {u.dead_lettered} events in "
        f"{settings.topic(topic_spec(OUTCOMES).dlq)}, "
        f"{transitions.stats.inserted} breaker transitions"
    )
    return 0 if ok else 1


def _start_worker(settings: Settings, flow: str, **extra: str) -> subprocess.Popen[bytes]:
    """A real ``llmpulse worker FLOW`` process on the demo's services."""
    env = settings.child_env(**extra)
    log = settings.state_dir / f"demo-{flow}-worker.log"
    _say(f"==> starting the {flow} worker (log: {log})")
    return subprocess.Popen(
        [sys.executable, "-m", "processors.cli", "worker", flow],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _prepare_prompt(settings: Settings) -> None:
    """Two versions of the demo prompt in a 50/50 A/B test (idempotent across runs)."""
    state = await prompt_ops.read_registry(settings)
    if PROMPT not in state:
        for version, text in ((1, "Answer the customer briefly."), (2, "Answer step by step.")):
            events = plan_create(
                state, PROMPT, VersionRecord(version, text, temperature=Decimal("0.3"))
            )
            await prompt_ops.append(settings, events)
            state = await prompt_ops.read_registry(settings)
    await prompt_ops.append(settings, plan_activate(state, PROMPT, 1, None))
    state = await prompt_ops.read_registry(settings)
    await prompt_ops.append(settings, plan_activate(state, PROMPT, 2, Decimal("0.5")))
    _say(f"==> prompt {PROMPT!r}: v1 and v2 active, 50/50 A/B test (sticky per subject)")


async def _wait_workers_ready(*procs: subprocess.Popen[bytes]) -> None:
    # The workers need a few seconds to join their groups and recover their tables.
    for _ in range(8):
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited early; see the demo-*-worker.log files")
        await asyncio.sleep(1)


async def _traffic_with_progress(
    settings: Settings, seconds: float, rate: float, outage: Outage, seed: int
) -> TrafficStats:
    queue: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(
        run_traffic(settings, seconds=seconds, rate=rate, outage=outage, seed=seed, progress=queue)
    )
    while not task.done():
        with contextlib.suppress(TimeoutError):
            _say("    " + await asyncio.wait_for(queue.get(), 0.5))
    return task.result()


async def _produce_invalid(settings: Settings, paths: list[Path]) -> None:
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for path in paths:
            await producer.send(settings.topic(OUTCOMES), path.read_bytes(), key=b"demo")
        await producer.flush()
    finally:
        await producer.stop()


def _print_timeline(client: Any, start: datetime, end: datetime) -> None:
    rows = client.query(
        "SELECT provider, version, from_state, to_state, at, reason, next_attempt_at "
        "FROM breaker_transitions FINAL "
        "WHERE at >= {start:DateTime64(6, 'UTC')} AND at < {end:DateTime64(6, 'UTC')} "
        "ORDER BY at, provider, version",
        parameters={"start": start, "end": end},
    ).result_rows
    _say()
    _say("Breaker timeline (from ClickHouse breaker_transitions)")
    _say(f"{'t+s':>7}  {'provider':<10}{'v':>3}  {'transition':<24}{'reason':<22}{'until':>8}")
    for provider, version, frm, to, at, reason, until in rows:
        rel = (at.replace(tzinfo=UTC) - start).total_seconds()
        until_rel = "-"
        if until:
            until_rel = f"{(until.replace(tzinfo=UTC) - start).total_seconds():+.1f}"
        change = f"{frm} -> {to}"
        _say(f"{rel:>+7.1f}  {provider:<10}{version:>3}  {change:<24}{reason:<22}{until_rel:>8}")


def _print_ledger(client: Any, period: dict[str, datetime]) -> None:
    ledger = run_query(client, "breaker_transitions__outage_ledger", period)
    failovers = {r["provider"]: r for r in run_query(client, "usage_events__failovers", period)}
    _say()
    _say("Outage ledger")
    header = ("provider", "seconds open", "openings", "failovers", "failover cost")
    _say("{:<12}{:>14}{:>10}{:>11}{:>16}".format(*header))
    for r in ledger:
        f = failovers.get(r["provider"], {"failovers": 0, "failover_cost_usd": 0})
        _say(
            f"{r['provider']:<12}{r['seconds_open']:>14.1f}{r['openings']:>10}"
            f"{f['failovers']:>11}{f['failover_cost_usd']:>16.6f}"
        )


async def _print_ab_verdict(
    settings: Settings, client: Any, start: datetime, end: datetime
) -> None:
    state = await prompt_ops.read_registry(settings)
    rows = run_query(
        client,
        "prompt_performance__compare",
        {
            "prompt": PROMPT,
            "window_seconds": DEMO_WINDOW,
            "start": start - timedelta(seconds=DEMO_WINDOW),
            "end": end,
        },
    )
    report = compare(PROMPT, rows, state[PROMPT].effective_weights())
    _say()
    _say("A/B test (from ClickHouse prompt_performance, built-in: v2 rejects less, scores higher)")
    _say(render_compare(report))


def _print_availability(stats: TrafficStats) -> None:
    share = stats.succeeded / stats.requests if stats.requests else 0.0
    _say()
    _say(
        f"Availability: {stats.succeeded}/{stats.requests} requests succeeded ({share:.4%}), "
        f"{stats.failovers} via failover; probes sent: {dict(stats.probes) or 'none'}; "
        f"attempts per provider: {dict(stats.attempts)}"
    )
