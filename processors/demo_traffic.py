"""Demo traffic: app instances that fail over on the fleet-wide breaker view.

A small stand-in for the gateway SDK's fleet simulator: every simulated
request picks a version of the ``support-answer`` prompt sticky per subject
from the registry view in Redis, reads the shared breaker state (both
refreshed every 100 ms),
calls the preferred provider unless its breaker is open, sends a probe only
with a fleet-wide permit when it is half-open, and fails over to the next
provider on a server error. Every attempt becomes an ``LLMOutcome`` on
``llm.outcomes.v1``. The preferred provider suffers a scripted outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis

from processors import kafka
from processors.codec import encode
from processors.samples import MODELS, ORGS
from processors.settings import Settings
from schemas import serving
from schemas.events import (
    BreakerSnapshot,
    BreakerState,
    ErrorClass,
    Feedback,
    LLMOutcome,
    Operation,
    OutcomeStatus,
)
from schemas.topics import FEEDBACK, OUTCOMES

PROVIDERS = ("openai", "anthropic")
PROMPT = "support-answer"
#: Built-in difference between the A/B versions: share of answers rejected by the
#: content filter (status rejected, which the breaker ignores) and mean feedback.
REJECT_RATE = {1: 0.12, 2: 0.03}
FEEDBACK_MEAN = {1: 3.4, 2: 3.9}
_OPS = (Operation.completion, Operation.embedding, Operation.moderation)


@dataclass
class TrafficStats:
    requests: int = 0
    succeeded: int = 0
    failovers: int = 0
    probes: Counter[str] = field(default_factory=Counter)
    versions: Counter[int] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)


def sticky_version(subject: str, weights: list[tuple[int, float]]) -> int:
    """Same subject, same version: a hash of (prompt, subject) over the cumulative weights."""
    digest = hashlib.sha256(f"{PROMPT}:{subject}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    total = 0.0
    for version, weight in weights:
        total += weight
        if point < total:
            return version
    return weights[-1][0]


@dataclass(frozen=True)
class Outage:
    provider: str
    start: float  # seconds after traffic start
    end: float


async def run_traffic(
    settings: Settings,
    *,
    seconds: float,
    rate: float,
    outage: Outage,
    seed: int,
    progress: asyncio.Queue[str] | None = None,
) -> TrafficStats:
    """Produce ``rate`` requests per second for ``seconds``; returns what happened."""
    rng = random.Random(seed)
    rds = aioredis.Redis.from_url(str(settings.redis_url))
    acquire = rds.register_script(serving.ACQUIRE_PERMIT)
    producer = kafka.producer(settings)
    await producer.start()
    states: dict[str, BreakerState] = {}
    versions: dict[str, int] = {}
    prompt_weights: list[tuple[int, float]] = [(1, 1.0)]
    stats = TrafficStats()
    started = time.monotonic()
    last_refresh = 0.0

    async def refresh() -> None:
        nonlocal prompt_weights
        raw_prompt = await rds.get(serving.prompt_key(settings.topic_prefix, PROMPT))
        if raw_prompt:
            view = json.loads(raw_prompt)
            prompt_weights = [(v["version"], float(v["weight"])) for v in view["versions"]]
        for p in PROVIDERS:
            raw = await rds.hget(serving.breaker_key(settings.topic_prefix, p), "snapshot")
            snap = BreakerSnapshot.model_validate_json(raw) if raw else None
            states[p] = snap.state if snap else BreakerState.closed
            versions[p] = snap.version if snap else 0

    async def emit(o: LLMOutcome) -> None:
        await producer.send(settings.topic(OUTCOMES), encode(o), key=o.provider.encode())

    async def emit_feedback(
        request_id: uuid.UUID, org: str, version: int, rng: random.Random
    ) -> None:
        score = min(5.0, max(0.0, rng.gauss(FEEDBACK_MEAN.get(version, 3.5), 0.8)))
        fb = Feedback(
            event_id=uuid.uuid4(),
            event_time=datetime.now(UTC),
            request_id=request_id,
            org_id=org,
            prompt_name=PROMPT,
            prompt_version=version,
            score=Decimal(round(score * 2) / 2).quantize(Decimal("0.1")),
        )
        await producer.send(settings.topic(FEEDBACK), encode(fb), key=PROMPT.encode())

    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if elapsed - last_refresh >= 0.1:
                await refresh()
                last_refresh = elapsed
            down = outage.start <= elapsed < outage.end
            request_id = uuid.UUID(int=rng.getrandbits(128), version=4)
            org, op_i = rng.choice(ORGS), rng.choices(range(3), weights=(6, 3, 1))[0]
            prompt_version = sticky_version(f"user-{rng.randrange(100_000)}", prompt_weights)
            stats.versions[prompt_version] += 1
            stats.requests += 1
            attempt = 0
            for provider in PROVIDERS:
                state = states.get(provider, BreakerState.closed)
                probe = False
                if state in (BreakerState.open, BreakerState.forced_open):
                    continue
                if state is BreakerState.half_open:
                    keys = serving.permit_keys(
                        settings.topic_prefix, provider, versions.get(provider, 0), 1
                    )
                    if not await acquire(keys=keys, args=[str(request_id), 5000]):
                        continue
                    probe = True
                    stats.probes[provider] += 1
                attempt += 1
                stats.attempts[provider] += 1
                failed = down and provider == outage.provider
                rejected = not failed and rng.random() < REJECT_RATE.get(prompt_version, 0.05)
                tokens = rng.randint(50, 3000)
                out = rng.randint(0, 600) if op_i == 0 and not failed else 0
                if failed:
                    status, error, http = OutcomeStatus.failure, ErrorClass.server_error, 503
                elif rejected:
                    status, error, http = OutcomeStatus.rejected, ErrorClass.content_policy, 400
                else:
                    status, error, http = OutcomeStatus.success, None, 200
                await emit(
                    LLMOutcome(
                        event_id=uuid.uuid4(),
                        event_time=datetime.now(UTC),
                        request_id=request_id,
                        org_id=org,
                        operation=_OPS[op_i],
                        provider=provider,
                        model=MODELS[provider][op_i],
                        prompt_name=PROMPT,
                        prompt_version=prompt_version,
                        status=status,
                        error_class=error,
                        http_status=http,
                        latency_ms=rng.randint(30, 900),
                        input_tokens=0 if failed else tokens,
                        output_tokens=out,
                        cost_usd=Decimal(0) if failed else Decimal(tokens * 2 + out * 8).scaleb(-6),
                        attempt=attempt,
                        is_probe=probe,
                    )
                )
                if not failed:
                    stats.succeeded += 1
                    stats.failovers += attempt > 1
                    if not rejected and rng.random() < 0.3:
                        await emit_feedback(request_id, org, prompt_version, rng)
                    break
            if progress is not None and stats.requests % int(rate) == 0:
                view = " ".join(
                    f"{p}={states.get(p, BreakerState.closed).value}" for p in PROVIDERS
                )
                await progress.put(
                    f"t={elapsed:4.1f}s requests={stats.requests} ok={stats.succeeded} "
                    f"failovers={stats.failovers} {view}" + ("  [openai outage]" if down else "")
                )
            await asyncio.sleep(max(0.0, stats.requests / rate - (time.monotonic() - started)))
        await producer.flush()
    finally:
        await producer.stop()
        await rds.aclose()
    return stats
