"""Pure part of the usage flow: ``LLMOutcome`` to ``usage_events`` rows and the dedup plan.

No I/O here. ``plan_batch`` decides, for a batch of decoded outcomes and the
payload hashes already stored for their event_ids, which rows to insert, which
are harmless duplicates and which are conflicts (same event_id, different payload).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from llmpulse.schemas.events import LLMOutcome
from llmpulse.schemas.wire import encode

#: Column order of ``usage_events`` inserts (a contract test checks DESCRIBE TABLE).
USAGE_COLUMNS: tuple[str, ...] = (
    "event_id",
    "request_id",
    "event_time",
    "org_id",
    "user_id",
    "operation",
    "provider",
    "model",
    "prompt_name",
    "prompt_version",
    "status",
    "error_class",
    "http_status",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "cache_hit",
    "attempt",
    "is_probe",
    "payload_hash",
)

CONFLICT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "stored_hash",
    "incoming_hash",
    "incoming_json",
    "source_topic",
    "source_partition",
    "source_offset",
)


def payload_hash(outcome: LLMOutcome) -> str:
    """SHA-256 (hex) of the wire bytes of ``outcome``; equal payloads hash equal."""
    return hashlib.sha256(encode(outcome)).hexdigest()


def usage_row(outcome: LLMOutcome, digest: str) -> list[Any]:
    """One ``usage_events`` row in ``USAGE_COLUMNS`` order (absent optionals as ''/0)."""
    o = outcome
    return [
        o.event_id,
        o.request_id,
        o.event_time,
        o.org_id,
        o.user_id or "",
        o.operation.value,
        o.provider,
        o.model,
        o.prompt_name or "",
        o.prompt_version or 0,
        o.status.value,
        o.error_class.value if o.error_class else "",
        o.http_status or 0,
        o.latency_ms,
        o.ttft_ms,
        o.input_tokens,
        o.output_tokens,
        o.cached_tokens,
        o.cost_usd,
        o.cache_hit,
        o.attempt,
        o.is_probe,
        digest,
    ]


@dataclass(frozen=True)
class Pending:
    """A decoded outcome waiting in the sink's buffer, with where it came from."""

    outcome: LLMOutcome
    digest: str
    topic: str
    partition: int
    offset: int


@dataclass
class BatchPlan:
    """What to do with one buffered batch."""

    insert: list[Pending] = field(default_factory=list)
    duplicates: list[Pending] = field(default_factory=list)
    conflicts: list[tuple[Pending, str]] = field(default_factory=list)


def plan_batch(batch: Sequence[Pending], stored: Mapping[UUID, str]) -> BatchPlan:
    """Split ``batch`` given ``stored`` (event_id -> payload hash already in ClickHouse).

    The first copy of an event_id wins (stored copy first, then batch order);
    later copies with the same hash are duplicates, with another hash conflicts.
    """
    plan = BatchPlan()
    seen: dict[UUID, str] = dict(stored)
    for item in batch:
        known = seen.get(item.outcome.event_id)
        if known is None:
            seen[item.outcome.event_id] = item.digest
            plan.insert.append(item)
        elif known == item.digest:
            plan.duplicates.append(item)
        else:
            plan.conflicts.append((item, known))
    return plan


def conflict_row(item: Pending, stored_hash: str) -> list[Any]:
    """One ``usage_conflicts`` row in ``CONFLICT_COLUMNS`` order."""
    return [
        item.outcome.event_id,
        stored_hash,
        item.digest,
        item.outcome.model_dump_json(),
        item.topic,
        item.partition,
        item.offset,
    ]
