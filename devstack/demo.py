"""``llmpulse demo``: the main job, end to end on the real local stack.

1. stack up (Kafka, Redis, Prometheus), topics, ClickHouse migrations, price list;
2. the breaker worker (a real ``llmpulse worker breaker`` process) and the
   sinks (usage and breaker transitions, in this process: chDB is in-process);
3. the fleet simulator: three app instances using the real ``gateway``
   (fleet-wide breaker view, failover, probe permits, sticky prompt A/B
   selection, lossless emitter) with a scripted outage of the preferred
   provider, plus invalid events for the DLQ;
4. the breaker timeline, outage ledger, failovers, availability, what
   Prometheus scraped from the workers, the A/B verdict and the cost
   allocation report (table on screen, CSV on disk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmpulse.core.registry import VersionRecord, plan_activate, plan_create
from llmpulse.devstack import stack
from llmpulse.processors import owner_only, supervisor
from llmpulse.processors.billing import pricing, reports
from llmpulse.processors.billing.allocation import render_csv, render_table
from llmpulse.processors.prompts import ops
from llmpulse.processors.prompts.comparison import compare
from llmpulse.processors.prompts.comparison import render_text as render_compare
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks import build_sinks
from llmpulse.processors.sinks.breaker_transitions import FLOW as TRANSITIONS_FLOW
from llmpulse.processors.sinks.usage import FLOW as USAGE_FLOW
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.clickhouse import connect, migrate, run_query
from llmpulse.processors.stream.topics import create_topics
from llmpulse.schemas.topics import OUTCOMES, topic_spec

if TYPE_CHECKING:  # the simulator is app-side code: imported only when the demo runs
    from llmpulse.simulator.fleet import FleetReport, FleetScenario

EXAMPLES = Path(str(resources.files("llmpulse.schemas") / "examples" / "invalid"))


def _invalid_examples() -> list[Path]:
    return sorted(EXAMPLES.glob("outcome_*"))


PRICING_FILE = Path(str(resources.files("llmpulse.examples") / "pricing.yaml"))
DEMO_WINDOW = 10
PROMPT = "support-answer"
#: Built-in difference between the A/B versions: share of answers rejected by the
#: content filter (returned to the caller, ignored by the breaker) and mean feedback.
REJECT_RATE = {1: 0.12, 2: 0.03}
FEEDBACK_MEAN = {1: 3.4, 2: 3.9}
INSTANCES = 3


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
    local_prometheus = settings.prometheus_url is None  # reads the workers' targets file
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

    from llmpulse.devstack.simulate import FAST_BREAKER

    await _prepare_prompt(settings)
    breaker = supervisor.start_worker(
        settings,
        "breaker",
        _say,
        LLMPULSE_BREAKER_CONFIG_FILE=str(FAST_BREAKER),
        LLMPULSE_BREAKER_TICK_SECONDS="0.2",
    )
    prompts = supervisor.start_worker(
        settings,
        "prompts",
        _say,
        LLMPULSE_PROMPT_WINDOWS=f"[{DEMO_WINDOW}]",
        LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS="2",
    )
    stop = asyncio.Event()
    demo_group = f"{settings.consumer_group_prefix}.demo"
    sinks = build_sinks(
        settings,
        client,
        max_seconds=0.5,
        groups={USAGE_FLOW: demo_group, TRANSITIONS_FLOW: demo_group},
    )
    usage, transitions = sinks.usage, sinks.breaker_transitions
    tasks = [asyncio.create_task(s.run(stop)) for s in sinks]
    try:
        await supervisor.wait_ready(breaker, prompts)
        period_start = datetime.now(UTC)
        scenario = _scenario(seconds, rate, seed)
        _say(
            f"==> {seconds:.0f}s of traffic from {INSTANCES} app instances using the gateway, "
            f"{rate:.0f} requests/s in all (seed {seed}); openai fails every call from "
            f"t={seconds * 0.25:.0f}s to t={seconds * 0.6:.0f}s"
        )
        stats = await _fleet(settings, scenario)
        invalid = _invalid_examples()
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
        supervisor.stop_workers(breaker, prompts)

    period_end = datetime.now(UTC) + timedelta(seconds=1)
    period = {"start": period_start, "end": period_end}
    _print_timeline(client, period_start, period_end)
    _print_ledger(client, period)
    _print_availability(stats)
    scraped = await _print_prometheus(settings, period_start, period_end)
    await _print_ab_verdict(settings, client, period_start, period_end)
    report = reports.cost_report(
        client, period_start, period_end, default_rate=settings.chargeback_default_rate
    )
    _say()
    _say(render_table(report))
    csv_path = settings.state_dir / "reports" / f"cost-allocation-{period_start:%Y%m%dT%H%M%S}.csv"
    owner_only.private_dir(csv_path.parent)
    owner_only.write_text(csv_path, render_csv(report))
    _say(f"==> cost allocation CSV written to {csv_path}")
    u = usage.stats
    ok = (
        u.inserted + u.duplicates + u.conflicts == expected_outcomes
        and u.dead_lettered == len(invalid)
        and report.grand_total("requests") == u.inserted
        and (scraped or not local_prometheus)
    )
    _say(
        f"==> {'done' if ok else 'INCOMPLETE'} in {time.monotonic() - started:.1f}s: "
        f"{u.inserted} usage rows, {u.dead_lettered} events in "
        f"{settings.topic(topic_spec(OUTCOMES).dlq)}, "
        f"{transitions.stats.inserted} breaker transitions"
    )
    return 0 if ok else 1


async def _prepare_prompt(settings: Settings) -> None:
    """Two versions of the demo prompt in a 50/50 A/B test (idempotent across runs)."""
    state = await ops.read_registry(settings)
    if PROMPT not in state:
        for version, text in ((1, "Answer the customer briefly."), (2, "Answer step by step.")):
            events = plan_create(
                state, PROMPT, VersionRecord(version, text, temperature=Decimal("0.3"))
            )
            await ops.append(settings, events)
            state = await ops.read_registry(settings)
    await ops.append(settings, plan_activate(state, PROMPT, 1, None))
    state = await ops.read_registry(settings)
    await ops.append(settings, plan_activate(state, PROMPT, 2, Decimal("0.5")))
    _say(f"==> prompt {PROMPT!r}: v1 and v2 active, 50/50 A/B test (sticky per subject)")


def _scenario(seconds: float, rate: float, seed: int) -> FleetScenario:
    from llmpulse.devstack.simulate import default_scenario
    from llmpulse.simulator.providers import Fault, FaultKind

    outage = Fault(FaultKind.outage, seconds * 0.25, seconds * 0.6)
    return default_scenario(
        instances=INSTANCES,
        seconds=seconds,
        rate=rate / INSTANCES,
        seed=seed,
        faults=[("openai", outage)],
        error_rates={},
        prompt_name=PROMPT,
        reject_rates=REJECT_RATE,
        feedback_means=FEEDBACK_MEAN,
    )


async def _fleet(settings: Settings, scenario: FleetScenario) -> FleetReport:
    from llmpulse.devstack.simulate import gateway_config
    from llmpulse.simulator.fleet import run_fleet

    return await run_fleet(
        gateway_config(settings),
        scenario,
        spool_root=settings.state_dir / "gateway-spool",
        progress=lambda line: _say("    " + line),
    )


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
    state = await ops.read_registry(settings)
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


async def _print_prometheus(settings: Settings, start: datetime, end: datetime) -> bool:
    """What the real Prometheus scraped from the workers during the run (True if any)."""
    span = f"{max(1, int((end - start).total_seconds()))}s"
    queries = {
        "events consumed per worker": f"max_over_time(llmpulse_events_consumed_total[{span}])",
        "openai breaker state, highest": (
            f'max_over_time(circuit_breaker_state{{provider="openai"}}[{span}])'
        ),
    }
    _say()
    _say(f"Prometheus ({settings.prometheus_url}, scraping each worker's /metrics)")
    found = False
    for title, query in queries.items():
        url = f"{settings.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": f"sum by (worker, topic, provider) ({query})", "time": end.timestamp()}
        )
        try:
            result = (await asyncio.to_thread(_prometheus_get, url))["data"]["result"]
        except (OSError, ValueError, KeyError) as exc:
            _say(f"  {title}: query failed ({exc})")
            continue
        for series in result:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(series["metric"].items()))
            _say(f"  {title} [{labels}]: {float(series['value'][1]):,.0f}")
            found = True
        if not result:
            _say(f"  {title}: no samples")
    if not found:
        _say(
            "  (an external Prometheus scrapes only what it is configured for; the "
            f"workers list their endpoints in {settings.state_dir / 'prometheus'}/targets.json)"
        )
    return found


def _prometheus_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local Prometheus
        return json.loads(response.read())


def _print_availability(stats: FleetReport) -> None:
    _say()
    _say("Fleet (gateway) report")
    for line in stats.summary():
        _say("  " + line)
