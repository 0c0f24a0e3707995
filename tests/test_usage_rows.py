"""Unit and property tests of the usage dedup plan (pure)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from llmpulse.core.usage import (
    CONFLICT_COLUMNS,
    USAGE_COLUMNS,
    Pending,
    conflict_row,
    payload_hash,
    plan_batch,
    usage_columns,
    usage_row,
    wire_hash,
)
from llmpulse.processors.stream.codec import decode, encode
from llmpulse.schemas import ErrorClass, EventTimeBounds, LLMOutcome, OutcomeStatus
from llmpulse.simulator.samples import sample_outcome

WHEN = datetime(2026, 3, 1, tzinfo=UTC)


def _pending(o: LLMOutcome, offset: int = 0) -> Pending:
    return Pending.of(o, encode(o), "llm.outcomes.v1", 0, offset)


def test_row_matches_columns() -> None:
    o = sample_outcome(random.Random(1), WHEN)
    row = usage_row(o, payload_hash(o))
    assert len(row) == len(USAGE_COLUMNS)
    assert row[USAGE_COLUMNS.index("cost_usd")] == o.cost_usd


_ANY_TIME = EventTimeBounds(max_past=timedelta(days=36500), max_future=timedelta(days=36500))


@st.composite
def _outcomes(draw: st.DrawFn) -> LLMOutcome:
    """Valid outcomes with every optional field drawn, as a producer would build them."""
    o = sample_outcome(random.Random(draw(st.integers(0, 2**32))), WHEN)
    ok = o.error_class is None
    prompt = draw(st.none() | st.tuples(st.sampled_from(["faq", "sum.v2"]), st.integers(1, 9)))
    input_tokens = draw(st.integers(0, 10**6))
    fields = {
        **o.model_dump(),
        "event_time": draw(
            st.datetimes(datetime(2025, 1, 1), datetime(2099, 1, 1), timezones=st.timezones())
        ),
        "user_id": draw(st.none() | st.sampled_from(["u-1", "svc:batch@x"])),
        "prompt_name": prompt[0] if prompt else None,
        "prompt_version": prompt[1] if prompt else None,
        "ttft_ms": draw(st.none() | st.integers(0, 86_400_000)),
        "input_tokens": input_tokens,
        "cached_tokens": draw(st.integers(0, input_tokens)),
        "cost_usd": draw(st.decimals(0, 10**6, places=draw(st.integers(0, 9))))
        if ok
        else Decimal(0),
        "attempt": draw(st.integers(1, 100)),
        "is_probe": draw(st.booleans()),
    }
    return LLMOutcome.model_validate(fields, context={EventTimeBounds.CONTEXT_KEY: _ANY_TIME})


@given(st.lists(_outcomes(), min_size=1, max_size=5))
def test_columns_are_the_usage_rows_of_the_buffered_events(outcomes: list[LLMOutcome]) -> None:
    """The buffer keeps raw field values; the columns apply ``usage_row``'s conversions."""
    items = [Pending.of(o, encode(o), "t", 0, i) for i, o in enumerate(outcomes)]
    columns = usage_columns(items)
    assert len(columns) == len(USAGE_COLUMNS)
    for i, o in enumerate(outcomes):
        assert [col[i] for col in columns] == usage_row(o, payload_hash(o))
        assert items[i].event_id == o.event_id


@given(_outcomes())
def test_hash_of_consumed_bytes_is_the_payload_hash(outcome: LLMOutcome) -> None:
    """The sink hashes the bytes it consumed: the same hash as encoding the decoded event."""
    raw = encode(outcome)
    event = decode(LLMOutcome, raw, bounds=_ANY_TIME)
    assert encode(event) == raw  # the wire encoding survives a decode/encode round trip
    assert wire_hash(raw) == payload_hash(event)


def test_hash_depends_on_payload_only() -> None:
    o = sample_outcome(random.Random(1), WHEN)
    assert payload_hash(o) == payload_hash(LLMOutcome.model_validate_json(o.model_dump_json()))
    changed = o.model_copy(update={"input_tokens": o.input_tokens + 1})
    assert payload_hash(changed) != payload_hash(o)


