"""Pure part of the usage flow: ``LLMOutcome`` to ``usage_events`` rows and the dedup plan.

No I/O here. ``plan_batch`` decides, for a batch of decoded outcomes and the
payload hashes already stored for their event_ids, which rows to insert, which
are harmless duplicates and which are conflicts (same event_id, different payload);
``usage_columns`` turns the rows to insert into the column lists that a
column-oriented insert sends.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
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


def wire_hash(value: bytes) -> str:
    """SHA-256 (hex) of an outcome's wire bytes: the ``payload_hash`` stored with its row.

    The sink hashes the message value it consumed rather than encoding the
    decoded model a second time. That is the same hash: every producer writes
    ``llmpulse.schemas.wire.encode`` bytes, which are deterministic and survive a
    decode/encode round trip unchanged, so a redelivered or re-sent event has
    the same bytes and hash, and a different payload different bytes. (Bytes
    from a foreign producer that re-serialises an event differently on resend
    would differ: that copy is quarantined as a conflict, never billed twice.)
    """
    return hashlib.sha256(value).hexdigest()


def payload_hash(outcome: LLMOutcome) -> str:
    """``wire_hash`` of ``outcome`` encoded for the wire; equal payloads hash equal."""
    return wire_hash(encode(outcome))


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


#: The outcome fields behind every column but the hash: the columns are named after them.
_FIELDS: tuple[str, ...] = USAGE_COLUMNS[:-1]
#: Those fields' values, read in one C call from a model's ``__dict__`` (where pydantic
#: keeps validated field values): the buffer's per-event work, not ``usage_row``'s.
_field_values = operator.itemgetter(*_FIELDS)


class Pending(NamedTuple):
    """An outcome waiting in the sink's buffer: its field values and where it came from.

    The values are taken when the event is read and the decoded model is dropped,
    so a buffered event is two tuples and its ids rather than a model with its
    dict and field set: fewer objects for the garbage collector to rescan while a
    batch fills. They are the values as decoded (``None``, enum members): the
    conversions of ``usage_row`` are applied a column at a time by
    ``usage_columns``, in the writer thread, off the consuming loop that bounds
    the sink's rate.
    """

    fields: tuple[Any, ...]  # the outcome's values of USAGE_COLUMNS[:-1], as decoded
    digest: str  # ``wire_hash`` of ``value``: the row's payload_hash
    value: bytes  # the wire bytes, kept for ``usage_conflicts.incoming_json``
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(
        cls, outcome: LLMOutcome, value: bytes, topic: str, partition: int, offset: int
    ) -> Pending:
        """The buffer item for ``outcome`` decoded from the wire bytes ``value``."""
        return cls(
            _field_values(outcome.__dict__), wire_hash(value), value, topic, partition, offset
        )

    @property
    def event_id(self) -> UUID:
        return self.fields[0]  # type: ignore[no-any-return]


def usage_columns(items: Sequence[Pending]) -> list[list[Any]]:
    """``usage_row`` of every item, as one list per column in ``USAGE_COLUMNS`` order."""
    raw = zip(*(p.fields for p in items), strict=True)
    col = {name: list(values) for name, values in zip(_FIELDS, raw, strict=True)}
    # usage_row's conversions, a column at a time (enums are StrEnums: str() is the value).
    col["user_id"] = [v or "" for v in col["user_id"]]
    col["operation"] = [str(v) for v in col["operation"]]
    col["prompt_name"] = [v or "" for v in col["prompt_name"]]
    col["prompt_version"] = [v or 0 for v in col["prompt_version"]]
    col["status"] = [str(v) for v in col["status"]]
    col["error_class"] = [str(v) if v else "" for v in col["error_class"]]
    col["http_status"] = [v or 0 for v in col["http_status"]]
    return [*(col[name] for name in _FIELDS), [p.digest for p in items]]


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
    # Keyed by the ids' integers: UUID.__hash__ is Python code, int hashing is not.
    seen: dict[int, str] = {event_id.int: digest for event_id, digest in stored.items()}
    for item in batch:
        key = item.event_id.int
        known = seen.get(key)
        if known is None:
            seen[key] = item.digest
            plan.insert.append(item)
        elif known == item.digest:
            plan.duplicates.append(item)
        else:
            plan.conflicts.append((item, known))
    return plan


def conflict_row(item: Pending, stored_hash: str) -> list[Any]:
    """One ``usage_conflicts`` row in ``CONFLICT_COLUMNS`` order (the copy as it arrived)."""
    return [
        item.event_id,
        stored_hash,
        item.digest,
        item.value.decode("utf-8"),
        item.topic,
        item.partition,
        item.offset,
    ]
