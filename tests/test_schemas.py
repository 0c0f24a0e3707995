"""Contract tests: strict models, examples, JSON Schema export, topic registry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from llmpulse.schemas import TOPICS, EventTimeBounds, LLMOutcome
from llmpulse.schemas.events import looks_like_secret
from llmpulse.schemas.export import JSON_DIR, render

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
# Examples carry a fixed event_time; validate them against a clock near it.
EXAMPLE_NOW = datetime(2026, 1, 15, 10, 1, tzinfo=UTC)
CTX = {EventTimeBounds.CONTEXT_KEY: EventTimeBounds(), "now": EXAMPLE_NOW}

VALID_MODELS: dict[str, type[BaseModel]] = {
    "outcome_success.json": TOPICS["llm.outcomes.v1"].model,
    "outcome_rate_limited.json": TOPICS["llm.outcomes.v1"].model,
    "request.json": TOPICS["llm.requests.v1"].model,
    "feedback.json": TOPICS["llm.feedback.v1"].model,
    "prompt_version_created.json": TOPICS["llm.prompt-versions.v1"].model,
    "breaker_control.json": TOPICS["llm.breaker-control.v1"].model,
}


def _outcome(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = json.loads((EXAMPLES / "valid" / "outcome_success.json").read_text())
    base.update(changes)
    return base


def _validate(payload: dict[str, Any]) -> LLMOutcome:
    return LLMOutcome.model_validate_json(json.dumps(payload), context=CTX)


@pytest.mark.parametrize("name", sorted(VALID_MODELS))
def test_valid_examples_validate(name: str) -> None:
    model = VALID_MODELS[name]
    model.model_validate_json((EXAMPLES / "valid" / name).read_bytes(), context=CTX)


def test_every_valid_example_is_covered() -> None:
    assert {p.name for p in (EXAMPLES / "valid").iterdir()} == set(VALID_MODELS)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").iterdir()), ids=lambda p: p.name)
def test_invalid_examples_are_rejected(path: Path) -> None:
    with pytest.raises((ValidationError, ValueError)):
        LLMOutcome.model_validate_json(path.read_bytes(), context=CTX)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"input_tokens": "12"}, "input_tokens"),
        ({"input_tokens": 12.0}, "input_tokens"),
        ({"cost_usd": "NaN"}, "cost_usd"),
        ({"cost_usd": "Infinity"}, "cost_usd"),
        ({"cost_usd": "-0.5"}, "cost_usd"),
        ({"cost_usd": 0.5}, "cost_usd"),
        ({"cost_usd": "0.0000000001"}, "cost_usd"),
        ({"latency_ms": -3}, "latency_ms"),
        ({"operation": "chat"}, "operation"),
        ({"status": "ok"}, "status"),
        ({"event_time": "2026-01-15T10:00:00"}, "event_time"),
        ({"event_time": "2026-01-15T11:00:00Z"}, "event_time"),
        ({"event_time": "2020-01-01T00:00:00Z"}, "event_time"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"org_id": "acme corp says hello"}, "org_id"),
        ({"org_id": "sk-abcdefghijklmnop"}, "org_id"),
        ({"model": "x" * 200}, "model"),
        ({"schema_version": 2}, "schema_version"),
        ({"cache_hit": "true"}, "cache_hit"),
        ({"prompt": "Tell me a secret"}, "prompt"),
    ],
)
def test_outcome_rejects(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        _validate(_outcome(**change))
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


def test_cross_field_rules() -> None:
    with pytest.raises(ValidationError, match="error_class must be empty"):
        _validate(_outcome(error_class="server_error"))
    with pytest.raises(ValidationError, match="error_class is required"):
        _validate(_outcome(status="failure"))
    with pytest.raises(ValidationError, match="retry_after_ms"):
        _validate(_outcome(status="failure", error_class="server_error", retry_after_ms=5))
    with pytest.raises(ValidationError, match="cached_tokens"):
        _validate(_outcome(cached_tokens=5000))


def test_money_is_exact_decimal_and_time_is_utc() -> None:
    o = _validate(_outcome(cost_usd="0.000000001", event_time="2026-01-15T11:30:00+01:30"))
    assert o.cost_usd == Decimal("0.000000001")
    assert o.event_time == datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    assert o.event_time.utcoffset() == timedelta(0)
    again = LLMOutcome.model_validate_json(o.model_dump_json(), context=CTX)
    assert again == o
    assert json.loads(o.model_dump_json())["cost_usd"] == "0.000000001"


def test_event_time_bounds_come_from_context() -> None:
    tight = {
        EventTimeBounds.CONTEXT_KEY: EventTimeBounds(max_past=timedelta(seconds=30)),
        "now": EXAMPLE_NOW,
    }
    with pytest.raises(ValidationError, match="in the past"):
        LLMOutcome.model_validate_json(json.dumps(_outcome()), context=tight)


@given(st.text(min_size=1, max_size=60))
def test_identifiers_never_accept_secret_shaped_text(suffix: str) -> None:
    value = "sk-" + "A" * 8 + suffix
    assert looks_like_secret(value)
    with pytest.raises(ValidationError):
        _validate(_outcome(user_id=value))


def test_json_schema_files_are_current() -> None:
    rendered = render()
    on_disk = {p.name: p.read_text() for p in JSON_DIR.glob("*.json")}
    assert on_disk == rendered, "run `python -m llmpulse.schemas.export` and commit schemas/json"


def test_json_schema_forbids_extra_fields_and_types_money_as_string() -> None:
    schema = json.loads((JSON_DIR / "llm.outcomes.v1.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["cost_usd"]["type"] == "string"
    assert schema["x-topic"]["dlq"] == "llm.outcomes.v1.dlq"


def test_topic_registry_is_consistent() -> None:
    for name, spec in TOPICS.items():
        assert spec.name == name
        assert set(spec.key_fields) <= set(spec.model.model_fields)
        assert spec.dlq == f"{name}.dlq"
        assert spec.partitions >= 1
    assert TOPICS["llm.breaker-state.v1"].cleanup_policy == "compact"
    assert TOPICS["llm.prompt-versions.v1"].cleanup_policy == "compact"
    o = _validate(_outcome())
    assert TOPICS["llm.outcomes.v1"].key_of(o) == b"openai"


def test_no_free_text_field_outside_prompt_registry() -> None:
    """Only PromptVersionEvent may carry unconstrained text (its template)."""
    for spec in TOPICS.values():
        schema = spec.model.model_json_schema()
        for field, prop in schema["properties"].items():
            options = prop.get("anyOf", [prop])
            for option in options:
                if option.get("type") != "string" or "format" in option or "enum" in option:
                    continue
                if spec.name == "llm.prompt-versions.v1" and field in ("content", "system_message"):
                    continue
                bounded = "pattern" in option or option.get("maxLength", 10_000) <= 200
                assert bounded, f"{spec.name}.{field} accepts free text"


def test_uuid_event_ids_roundtrip() -> None:
    eid = uuid.uuid4()
    assert _validate(_outcome(event_id=str(eid))).event_id == eid