@given(
    st.lists(st.integers(min_value=0, max_value=30), max_size=80),
    st.sets(st.integers(min_value=0, max_value=30), max_size=10),
    st.sets(st.integers(min_value=0, max_value=30), max_size=5),
)
def test_plan_counts_each_event_id_once(
    picks: list[int], stored_ids: set[int], conflicting: set[int]
) -> None:
    rng = random.Random(0)
    pool = [sample_outcome(rng, WHEN) for _ in range(31)]
    batch = []
    for offset, i in enumerate(picks):
        o = pool[i]
        if i in conflicting and offset % 2:
            o = o.model_copy(update={"latency_ms": o.latency_ms + 1})
        batch.append(_pending(o, offset))
    stored = {pool[i].event_id: payload_hash(pool[i]) for i in stored_ids}
    plan = plan_batch(batch, stored)

    inserted_ids = [p.event_id for p in plan.insert]
    assert len(inserted_ids) == len(set(inserted_ids))
    assert set(inserted_ids) == {pool[i].event_id for i in picks} - set(stored)
    assert len(plan.insert) + len(plan.duplicates) + len(plan.conflicts) == len(batch)
    for item, known in plan.conflicts:
        assert item.digest != known
    for item in plan.duplicates:
        first = stored.get(item.event_id) or next(
            p.digest for p in plan.insert if p.event_id == item.event_id
        )
        assert item.digest == first


def test_stored_copy_wins_over_batch() -> None:
    o = sample_outcome(random.Random(2), WHEN)
    other = o.model_copy(update={"event_id": o.event_id, "output_tokens": 99_999})
    plan = plan_batch([_pending(other)], {o.event_id: payload_hash(o)})
    assert not plan.insert
    assert len(plan.conflicts) == 1
    item, known = plan.conflicts[0]
    row = dict(zip(CONFLICT_COLUMNS, conflict_row(item, known), strict=True))
    assert row["incoming_json"] == encode(other).decode()  # the copy as it arrived
    assert (row["stored_hash"], row["incoming_hash"]) == (payload_hash(o), payload_hash(other))


def test_fresh_ids_all_inserted() -> None:
    rng = random.Random(3)
    batch = [_pending(sample_outcome(rng, WHEN), i) for i in range(100)]
    plan = plan_batch(batch, {uuid.uuid4(): "x" * 64})
    assert len(plan.insert) == 100


def test_revoked_partitions_are_dropped_from_the_sink_buffer() -> None:
    from aiokafka import TopicPartition

    from llmpulse.processors.settings import Settings
    from llmpulse.processors.sinks.usage import UsageSink

    sink = UsageSink(Settings(), client=None, group="g")  # type: ignore[arg-type]
    rng = random.Random(4)
    for part in (0, 1, 2):
        for offset in range(3):
            o = sample_outcome(rng, WHEN)
            sink._buffer.append(Pending.of(o, encode(o), "t", part, offset))
            sink._next_offsets[TopicPartition("t", part)] = offset + 1
    sink.drop_partitions({TopicPartition("t", 1)})
    assert {p.partition for p in sink._buffer} == {0, 2}
    assert set(sink._next_offsets) == {TopicPartition("t", 0), TopicPartition("t", 2)}


def test_row_holds_enum_values_as_plain_strings() -> None:
    o = sample_outcome(random.Random(7), WHEN)
    failed = o.model_copy(
        update={"status": OutcomeStatus.failure, "error_class": ErrorClass.timeout}
    )
    for outcome in (o, failed):
        row = dict(zip(USAGE_COLUMNS, usage_row(outcome, "h"), strict=True))
        assert row["operation"] == outcome.operation.value
        assert row["status"] == outcome.status.value
        assert row["error_class"] == (outcome.error_class.value if outcome.error_class else "")
        assert {type(row[c]) for c in ("operation", "status", "error_class")} == {str}
