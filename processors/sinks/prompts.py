"""Prompt flows into ClickHouse, run by the sink worker (the one ClickHouse writer).

* ``llm.prompt-versions.v1`` -> ``prompt_versions`` (the registry history);
* ``llm.prompt-performance.v1`` -> ``prompt_performance`` (closed window partials).
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmpulse.processors.sinks.base import RowSink
from llmpulse.schemas.events import PromptPerformance, PromptVersionEvent
from llmpulse.schemas.topics import PROMPT_PERFORMANCE, PROMPT_VERSIONS

VERSION_COLUMNS: tuple[str, ...] = (
    "prompt_name",
    "version",
    "action",
    "ab_weight",
    "temperature",
    "max_tokens",
    "model",
    "tags",
    "content",
    "system_message",
    "event_id",
    "event_time",
)
PERFORMANCE_COLUMNS: tuple[str, ...] = (
    "prompt_name",
    "prompt_version",
    "window_seconds",
    "window_start",
    "source_topic",
    "source_partition",
    "first_offset",
    "is_correction",
    "executions",
    "successes",
    "failures",
    "latency_sum_ms",
    "latency_sq_ms",
    "latency_sketch",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cost_sq",
    "feedback_count",
    "feedback_sum",
    "feedback_sq",
    "event_id",
)


def version_row(e: PromptVersionEvent) -> list[Any]:
    return [
        e.prompt_name,
        e.version,
        e.action.value,
        e.ab_weight,
        e.temperature,
        e.max_tokens,
        e.model or "",
        list(e.tags),
        e.content or "",
        e.system_message or "",
        e.event_id,
        e.event_time,
    ]


def performance_row(p: PromptPerformance) -> list[Any]:
    return [getattr(p, c) for c in PERFORMANCE_COLUMNS]


class PromptVersionsSink(RowSink):
    SOURCE: ClassVar[str] = PROMPT_VERSIONS
    MODEL = PromptVersionEvent
    FLOW: ClassVar[str] = "prompt_versions"
    TABLE: ClassVar[str] = "prompt_versions"
    COLUMNS: ClassVar[tuple[str, ...]] = VERSION_COLUMNS

    def row(self, event: Any) -> list[Any]:
        return version_row(event)


class PromptPerformanceSink(RowSink):
    SOURCE: ClassVar[str] = PROMPT_PERFORMANCE
    MODEL = PromptPerformance
    FLOW: ClassVar[str] = "prompt_performance"
    TABLE: ClassVar[str] = "prompt_performance"
    COLUMNS: ClassVar[tuple[str, ...]] = PERFORMANCE_COLUMNS

    def row(self, event: Any) -> list[Any]:
        return performance_row(event)
