"""Fleet simulator: N app instances using the real gateway against simulated providers.

Each instance is an asyncio task with everything a real app instance has of its
own: a Redis client, a ``BreakerView`` (shared snapshots + local breakers), an
``EventEmitter`` (own producer and disk spool), a ``PromptSelector`` and a
``ProviderOrchestrator``. They share only the simulated providers (so calls are
counted at the provider, fleet-wide) and the real Kafka, Redis and breaker
worker. Traffic is open-loop: requests start at a fixed rate whatever the
latency, like independent users.

An observer (one more ``BreakerView``) records every snapshot announced on the
breaker channel: the fleet timeline that the report (and the acceptance tests)
relate provider calls to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from llmpulse.core.breaker import BreakerConfig
from llmpulse.gateway.breaker_view import BreakerView, Source
from llmpulse.gateway.config import GatewayConfig, redis_client
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.gateway.orchestrator import (
    AllProvidersFailed,
    AttemptRecord,
    LLMCall,
    Provider,
    ProviderOrchestrator,
    RequestRejected,
)
from llmpulse.gateway.prompts import PromptSelector, PromptUnavailable
from llmpulse.schemas.events import BreakerSnapshot, BreakerState, Feedback, Operation
from llmpulse.simulator.providers import ProviderCallRecord, ProviderSpec, SimulatedProvider

log = logging.getLogger(__name__)
_OPERATIONS = (Operation.completion, Operation.embedding, Operation.moderation)
_OPERATION_WEIGHTS = (6, 3, 1)


@dataclass(frozen=True)
class FleetScenario:
    """What to simulate. ``rate`` is requests per second per instance."""

    providers: tuple[ProviderSpec, ...]
    instances: int = 3
    seconds: float = 60.0
    rate: float = 30.0
    seed: int = 0
    prompt_name: str | None = None
    feedback_rate: float = 0.3
    #: Mean feedback score per prompt version (the built-in A/B difference).
    feedback_means: Mapping[int, float] = field(default_factory=dict)
    subjects: int = 100_000
    #: Organizations the requests are billed to (uniformly).
    orgs: tuple[str, ...] = ("sim-org",)
    #: Local fallback breakers (used when the shared view is stale).
    local_breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        if self.instances < 1 or self.seconds <= 0 or self.rate <= 0 or not self.providers:
            raise ValueError("instances >= 1, seconds > 0, rate > 0 and a provider are required")


@dataclass(frozen=True)
class Served:
    at: float  # request start, seconds into the run
    added_latency_ms: float


@dataclass
class FleetReport:
    """What happened, fleet-wide. Times are seconds since the run started."""

    requests: int = 0
    succeeded: int = 0
    rejected: int = 0  # non-retryable provider answers returned to the caller
    failed: int = 0  # no provider could serve
    failovers: int = 0
    served: list[Served] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    probes: Counter[str] = field(default_factory=Counter)
    versions: Counter[int] = field(default_factory=Counter)
    #: (t, provider, state, version) as announced on the breaker channel.
    timeline: list[tuple[float, str, BreakerState, int]] = field(default_factory=list)
    #: (t, instance, provider, source) sampled every 0.5 s.
    view_sources: list[tuple[float, str, str, Source]] = field(default_factory=list)
    provider_calls: dict[str, list[ProviderCallRecord]] = field(default_factory=dict)
    #: Fleet-wide probe permits per half-open period, as announced per provider.
    probe_permits: dict[str, int] = field(default_factory=dict)
    emitted: int = 0
    spooled: int = 0
    replayed: int = 0
    wall_start: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: ``time.monotonic()`` at the start of the run (report times are relative to it).
    started: float = field(default_factory=time.monotonic)

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.requests if self.requests else 0.0

    def added_latency(self, q: float, since: float = 0.0) -> float | None:
        """The ``q`` quantile (0..1) of added latency of requests started at ``since`` or later."""
        values = sorted(s.added_latency_ms for s in self.served if s.at >= since)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def first(self, provider: str, state: BreakerState) -> float | None:
        """When ``provider`` was first announced in ``state``."""
        return next((t for t, p, s, _ in self.timeline if p == provider and s is state), None)

    def summary(self) -> list[str]:
        p = [self.added_latency(q) for q in (0.5, 0.95, 0.99)]
        latency = " / ".join("-" if v is None else f"{v:.1f}" for v in p)
        calls = {name: len(c) for name, c in sorted(self.provider_calls.items())}
        return [
            f"requests {self.requests}: {self.succeeded} succeeded ({self.success_rate:.4%}), "
            f"{self.rejected} rejected by the provider (returned, not retried), "
            f"{self.failed} failed",
            f"served by a fallback provider {self.failovers}; "
            f"added latency p50/p95/p99 {latency} ms",
            f"attempts per provider {dict(self.attempts)}; probes {dict(self.probes) or 'none'}",
            f"calls received by the providers {calls}",
            f"events emitted {self.emitted}, spooled {self.spooled}, replayed {self.replayed}",
        ]


def half_open_periods(
    report: FleetReport, provider: str
) -> list[tuple[float, float, BreakerState | None]]:
    """(start, end, next state) of each half-open period of ``provider`` in the timeline."""
    events = [(t, s) for t, p, s, _ in report.timeline if p == provider]
    out = []
    for i, (t, s) in enumerate(events):
        if s is BreakerState.half_open:
            nxt = events[i + 1] if i + 1 < len(events) else (float("inf"), None)
            out.append((t, nxt[0], nxt[1]))
    return out


async def run_fleet(
    gw: GatewayConfig,
    scenario: FleetScenario,
    *,
    spool_root: Path,
    progress: Callable[[str], None] | None = None,
) -> FleetReport:
    """Run ``scenario`` against the services in ``gw``; returns the fleet report."""
    report = FleetReport()
    started = report.started

    def clock() -> float:
        return time.monotonic() - started

    rng = random.Random(scenario.seed)
    sims = {
        spec.name: SimulatedProvider(spec, clock, random.Random(rng.getrandbits(64)))
        for spec in scenario.providers
    }
    report.provider_calls = {name: sim.calls for name, sim in sims.items()}

    def taken(snap: BreakerSnapshot) -> None:
        report.timeline.append((clock(), snap.provider, snap.state, snap.version))
        report.probe_permits[snap.provider] = snap.probe_permits

    # The fleet timeline: a breaker view of its own, recording every announcement.
    observer_redis = redis_client(gw)
    observer = BreakerView(observer_redis, gw, list(sims), on_snapshot=taken)
    await observer.start()
    views: list[BreakerView] = []
    reporter = asyncio.create_task(_progress(report, views, clock, scenario, progress))
    try:
        # A TaskGroup: if one instance fails, the others are cancelled (and each
        # closes its emitter, so nothing stays queued or locked).
        async with asyncio.TaskGroup() as group:
            for i in range(scenario.instances):
                instance = _Instance(i, gw, scenario, sims, clock, report, spool_root, views)
                group.create_task(instance.run())
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await observer.close()
        await observer_redis.aclose()
    return report


async def _progress(
    report: FleetReport,
    views: list[BreakerView],
    clock: Callable[[], float],
    scenario: FleetScenario,
    say: Callable[[str], None] | None,
) -> None:
    """Sample every instance's view sources; print a progress line every second."""
    tick = 0
    while True:
        await asyncio.sleep(0.5)
        tick += 1
        now = clock()
        for i, view in enumerate(views):
            for h in view.health():
                report.view_sources.append((now, f"sim-{i}", h.provider, h.source))
        if say is not None and tick % 2 == 0 and views:
            states = " ".join(
                f"{h.provider}={h.state.value}({h.source.value})" for h in views[0].health()
            )
            say(
                f"t={now:5.1f}s requests={report.requests} ok={report.succeeded} "
                f"failovers={report.failovers} {states}"
            )


