"""Unit tests: decode once, poison reasons, redaction and the consecutive-poison limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmpulse.processors.stream.codec import (
    EMPTY_VALUE,
    INVALID_UTF8,
    NOT_AN_OBJECT,
    NOT_JSON,
    SCHEMA_VIOLATION,
    PoisonEvent,
    decode,
    encode,
)
from llmpulse.processors.stream.dlq import (
    DETAIL_HEADER,
    REASON_HEADER,
    DeadLetterPublisher,
    PoisonLimiter,
    PoisonLimitExceeded,
    SourceRecord,
)
from llmpulse.processors.stream.redact import REDACTED, redact_bytes
from llmpulse.schemas import EventTimeBounds, LLMOutcome

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
NOW = datetime(2026, 1, 15, 10, 1, tzinfo=UTC)
BOUNDS = EventTimeBounds()
VALID = (EXAMPLES / "valid" / "outcome_success.json").read_bytes()


def _reason(raw: bytes | None) -> PoisonEvent:
    with pytest.raises(PoisonEvent) as info:
        decode(LLMOutcome, raw, bounds=BOUNDS, now=NOW)
    return info.value


def test_decode_valid_and_encode_roundtrip() -> None:
    o = decode(LLMOutcome, VALID, bounds=BOUNDS, now=NOW)
    assert decode(LLMOutcome, encode(o), bounds=BOUNDS, now=NOW) == o


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, EMPTY_VALUE),
        (b"", EMPTY_VALUE),
        (b"\xff\xfe\x00", INVALID_UTF8),
        (b"{not json", NOT_JSON),
        (b"[1, 2]", NOT_AN_OBJECT),
        (b'"text"', NOT_AN_OBJECT),
        (b"{}", SCHEMA_VIOLATION),
    ],
)
def test_poison_reasons(raw: bytes | None, reason: str) -> None:
    assert _reason(raw).reason == reason


def test_detail_never_contains_input_values() -> None:
    payload = json.loads(VALID)
    payload["api_key"] = "sk-live-THISISASECRETVALUE123"
    payload["input_tokens"] = "1200-secret-marker"
    poison = _reason(json.dumps(payload).encode())
    assert poison.reason == SCHEMA_VIOLATION
    assert "THISISASECRET" not in poison.detail
    assert "secret-marker" not in poison.detail
    assert "api_key" in poison.detail
    assert "input_tokens" in poison.detail


@pytest.mark.parametrize(
    "secret",
    [
        b"sk-proj-abcdefghijklmnop",
        b"Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        b"AKIAIOSFODNN7EXAMPLE",
    ],
)
def test_redact_known_secret_shapes(secret: bytes) -> None:
    raw = b'{"note": "key ' + secret + b' end"}'
    out = redact_bytes(raw)
    assert secret not in out
    assert REDACTED.encode() in out


def test_redact_secret_named_members_whatever_their_value() -> None:
    out = redact_bytes(b'{"password": "hunter2", "x_api_key": "abc", "input_tokens": 5}')
    assert b"hunter2" not in out
    assert b'"abc"' not in out
    assert b'"input_tokens": 5' in out


@given(st.binary(max_size=200))
def test_redact_never_crashes_and_keeps_clean_bytes(raw: bytes) -> None:
    out = redact_bytes(raw)
    if b"sk-" not in raw and b"earer" not in raw.lower() and b"AKIA" not in raw and b'"' not in raw:
        assert out == raw


def test_poison_limiter_counts_consecutive_per_partition() -> None:
    limiter = PoisonLimiter(limit=3)
    for _ in range(3):
        limiter.poison("t", 0)
    limiter.poison("t", 1)  # another partition has its own run
    limiter.ok("t", 0)
    for _ in range(3):
        limiter.poison("t", 0)
    with pytest.raises(PoisonLimitExceeded, match=r"4 consecutive invalid messages on t\[0\]"):
        limiter.poison("t", 0)


class _RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> object:
        self.sent.append((topic, key, value, headers or []))
        return None


async def test_publisher_redacts_and_labels() -> None:
    producer = _RecordingProducer()
    publisher = DeadLetterPublisher(producer, PoisonLimiter(limit=1))
    raw = b'{"api_key": "sk-abcdefghijklmnopq", "cost_usd": "NaN"}'
    record = SourceRecord("llm.outcomes.v1", 2, 41, b"openai", raw)
    poison = _reason(raw)
    await publisher.publish(record, poison, "llm.outcomes.v1.dlq")
    topic, key, value, headers = producer.sent[0]
    assert topic == "llm.outcomes.v1.dlq"
    assert key == b"openai"
    assert value is not None
    assert b"sk-abcdefghijklmnopq" not in value
    assert b'"NaN"' in value
    h = dict(headers)
    assert h[REASON_HEADER] == b"schema_violation"
    assert b"Field required" in h[DETAIL_HEADER]
    assert h["dlq.source.offset"] == b"41"
    assert h["dlq.source.partition"] == b"2"
    publisher.poisoned(record)
    await publisher.publish(record, poison, "llm.outcomes.v1.dlq")
    with pytest.raises(PoisonLimitExceeded):
        publisher.poisoned(record)
    assert len(producer.sent) == 2  # the message is sent before the worker stops
