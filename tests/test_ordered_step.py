"""The agents' ordered step: replays skipped, poison dead-lettered and counted, then advance."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from llmpulse.processors.stream.codec import PoisonEvent
from llmpulse.processors.stream.dlq import (
    REASON_HEADER,
    DeadLetterPublisher,
    PoisonLimiter,
    PoisonLimitExceeded,
    Record,
    SourceRecord,
)
from llmpulse.processors.stream.input_cursor import Step, step
from llmpulse.processors.stream.ordered import OrderedStep, Route
from llmpulse.schemas import EventTimeBounds, Feedback, LLMOutcome

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
OUTCOME = (EXAMPLES / "valid" / "outcome_success.json").read_bytes()
FEEDBACK = (EXAMPLES / "valid" / "feedback.json").read_bytes()
# The examples carry fixed 2026 timestamps: accept them whatever today is.
BOUNDS = EventTimeBounds(max_past=timedelta(days=36500), max_future=timedelta(days=36500))
OUTCOMES_TOPIC = "x.llm.outcomes.v1"
FEEDBACK_TOPIC = "x.llm.feedback.v1"


class _Journal:
    """Every call the step makes, in order, shared by the fakes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


class _Cursors:
    """``InputCursors`` without Faust: a cursor per partition, starting at 0."""

    def __init__(self, journal: _Journal) -> None:
        self.journal = journal
        self.cursors: dict[tuple[str, int], int] = {}

    async def step(self, topic: str, partition: int, offset: int) -> Step:
        return step(self.cursors.get((topic, partition), 0), offset)

    def advance(self, topic: str, partition: int, offset: int) -> None:
        self.journal.calls.append(("advance", topic, partition, offset))
        self.cursors[(topic, partition)] = offset + 1

    def position(self, tp: TP) -> int | None:
        return self.cursors.get((tp.topic, tp.partition))


class _Producer:
    def __init__(self, journal: _Journal) -> None:
        self.journal = journal
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> object:
        self.journal.calls.append(("dlq", topic))
        self.sent.append((topic, value, headers or []))
        return None


class _Harness:
    def __init__(self, limit: int = 10) -> None:
        self.journal = _Journal()
        self.cursors = _Cursors(self.journal)
        self.producer = _Producer(self.journal)
        self.step = OrderedStep(
            {
                OUTCOMES_TOPIC: Route(LLMOutcome, self.on_outcome),
                FEEDBACK_TOPIC: Route(Feedback, self.on_feedback),
            },
            cursors=self.cursors,
            dead_letters=DeadLetterPublisher(self.producer, PoisonLimiter(limit)),
            bounds=BOUNDS,
            flush=self.flush,
        )

    async def flush(self, topic: str, partition: int, applied: Sequence[Record]) -> None:
        self.journal.calls.append(("flush", topic, partition, [r.offset for r in applied]))

    async def on_outcome(self, outcome: LLMOutcome, record: Record) -> None:
        # A coroutine handler (the breaker's) ...
        self.journal.calls.append(("apply", record.topic, record.offset, type(outcome).__name__))

    def on_feedback(self, feedback: Feedback, record: Record) -> None:
        # ... and a plain one (the prompt rollups').
        self.journal.calls.append(("apply", record.topic, record.offset, type(feedback).__name__))


def _rec(offset: int, value: bytes | None = OUTCOME, topic: str = OUTCOMES_TOPIC) -> SourceRecord:
    return SourceRecord(topic, 0, offset, b"openai", value)