class _Instance:
    """One simulated app instance with its own gateway objects."""

    def __init__(
        self,
        index: int,
        gw: GatewayConfig,
        scenario: FleetScenario,
        sims: Mapping[str, SimulatedProvider],
        clock: Callable[[], float],
        report: FleetReport,
        spool_root: Path,
        views: list[BreakerView],
    ) -> None:
        self.name = f"sim-{index}"
        self.config = gw.model_copy(
            update={"instance_id": self.name, "spool_dir": spool_root / self.name}
        )
        self.scenario = scenario
        self.rng = random.Random(f"{scenario.seed}:{index}")
        self.clock = clock
        self.report = report
        self.providers = [
            Provider(
                name=spec.name,
                model=spec.models[Operation.completion],
                models=dict(spec.models),
                call=sims[spec.name].for_instance(self.name),
                priority=spec.priority,
                timeout_seconds=5.0,
            )
            for spec in scenario.providers
        ]
        self.redis = redis_client(self.config)
        self.view = BreakerView(
            self.redis,
            self.config,
            [p.name for p in self.providers],
            breaker_config=scenario.local_breaker,
        )
        views.append(self.view)
        self.emitter = EventEmitter(self.config)
        self.selector = PromptSelector(self.redis, self.config)
        self.orchestrator = ProviderOrchestrator(
            self.providers,
            view=self.view,
            emitter=self.emitter,
            rng=random.Random(self.rng.getrandbits(64)),
            deadline_seconds=10.0,
        )

    async def run(self) -> None:
        pending: set[asyncio.Task[None]] = set()
        try:
            await self.emitter.start()
            await self.view.start()
            n = 0
            begin = self.clock()
            while (elapsed := self.clock() - begin) < self.scenario.seconds:
                task = asyncio.create_task(self._one())
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
                await asyncio.sleep(max(0.0, n / self.scenario.rate - elapsed))
            if pending:
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            await self.view.close()
            await self.emitter.close()
            self.report.emitted += self.emitter.emitted
            self.report.spooled += self.emitter.spooled
            self.report.replayed += self.emitter.replayed
            await self.redis.aclose()

    async def _one(self) -> None:
        rng, sc, report = self.rng, self.scenario, self.report
        subject = f"user-{rng.randrange(sc.subjects)}"
        version: int | None = None
        if sc.prompt_name:
            with contextlib.suppress(PromptUnavailable):
                version = (await self.selector.select(sc.prompt_name, subject)).version.version
        call = LLMCall(
            org_id=rng.choice(sc.orgs),
            operation=rng.choices(_OPERATIONS, weights=_OPERATION_WEIGHTS)[0],
            subject_id=subject,
            prompt_name=sc.prompt_name if version is not None else None,
            prompt_version=version,
        )
        at = self.clock()
        report.requests += 1
        if version is not None:
            report.versions[version] += 1
        attempts: tuple[AttemptRecord, ...]
        try:
            result = await self.orchestrator.execute(call)
        except RequestRejected as exc:
            report.rejected += 1
            attempts = exc.attempts
        except AllProvidersFailed as exc:
            report.failed += 1
            attempts = exc.attempts
        else:
            attempts = result.attempts
            report.succeeded += 1
            report.failovers += result.failed_over
            report.served.append(Served(at, result.added_latency_ms))
            if version is not None and rng.random() < sc.feedback_rate:
                self._feedback(result.request_id, call, version)
        for a in attempts:
            report.attempts[a.provider] += 1
            report.probes[a.provider] += a.probe

    def _feedback(self, request_id: uuid.UUID, call: LLMCall, version: int) -> None:
        mean = self.scenario.feedback_means.get(version, 3.5)
        score = min(5.0, max(0.0, self.rng.gauss(mean, 0.8)))
        self.emitter.emit(
            Feedback(
                event_id=uuid.uuid4(),
                event_time=datetime.now(UTC),
                request_id=request_id,
                org_id=call.org_id,
                prompt_name=call.prompt_name or "",
                prompt_version=version,
                score=Decimal(round(score * 2)) / 2,
            )
        )


__all__ = ["FleetReport", "FleetScenario", "Served", "half_open_periods", "run_fleet"]
