"""Deterministic sample usage events for the demo and benchmarks (not the fleet simulator)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from llmpulse.schemas.events import ErrorClass, LLMOutcome, Operation, OutcomeStatus

ORGS = ("acme", "globex", "initech", "umbrella", "hooli")
MODELS = {
    "openai": ("gpt-4o", "text-embedding-3-small", "omni-moderation-latest"),
    "anthropic": ("claude-sonnet-4", "voyage-3", "claude-haiku-4"),
}
_OPS = (Operation.completion, Operation.embedding, Operation.moderation)


def sample_outcome(rng: random.Random, when: datetime | None = None) -> LLMOutcome:
    """One plausible outcome; ids come from ``rng`` so a seed reproduces a run."""
    provider = rng.choice(sorted(MODELS))
    op_index = rng.choices(range(3), weights=(6, 3, 1))[0]
    ok = rng.random() > 0.02
    input_tokens = rng.randint(5, 4000) if op_index != 2 else rng.randint(5, 300)
    output_tokens = rng.randint(1, 800) if op_index == 0 and ok else 0
    micro = input_tokens * rng.choice((1, 2, 3)) + output_tokens * rng.choice((4, 8, 10))
    return LLMOutcome(
        event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        event_time=when or datetime.now(UTC),
        request_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        org_id=rng.choice(ORGS),
        operation=_OPS[op_index],
        provider=provider,
        model=MODELS[provider][op_index],
        status=OutcomeStatus.success if ok else OutcomeStatus.failure,
        error_class=None if ok else ErrorClass.server_error,
        http_status=200 if ok else 503,
        latency_ms=rng.randint(40, 2500),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=(Decimal(micro) / Decimal(1_000_000)) if ok else Decimal("0"),
        cache_hit=rng.random() < 0.1,
    )
