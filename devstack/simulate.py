"""``llmpulse simulate``: the fleet simulator on the configured (or local) stack.

This module bridges the operator side (``processors``: settings, local stack,
worker processes) and the app side (``gateway``, through ``llmpulse.simulator.fleet``),
so that neither of those packages imports the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from llmpulse.devstack import stack
from llmpulse.gateway.config import GatewayConfig
from llmpulse.processors import supervisor
from llmpulse.processors.errors import InputError
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.topics import create_topics
from llmpulse.schemas.events import Operation
from llmpulse.simulator import samples
from llmpulse.simulator.fleet import FleetReport, FleetScenario, half_open_periods, run_fleet
from llmpulse.simulator.providers import Fault, FaultKind, ProviderSpec

#: Short breaker durations so an outage plays out in seconds (demo and simulate).
FAST_BREAKER = Path(str(resources.files("llmpulse.examples") / "breaker-fast.yaml"))
#: Preferred first: the simulated providers and their models per operation are the
#: ones the price list (``examples/pricing.yaml``) and the sample events know.
PROVIDERS = ("openai", "anthropic")
_OPERATIONS = (Operation.completion, Operation.embedding, Operation.moderation)
MODELS = {p: dict(zip(_OPERATIONS, samples.MODELS[p], strict=True)) for p in PROVIDERS}
_FAULT = re.compile(r"^([a-z0-9_-]+):(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)(?::(\d+(?:\.\d+)?))?$")


class ScenarioError(InputError, ValueError):
    """A fault or provider option the simulator cannot use (one-line message)."""


def parse_fault(text: str, kind: FaultKind) -> tuple[str, Fault]:
    """``PROVIDER:START-END[:RETRY_AFTER]`` (seconds into the run) -> (provider, fault)."""
    m = _FAULT.match(text)
    if not m:
        raise ScenarioError(f"fault {text!r}: expected PROVIDER:START-END, e.g. openai:10-40")
    provider, start, end, retry = m.groups()
    if provider not in PROVIDERS:
        raise ScenarioError(f"fault {text!r}: unknown provider (one of {', '.join(PROVIDERS)})")
    if float(end) <= float(start):
        raise ScenarioError(f"fault {text!r}: END must be after START")
    return provider, Fault(kind, float(start), float(end), float(retry or 2.0))


def parse_error_rate(text: str) -> tuple[str, float]:
    """``PROVIDER:RATE`` (share of calls answered with a 500, 0 to 1)."""
    provider, _, rate = text.partition(":")
    if provider not in PROVIDERS:
        raise ScenarioError(
            f"error rate {text!r}: unknown provider (one of {', '.join(PROVIDERS)})"
        )
    try:
        value = float(rate)
    except ValueError:
        raise ScenarioError(
            f"error rate {text!r}: expected PROVIDER:RATE, e.g. openai:0.05"
        ) from None
    if not 0 <= value <= 1:
        raise ScenarioError(f"error rate {text!r}: RATE must be between 0 and 1")
    return provider, value


@dataclass(frozen=True)
class ProviderOptions:
    """Per-provider knobs from the command line."""

    faults: dict[str, list[Fault]]
    error_rates: dict[str, float]
    reject_rates: dict[int, float]


def provider_specs(options: ProviderOptions) -> tuple[ProviderSpec, ...]:
    """The simulated providers: openai preferred (priority 0), anthropic as fallback."""
    return tuple(
        ProviderSpec(
            name=name,
            models=MODELS[name],
            priority=i,
            latency_median_ms=(150.0, 180.0)[i],
            error_rate=options.error_rates.get(name, 0.0),
            faults=tuple(options.faults.get(name, ())),
            reject_rates=options.reject_rates,
        )
        for i, name in enumerate(PROVIDERS)
    )


def gateway_config(settings: Settings) -> GatewayConfig:
    """The gateway's view of the processors' settings (same topics, keys and services)."""
    return GatewayConfig(
        bootstrap_servers=kafka.bootstrap(settings),
        redis_url=redis_client.url(settings),
        topic_prefix=settings.topic_prefix,
        spool_dir=settings.state_dir / "gateway-spool",
        kafka_security=settings.kafka_security,
    )


async def simulate(
    settings: Settings,
    scenario: FleetScenario,
    *,
    breaker_worker: bool = True,
    say: Callable[[str], None] = print,
) -> FleetReport:
    """Bring the stack up, optionally run a breaker worker, run the fleet, print the report."""
    ep = stack.up(settings, progress=lambda m: say(f"    {m}"))
    settings = stack.with_endpoints(settings, ep)
    await create_topics(settings)
    procs = []
    if breaker_worker:
        config = (settings.breaker_config_file or FAST_BREAKER).absolute()
        procs.append(
            supervisor.start_worker(
                settings,
                "breaker",
                say,
                LLMPULSE_BREAKER_CONFIG_FILE=str(config),
                LLMPULSE_BREAKER_TICK_SECONDS="0.2",
            )
        )
        await supervisor.wait_ready(*procs)
    try:
        say(
            f"==> {scenario.instances} app instances x {scenario.rate:g} requests/s for "
            f"{scenario.seconds:g}s (seed {scenario.seed})"
        )
        report = await run_fleet(
            gateway_config(settings),
            scenario,
            spool_root=settings.state_dir / "gateway-spool",
            progress=lambda line: say("    " + line),
        )
    finally:
        supervisor.stop_workers(*procs)
    for line in render(report, scenario):
        say(line)
    return report


def render(report: FleetReport, scenario: FleetScenario) -> list[str]:
    """The human-readable fleet report: totals, breaker timeline, probes per half-open period."""
    lines = ["", "Fleet report", *("  " + s for s in report.summary())]
    lines += ["", "Breaker timeline (as announced in Redis)"]
    for t, provider, state, version in report.timeline:
        lines.append(f"  t={t:6.2f}s  {provider:<10} v{version:<3} {state.value}")
    for spec in scenario.providers:
        periods = half_open_periods(report, spec.name)
        if not periods:
            continue
        calls = report.provider_calls[spec.name]
        counts = [sum(start <= c.at < end for c in calls) for start, end, _ in periods]
        lines.append(
            f"  {spec.name}: {len(periods)} half-open periods, calls received per period "
            f"{counts} (fleet-wide limit {report.probe_permits.get(spec.name, 1)} each)"
        )
    return lines


def default_scenario(
    *,
    instances: int,
    seconds: float,
    rate: float,
    seed: int,
    faults: Sequence[tuple[str, Fault]],
    error_rates: dict[str, float],
    prompt_name: str | None = None,
    reject_rates: dict[int, float] | None = None,
    feedback_means: dict[int, float] | None = None,
) -> FleetScenario:
    """A scenario over the two standard simulated providers."""
    by_provider: dict[str, list[Fault]] = {}
    for provider, fault in faults:
        by_provider.setdefault(provider, []).append(fault)
    return FleetScenario(
        providers=provider_specs(ProviderOptions(by_provider, error_rates, reject_rates or {})),
        instances=instances,
        seconds=seconds,
        rate=rate,
        seed=seed,
        prompt_name=prompt_name,
        feedback_means=feedback_means or {},
        orgs=samples.ORGS,
    )


__all__ = [
    "FAST_BREAKER",
    "ScenarioError",
    "default_scenario",
    "gateway_config",
    "parse_error_rate",
    "parse_fault",
    "render",
    "simulate",
]
