"""Fleet acceptance: 3 app instances on the real gateway, real Kafka, Redis and breaker worker.

Scenarios (bounded, loopback only):

* provider openai fails every call for 60 s: availability via fallback, probes
  counted at the simulated provider per half-open period, added latency once
  the shared breaker is open, openai used again after it recovers;
* Redis stopped mid-run: instances keep serving on local breakers and return
  to the shared view when Redis is back;
* Kafka stopped for 30 s mid-run: every request/outcome/feedback event reaches
  Kafka exactly once (by event id).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from llmpulse.devstack import stack
from llmpulse.devstack.simulate import FAST_BREAKER, default_scenario, gateway_config
from llmpulse.processors import supervisor
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.schemas.events import BreakerState
from llmpulse.schemas.topics import FEEDBACK, OUTCOMES, REQUESTS, topic_spec
from llmpulse.simulator.fleet import FleetReport, FleetScenario, half_open_periods, run_fleet
from llmpulse.simulator.providers import Fault, FaultKind

pytestmark = [pytest.mark.stack, pytest.mark.timeout(420)]

#: A call decided by an instance a moment before the observer saw a transition
#: (separate Redis connections deliver the same announcement a few ms apart).
SKEW = 0.05


async def _run(
    settings: Settings,
    scenario: FleetScenario,
    tmp_path: Path,
    chaos: list[tuple[float, str, str]] = (),  # type: ignore[assignment]
    local_stack: Settings | None = None,
) -> tuple[FleetReport, dict[str, float]]:
    """Run the fleet with a breaker worker; ``chaos``: (t, stop|start, service) actions.

    ``local_stack``: the settings the session stack was started with (services
    are stopped and started through them).
    """
    breaker = supervisor.start_worker(
        settings,
        "breaker",
        lambda m: None,
        LLMPULSE_BREAKER_CONFIG_FILE=str(FAST_BREAKER),
        LLMPULSE_BREAKER_TICK_SECONDS="0.2",
    )
    done: dict[str, float] = {}
    try:
        await supervisor.wait_ready(breaker)
        begin = time.monotonic()

        async def inject() -> None:
            for at, action, service in chaos:
                await asyncio.sleep(max(0.0, at - (time.monotonic() - begin)))
                if action == "stop":
                    await asyncio.to_thread(_stop, local_stack, service)
                else:
                    await asyncio.to_thread(_start, local_stack, service)
                done[f"{action} {service}"] = time.monotonic() - begin

        try:
            report, _ = await asyncio.gather(
                run_fleet(gateway_config(settings), scenario, spool_root=tmp_path / "spool"),
                inject(),
            )
        finally:
            for _, action, service in chaos:
                if action == "stop":
                    await asyncio.to_thread(_start, local_stack, service)
        offset = report.started - begin  # report times are relative to report.started
        return report, {k: v - offset for k, v in done.items()}
    finally:
        supervisor.stop_workers(breaker)


def _stop(local_stack: Settings | None, service: str) -> None:
    assert local_stack is not None
    stack.stop_service(local_stack, service)


def _start(local_stack: Settings | None, service: str) -> None:
    assert local_stack is not None
    stack.start_service(local_stack, service, lambda m: None)


async def test_outage_of_the_preferred_provider(settings: Settings, tmp_path: Path) -> None:
    outage = Fault(FaultKind.outage, 5, 65)
    scenario = default_scenario(
        instances=3, seconds=85, rate=30, seed=11, faults=[("openai", outage)], error_rates={}
    )
    report, _ = await _run(settings, scenario, tmp_path)
    print("\n".join(report.summary()))

    # Availability through the fallback.
    assert report.requests > 7000
    assert report.success_rate >= 0.9995, report.summary()

    # After the shared breaker opens, openai receives only probes: at most the
    # permits per half-open period, none while open.
    opened = report.first("openai", BreakerState.open)
    assert opened is not None
    assert outage.start < opened < outage.start + 5
    periods = half_open_periods(report, "openai")
    in_outage = [p for p in periods if p[0] < outage.end]
    assert len(in_outage) >= 4  # 3 s, 6 s, 8 s, 8 s... open durations within 60 s
    permits = report.probe_permits["openai"]
    calls = [c for c in report.provider_calls["openai"] if opened + SKEW <= c.at < outage.end]
    per_period = [
        sum(start - SKEW <= c.at < end + SKEW for c in calls) for start, end, _ in in_outage
    ]
    print("openai calls per half-open period during the outage:", per_period)
    assert all(n <= permits for n in per_period), per_period
    assert sum(per_period) == len(calls)  # no call outside a half-open period
    assert len(calls) >= 1  # probes were actually sent

    # Routing around an open breaker costs (almost) nothing.
    p99 = report.added_latency(0.99, since=opened + 1)
    assert p99 is not None
    assert p99 < 50, p99

    # Used again after recovery: a probe closes the breaker, then normal traffic.
    closed_again = [
        t
        for t, p, s, _ in report.timeline
        if p == "openai" and s is BreakerState.closed and t > outage.end
    ]
    assert closed_again, report.timeline
    after = [c for c in report.provider_calls["openai"] if c.at > closed_again[0] + 1]
    assert len(after) > 100
    assert not any(c.failed for c in after)


async def test_redis_outage_falls_back_to_local_breakers(
    settings: Settings, base_settings: Settings, tmp_path: Path
) -> None:
    outage = Fault(FaultKind.outage, 10, 18)
    scenario = default_scenario(
        instances=3, seconds=36, rate=20, seed=12, faults=[("openai", outage)], error_rates={}
    )
    report, done = await _run(
        settings,
        scenario,
        tmp_path,
        chaos=[(7, "stop", "redis"), (22, "start", "redis")],
        local_stack=base_settings,
    )
    print("\n".join(report.summary()), done)
    down, up = done["stop redis"], done["start redis"]
    # While Redis is down (after the staleness bound) every instance decides locally...
    local = [s for t, _, _, s in report.view_sources if down + 3.5 < t < up]
    assert local
    assert all(s == "local" for s in local)
    # ...and keeps serving: the local breakers open on openai's failures.
    served_while_down = [s for s in report.served if down < s.at < up]
    assert len(served_while_down) > 0.9 * 3 * 20 * (up - down)
    assert report.success_rate >= 0.999, report.summary()
    opened_calls = [c for c in report.provider_calls["openai"] if outage.start < c.at < outage.end]
    assert len(opened_calls) < 0.2 * 3 * 20 * (outage.end - outage.start)  # not every request
    # When Redis is back, the shared view is picked up again.
    later = [s for t, _, _, s in report.view_sources if t > up + 3]
    assert later
    assert all(s == "shared" for s in later)


async def test_kafka_outage_loses_and_duplicates_no_event(
    settings: Settings, base_settings: Settings, tmp_path: Path
) -> None:
    scenario = default_scenario(
        instances=3,
        seconds=60,  # 22 s after the restart for the replay, also when Kafka starts slowly
        rate=15,
        seed=13,
        faults=[],
        error_rates={"openai": 0.02},
        prompt_name=None,
    )
    report, done = await _run(
        settings,
        scenario,
        tmp_path,
        chaos=[(8, "stop", "kafka"), (38, "start", "kafka")],
        local_stack=base_settings,
    )
    print("\n".join(report.summary()), done)
    assert done["start kafka"] - done["stop kafka"] >= 29
    assert report.spooled > 0
    assert report.replayed > 0
    ids: Counter[str] = Counter()
    for name in (REQUESTS, OUTCOMES, FEEDBACK):
        spec = topic_spec(name)
        for event in await kafka.read_from_start(
            settings, settings.topic(name), spec.partitions, spec.model
        ):
            ids[str(event.model_dump()["event_id"])] += 1
    assert sum(ids.values()) == report.emitted
    assert [k for k, n in ids.items() if n > 1] == []
    attempts = sum(report.attempts.values())
    assert report.emitted >= 2 * attempts  # a request and an outcome per attempt


def test_simulate_command_runs_on_the_stack(settings: Settings, tmp_path: Path) -> None:
    """``llmpulse simulate`` end to end: its own breaker worker, report on stdout, exit 0."""
    env = settings.child_env(LLMPULSE_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmpulse",
            "simulate",
            "--instances",
            "2",
            "--seconds",
            "8",
            "--rate",
            "20",
            "--outage",
            "openai:1-6",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "starting the breaker worker" in out
    assert re.search(r"requests \d+: \d+ succeeded \(100\.0000%\)", out), out[-2000:]
    assert re.search(r"openai\s+v\d+\s+open", out), out[-2000:]  # the timeline shows the opening
