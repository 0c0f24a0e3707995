"""Simulated LLM providers: latency distributions, error rates, scripted faults.

A ``SimulatedProvider`` is shared by every simulated app instance, so it counts
the calls the whole fleet sends it (``calls``: start time and instance), which
is how probe limits are checked "at the provider".
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from llmpulse.gateway.errors import ProviderError
from llmpulse.gateway.orchestrator import Completion, LLMCall, ProviderCall
from llmpulse.schemas.events import ErrorClass, Operation


class FaultKind(StrEnum):
    outage = "outage"  # every call fails with 503 after a short delay
    rate_limit = "rate_limit"  # every call gets 429 with Retry-After
    slow = "slow"  # every call takes ``latency_ms`` longer


@dataclass(frozen=True)
class Fault:
    """A scripted fault of one provider from ``start`` to ``end`` seconds into the run."""

    kind: FaultKind
    start: float
    end: float
    retry_after_seconds: float = 2.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.end <= self.start or self.start < 0:
            raise ValueError(f"fault {self.kind}: needs 0 <= start < end")


@dataclass(frozen=True)
class ProviderSpec:
    """How a simulated provider behaves.

    Latency is log-normal around ``latency_median_ms`` (``latency_sigma``);
    ``error_rate`` of calls fail with 503 outside faults; ``reject_rates`` maps a
    prompt version to the share of answers rejected by the content filter (400);
    prices are USD per million input and output tokens.
    """

    name: str
    models: Mapping[Operation, str]
    priority: int = 0
    latency_median_ms: float = 120.0
    latency_sigma: float = 0.5
    error_rate: float = 0.0
    faults: tuple[Fault, ...] = ()
    reject_rates: Mapping[int, float] = field(default_factory=dict)
    input_price_per_million: Decimal = Decimal("2")
    output_price_per_million: Decimal = Decimal("8")


@dataclass(frozen=True)
class ProviderCallRecord:
    at: float  # seconds into the run
    instance: str
    failed: bool


class SimulatedProvider:
    """A provider endpoint shared by the fleet; ``for_instance`` gives a call function."""

    def __init__(self, spec: ProviderSpec, clock: Callable[[], float], rng: random.Random) -> None:
        self.spec = spec
        self._clock = clock  # seconds since the run started
        self._rng = rng
        self.calls: list[ProviderCallRecord] = []

    def fault_at(self, t: float) -> Fault | None:
        for f in self.spec.faults:
            if f.start <= t < f.end:
                return f
        return None

    def for_instance(self, instance: str) -> ProviderCall:
        async def call(request: LLMCall, model: str) -> Completion:
            return await self._serve(instance, request)

        return call

    async def _serve(self, instance: str, request: LLMCall) -> Completion:
        t = self._clock()
        fault = self.fault_at(t)
        rng = self._rng
        failed = fault is not None and fault.kind is not FaultKind.slow
        self.calls.append(ProviderCallRecord(t, instance, failed))
        if fault is not None and fault.kind is FaultKind.outage:
            await asyncio.sleep(rng.uniform(0.002, 0.02))
            raise ProviderError("service unavailable", http_status=503)
        if fault is not None and fault.kind is FaultKind.rate_limit:
            await asyncio.sleep(0.002)
            raise ProviderError(
                "rate limited", http_status=429, retry_after=str(fault.retry_after_seconds)
            )
        latency = self.spec.latency_median_ms * math.exp(rng.gauss(0, self.spec.latency_sigma))
        if fault is not None:
            latency += fault.latency_ms
        await asyncio.sleep(latency / 1000)
        if rng.random() < self.spec.error_rate:
            raise ProviderError("internal error", http_status=500)
        version = request.prompt_version
        if version is not None and rng.random() < self.spec.reject_rates.get(version, 0.0):
            raise ProviderError(
                "content filter", http_status=400, error_class=ErrorClass.content_policy
            )
        embedding = request.operation is Operation.embedding
        input_tokens = rng.randint(50, 3000)
        output_tokens = 0 if embedding else rng.randint(1, 600)
        cost = (
            input_tokens * self.spec.input_price_per_million
            + output_tokens * self.spec.output_price_per_million
        ) / Decimal(1_000_000)
        return Completion(
            content=None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            ttft_ms=None if embedding else round(latency * 0.3),
        )


__all__ = ["Fault", "FaultKind", "ProviderCallRecord", "ProviderSpec", "SimulatedProvider"]
