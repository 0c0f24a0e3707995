"""Contracts with one owner: every writer and reader uses the same definition.

The breaker key rule, the prompt registry view, the wire bytes of an event, the
Faust tables' partition counts and the sink worker's list of sinks.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import llmpulse.processors.sinks as sinks_package
from llmpulse.core.breaker import BreakerConfig, breaker_key
from llmpulse.core.registry import PromptState, VersionRecord
from llmpulse.gateway.breaker_view import BreakerView
from llmpulse.gateway.config import GatewayConfig, redis_client
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.gateway.prompts import PromptVersionView, parse_view
from llmpulse.processors.breaker.agent import BreakerService
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.prompts.agent import PromptsService, registry_view
from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks import SINK_TYPES, build_sinks
from llmpulse.processors.sinks.base import ClickHouseSink
from llmpulse.processors.stream import codec
from llmpulse.processors.stream.faust_app import TABLES, TableSpec, changelog_topics
from llmpulse.schemas import Feedback, LLMOutcome, LLMRequest, wire
from llmpulse.schemas.serving import PromptVersionEntry, PromptView
from llmpulse.schemas.topics import FEEDBACK, OUTCOMES, PROMPT_VERSIONS, TOPICS

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples" / "valid"


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
        topic_prefix="x.",
    )


# --- the breaker key rule ----------------------------------------------------------------


def test_breaker_key_rule() -> None:
    keys = {"openai/gpt-4o"}
    assert breaker_key("openai", "gpt-4o", keys) == "openai/gpt-4o"
    assert breaker_key("openai", "gpt-4o-mini", keys) == "openai"
    assert breaker_key("openai", None, keys) == "openai"
    assert breaker_key("anthropic", "gpt-4o", keys) == "anthropic"
    assert breaker_key("openai", "gpt-4o", ()) == "openai"


def test_agent_and_gateway_pick_the_same_breaker() -> None:
    configs = BreakerConfigs(
        BreakerConfig(),
        {"openai": BreakerConfig(), "openai/gpt-4o": BreakerConfig(), "b/m1": BreakerConfig()},
    )
    config = GatewayConfig(
        bootstrap_servers="127.0.0.1:1", redis_url=SecretStr("redis://127.0.0.1:1/0")
    )
    view = BreakerView(redis_client(config), config, ["openai", "b", "c"])
    # What the breaker worker publishes with its heartbeat (serving.model_breakers_key).
    assert view._follow_model_keys(json.dumps(configs.model_keys()))
    for provider in ("openai", "b", "c"):
        for model in ("gpt-4o", "gpt-4o-mini", "m1", "m2"):
            expected = breaker_key(provider, model, set(configs.model_keys()))
            assert configs.key_for(provider, model) == expected, (provider, model)
            assert view.breaker_key(provider, model) == expected, (provider, model)


# --- the prompt registry view ------------------------------------------------------------


def _state() -> PromptState:
    return PromptState(
        "greet",
        {
            1: VersionRecord(1, "Hello {name}", "Be brief.", D("0.70"), 256, "gpt-4o", active=True),
            2: VersionRecord(2, "Hi {name}!", active=True, weight=D("0.25")),
            3: VersionRecord(3, "retired"),
        },
    )


def test_prompt_view_round_trip_through_the_gateway_parser() -> None:
    view = registry_view(_state())
    raw = view.model_dump_json()
    assert PromptView.model_validate_json(raw) == view
    assert parse_view(raw) == [
        PromptVersionView(1, D("0.75"), "Hello {name}", "Be brief.", D("0.70"), 256, "gpt-4o"),
        PromptVersionView(2, D("0.25"), "Hi {name}!", None, None, None, None),
    ]


def test_prompt_view_keeps_the_wire_shape_of_running_gateways() -> None:
    doc = json.loads(registry_view(_state()).model_dump_json())
    # Exactly the JSON the agent wrote before the view was a model: decimals as strings.
    assert doc == {
        "prompt_name": "greet",
        "versions": [
            {
                "version": 1,
                "weight": "0.75",
                "content": "Hello {name}",
                "system_message": "Be brief.",
                "temperature": "0.70",
                "max_tokens": 256,
                "model": "gpt-4o",
            },
            {
                "version": 2,
                "weight": "0.25",
                "content": "Hi {name}!",
                "system_message": None,
                "temperature": None,
                "max_tokens": None,
                "model": None,
            },
        ],
    }
    # A view written by an earlier agent (spaced json.dumps) reads the same.
    assert PromptView.model_validate_json(json.dumps(doc)) == registry_view(_state())


def test_prompt_view_is_frozen_and_plain_on_the_wire() -> None:
    entry = PromptVersionEntry(version=1, weight=D("1E-7"))
    assert json.loads(entry.model_dump_json())["weight"] == "0.0000001"
    with pytest.raises(ValueError, match="frozen"):
        entry.version = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="version twice"):
        PromptView(versions=(entry, entry))


def test_empty_prompt_view_means_no_active_version() -> None:
    state = PromptState("greet", {1: VersionRecord(1, "retired")})
    assert parse_view(registry_view(state).model_dump_json()) == []


# --- the wire bytes ----------------------------------------------------------------------


def _events() -> list[Any]:
    return [
        LLMRequest.model_validate_json((EXAMPLES / "request.json").read_bytes()),
        LLMOutcome.model_validate_json((EXAMPLES / "outcome_success.json").read_bytes()),
        Feedback.model_validate_json((EXAMPLES / "feedback.json").read_bytes()),
    ]


def test_codec_encode_is_the_wire_encoding() -> None:
    assert codec.encode is wire.encode
    outcome = _events()[1]
    assert wire.encode(outcome) == outcome.model_dump_json().encode("utf-8")


async def test_emitter_puts_the_wire_bytes_on_the_topic(tmp_path: Path) -> None:
    config = GatewayConfig(bootstrap_servers="127.0.0.1:1", spool_dir=tmp_path / "spool")
    emitter = EventEmitter(config)  # not started: emitted events wait in its queue
    try:
        events = _events()
        for event in events:
            emitter.emit(event)
        queued = [emitter._queue.get_nowait() for _ in events]
        assert [r.value for r in queued] == [codec.encode(e) for e in events]
    finally:
        await emitter.close(timeout=0)


# --- Faust tables ------------------------------------------------------------------------


def test_table_specs_match_their_source_partition_counts() -> None:
    for table in TABLES:
        for source in table.sources:
            assert table.partitions == TOPICS[source].partitions, (table.name, source)
    with pytest.raises(ValueError, match="not co-partitioned"):
        TableSpec("x", "mixed", (OUTCOMES, FEEDBACK))
    with pytest.raises(KeyError, match="unknown topic"):
        TableSpec("x", "nowhere", ("llm.nope.v1",))


def test_agents_create_exactly_the_specified_tables(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    breaker, prompts = BreakerService(settings), PromptsService(settings)
    created = {
        (app, table.name, table.partitions)
        for app, service in (("breaker", breaker), ("prompts", prompts))
        for table in service.app.tables.values()
    }
    assert created == {(t.app, t.name, t.partitions) for t in TABLES}
    # Each prompt table holds the partials of the source topic its spec names.
    by_name = {t.name: t for t in TABLES}
    for topic, table in prompts.sources.items():
        assert topic in {settings.topic(s) for s in by_name[table.name].sources}
    assert set(changelog_topics(settings)) == {
        (f"x.llmpulse-{t.app}-{t.name}-changelog", t.partitions) for t in TABLES
    }


# --- the sink worker's sinks ----------------------------------------------------------------


def _concrete_sinks() -> set[type[Any]]:
    for module in pkgutil.iter_modules(sinks_package.__path__):
        importlib.import_module(f"{sinks_package.__name__}.{module.name}")
    found: set[type[Any]] = set()
    todo: list[type[Any]] = [ClickHouseSink]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not inspect.isabstract(cls):
            found.add(cls)
    return found


def test_build_sinks_covers_every_sink_flow(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    client: Any = object()  # the sinks only keep it until they run
    sinks = list(build_sinks(settings, client))
    assert {type(s) for s in sinks} == _concrete_sinks() == set(SINK_TYPES)
    assert len(sinks) == len(SINK_TYPES)
    flows = [s.FLOW for s in sinks]
    assert len(set(flows)) == len(flows)
    assert all(s.SOURCE in TOPICS for s in sinks)
    assert all(s.group == f"{settings.consumer_group_prefix}.{s.FLOW}" for s in sinks)
    assert all(s.client is client for s in sinks)


def test_build_sinks_options(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    client: Any = object()
    built = build_sinks(
        settings,
        client,
        usage_max_rows=7,
        usage_max_seconds=3.0,
        max_seconds=0.5,
        groups={"usage_events": "demo"},
    )
    assert (built.usage.max_rows, built.usage.max_seconds, built.usage.group) == (7, 3.0, "demo")
    for sink in (built.breaker_transitions, built.prompt_versions, built.prompt_performance):
        assert sink.max_seconds == 0.5
        assert sink.max_rows == settings.sink_batch_max_rows
        assert sink.group == f"{settings.consumer_group_prefix}.{sink.FLOW}"
    assert built.prompt_versions.topic == settings.topic(PROMPT_VERSIONS)
    with pytest.raises(ValueError, match="no sink has the flow"):
        build_sinks(settings, client, groups={"usage": "demo"})