async def test_events_are_applied_in_order_and_the_cursor_advances_after_each() -> None:
    h = _Harness()
    assert await h.step(_rec(0)) is Step.APPLY
    assert await h.step(_rec(0, FEEDBACK, FEEDBACK_TOPIC)) is Step.APPLY
    assert await h.step(_rec(1)) is Step.APPLY
    assert h.journal.calls == [
        ("apply", OUTCOMES_TOPIC, 0, "LLMOutcome"),
        ("flush", OUTCOMES_TOPIC, 0, [0]),
        ("advance", OUTCOMES_TOPIC, 0, 0),
        ("apply", FEEDBACK_TOPIC, 0, "Feedback"),
        ("flush", FEEDBACK_TOPIC, 0, [0]),
        ("advance", FEEDBACK_TOPIC, 0, 0),
        ("apply", OUTCOMES_TOPIC, 1, "LLMOutcome"),
        ("flush", OUTCOMES_TOPIC, 0, [1]),
        ("advance", OUTCOMES_TOPIC, 0, 1),
    ]


async def test_replays_and_events_past_a_hole_are_skipped_untouched() -> None:
    h = _Harness()
    await h.step(_rec(0))
    await h.step(_rec(1))
    before = list(h.journal.calls)
    assert await h.step(_rec(0)) is Step.REPLAY  # delivered again
    assert await h.step(_rec(5)) is Step.HOLE  # 2-4 not applied yet
    assert await h.step(_rec(1, b"garbage")) is Step.REPLAY  # not even decoded
    assert h.journal.calls == before
    assert h.cursors.cursors[(OUTCOMES_TOPIC, 0)] == 2
    assert h.producer.sent == []


async def test_poison_is_dead_lettered_before_the_cursor_passes_it_and_never_applied() -> None:
    h = _Harness()
    assert await h.step(_rec(0, b"not json")) is Step.APPLY
    bad = json.loads(OUTCOME)
    bad["cost_usd"] = 0.5  # a float: money must be a decimal string
    assert await h.step(_rec(1, json.dumps(bad).encode())) is Step.APPLY
    assert await h.step(_rec(2)) is Step.APPLY
    assert h.journal.calls == [
        ("dlq", f"{OUTCOMES_TOPIC}.dlq"),
        ("flush", OUTCOMES_TOPIC, 0, [0]),
        ("advance", OUTCOMES_TOPIC, 0, 0),
        ("dlq", f"{OUTCOMES_TOPIC}.dlq"),
        ("flush", OUTCOMES_TOPIC, 0, [1]),
        ("advance", OUTCOMES_TOPIC, 0, 1),
        ("apply", OUTCOMES_TOPIC, 2, "LLMOutcome"),
        ("flush", OUTCOMES_TOPIC, 0, [2]),
        ("advance", OUTCOMES_TOPIC, 0, 2),
    ]
    reasons = [dict(headers)[REASON_HEADER] for _, _, headers in h.producer.sent]
    assert reasons == [b"not_json", b"schema_violation"]
    assert h.producer.sent[0][1] == b"not json"  # the original value is kept


async def test_consecutive_poison_is_counted_and_a_good_event_ends_the_run() -> None:
    h = _Harness(limit=2)
    await h.step(_rec(0, b""))
    await h.step(_rec(1, b""))
    await h.step(_rec(2))  # ends the run
    await h.step(_rec(3, b""))
    await h.step(_rec(4, b""))
    with pytest.raises(PoisonLimitExceeded, match="3 consecutive"):
        await h.step(_rec(5, b""))
    # Dead-lettered before the limit stopped the worker, but not passed by the cursor:
    # a restart re-reads it (and stops again until upstream is fixed).
    assert len(h.producer.sent) == 5
    assert h.cursors.cursors[(OUTCOMES_TOPIC, 0)] == 5


async def test_a_failing_handler_stops_before_the_cursor_moves() -> None:
    h = _Harness()

    def boom(outcome: LLMOutcome, record: Record) -> None:
        raise RuntimeError("table write failed")

    failing = OrderedStep(
        {OUTCOMES_TOPIC: Route(LLMOutcome, boom)},
        cursors=h.cursors,
        dead_letters=DeadLetterPublisher(h.producer, PoisonLimiter(1)),
        bounds=BOUNDS,
    )
    with pytest.raises(RuntimeError):
        await failing(_rec(0))
    assert h.cursors.cursors == {}
    assert h.producer.sent == []  # a handler's failure is not poison


