"""Unit and property tests of the usage dedup plan (pure)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from llmpulse.core.usage import (
    USAGE_COLUMNS,
    Pending,
    payload_hash,
    plan_batch,
    usage_row,
)
from llmpulse.schemas import LLMOutcome
from llmpulse.simulator.samples import sample_outcome

WHEN = datetime(2026, 3, 1, tzinfo=UTC)


def _pending(o: LLMOutcome, offset: int = 0) -> Pending:
    return Pending(o, payload_hash(o), "llm.outcomes.v1", 0, offset)


def test_row_matches_columns() -> None:
    o = sample_outcome(random.Random(1), WHEN)
    row = usage_row(o, payload_hash(o))
    assert len(row) == len(USAGE_COLUMNS)
    assert row[USAGE_COLUMNS.index("cost_usd")] == o.cost_usd


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

    inserted_ids = [p.outcome.event_id for p in plan.insert]
    assert len(inserted_ids) == len(set(inserted_ids))
    assert set(inserted_ids) == {pool[i].event_id for i in picks} - set(stored)
    assert len(plan.insert) + len(plan.duplicates) + len(plan.conflicts) == len(batch)
    for item, known in plan.conflicts:
        assert item.digest != known
    for item in plan.duplicates:
        first = stored.get(item.outcome.event_id) or next(
            p.digest for p in plan.insert if p.outcome.event_id == item.outcome.event_id
        )
        assert item.digest == first


def test_stored_copy_wins_over_batch() -> None:
    o = sample_outcome(random.Random(2), WHEN)
    other = o.model_copy(update={"event_id": o.event_id, "output_tokens": 99_999})
    plan = plan_batch([_pending(other)], {o.event_id: payload_hash(o)})
    assert not plan.insert
    assert len(plan.conflicts) == 1


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
            sink._buffer.append(Pending(o, payload_hash(o), "t", part, offset))
            sink._next_offsets[TopicPartition("t", part)] = offset + 1
    sink.drop_partitions({TopicPartition("t", 1)})
    assert {p.partition for p in sink._buffer} == {0, 2}
    assert set(sink._next_offsets) == {TopicPartition("t", 0), TopicPartition("t", 2)}