async def test_a_poison_event_raised_by_a_handler_is_not_dead_lettered() -> None:
    h = _Harness()

    def rejects(outcome: LLMOutcome, record: Record) -> None:
        raise PoisonEvent("x", "only decoding decides what is poison")

    step_ = OrderedStep(
        {OUTCOMES_TOPIC: Route(LLMOutcome, rejects)},
        cursors=h.cursors,
        dead_letters=DeadLetterPublisher(h.producer, PoisonLimiter(1)),
        bounds=BOUNDS,
    )
    with pytest.raises(PoisonEvent):
        await step_(_rec(0))
    assert h.producer.sent == []


async def test_an_unrouted_topic_is_a_wiring_error() -> None:
    h = _Harness()
    with pytest.raises(KeyError):
        await h.step(_rec(0, topic="x.other"))


class _Record:
    """What the step reads of an aiokafka ``ConsumerRecord``."""

    def __init__(self, r: SourceRecord) -> None:
        self.topic, self.partition, self.offset = r.topic, r.partition, r.offset
        self.key, self.value, self.timestamp = r.key, r.value, r.timestamp_ms


async def _batch(h: _Harness, records: list[SourceRecord]) -> None:
    await h.step.batch(TP(OUTCOMES_TOPIC, 0), [_Record(r) for r in records])


async def test_a_batch_applies_a_run_then_flushes_once_and_moves_the_cursor_once() -> None:
    h = _Harness()
    await _batch(h, [_rec(0), _rec(1, b""), _rec(2)])
    assert h.journal.calls == [
        ("apply", OUTCOMES_TOPIC, 0, "LLMOutcome"),
        ("dlq", f"{OUTCOMES_TOPIC}.dlq"),
        ("apply", OUTCOMES_TOPIC, 2, "LLMOutcome"),
        ("flush", OUTCOMES_TOPIC, 0, [0, 1, 2]),
        ("advance", OUTCOMES_TOPIC, 0, 2),
    ]
    assert h.step.position(TP(OUTCOMES_TOPIC, 0)) == 3


async def test_a_batch_skips_replays_and_stops_at_a_hole() -> None:
    h = _Harness()
    await _batch(h, [_rec(0), _rec(1)])
    h.journal.calls.clear()
    # 0 and 1 are replays, 2 and 3 a run, 5 lies past a hole (4 missing): the batch
    # ends there, 6 is never looked at.
    await _batch(h, [_rec(0), _rec(1), _rec(2), _rec(3), _rec(5), _rec(6)])
    assert h.journal.calls == [
        ("apply", OUTCOMES_TOPIC, 2, "LLMOutcome"),
        ("apply", OUTCOMES_TOPIC, 3, "LLMOutcome"),
        ("flush", OUTCOMES_TOPIC, 0, [2, 3]),
        ("advance", OUTCOMES_TOPIC, 0, 3),
    ]
    assert h.cursors.cursors[(OUTCOMES_TOPIC, 0)] == 4


async def test_a_failing_handler_stops_the_batch_before_its_flush_and_cursor() -> None:
    h = _Harness()
    calls = 0

    def fails_second(outcome: LLMOutcome, record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("table write failed")

    failing = OrderedStep(
        {OUTCOMES_TOPIC: Route(LLMOutcome, fails_second)},
        cursors=h.cursors,
        dead_letters=DeadLetterPublisher(h.producer, PoisonLimiter(1)),
        bounds=BOUNDS,
        flush=h.flush,
    )
    with pytest.raises(RuntimeError):
        await failing.batch(TP(OUTCOMES_TOPIC, 0), [_Record(_rec(0)), _Record(_rec(1))])
    assert h.cursors.cursors == {}
    assert not [c for c in h.journal.calls if c[0] == "flush"]
