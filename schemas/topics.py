"""Topic registry: the only place topic names are spelled.

Each entry names the topic, the model its values carry, the field used as
message key (so one writer owns each key), the partition count, the cleanup
policy and the dead-letter topic for values that fail validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from llmpulse.schemas.events import (
    BreakerControl,
    BreakerSnapshot,
    Feedback,
    LLMOutcome,
    LLMRequest,
    PromptPerformance,
    PromptVersionEvent,
)

REQUESTS = "llm.requests.v1"
OUTCOMES = "llm.outcomes.v1"
FEEDBACK = "llm.feedback.v1"
PROMPT_VERSIONS = "llm.prompt-versions.v1"
BREAKER_CONTROL = "llm.breaker-control.v1"
BREAKER_STATE = "llm.breaker-state.v1"
BREAKER_TRANSITIONS = "llm.breaker-transitions.v1"
PROMPT_PERFORMANCE = "llm.prompt-performance.v1"

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    """Static description of one topic; qualify names with ``Settings.topic``."""

    name: str
    model: type[BaseModel]
    key_field: str
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int | None = None
    configs: dict[str, str] = field(default_factory=dict)

    @property
    def dlq(self) -> str:
        """Dead-letter topic for values of this topic that fail validation."""
        return f"{self.name}{DLQ_SUFFIX}"

    @property
    def key_fields(self) -> tuple[str, ...]:
        """Fields that make the key (``a@b`` in ``key_field`` joins two fields)."""
        return tuple(self.key_field.split("@"))

    def key_of(self, event: BaseModel) -> bytes:
        """Message key for ``event``: its key field values joined by ``@``, UTF-8."""
        return "@".join(str(getattr(event, f)) for f in self.key_fields).encode()

    def topic_configs(self) -> dict[str, str]:
        """Broker-side configuration used by ``llmpulse topics create``."""
        cfg = {"cleanup.policy": self.cleanup_policy, **self.configs}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


_WEEK_MS = 7 * 24 * 3600 * 1000

TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(REQUESTS, LLMRequest, "provider", 6, "delete", retention_ms=_WEEK_MS),
        TopicSpec(OUTCOMES, LLMOutcome, "provider", 6, "delete", retention_ms=_WEEK_MS),
        TopicSpec(FEEDBACK, Feedback, "prompt_name", 3, "delete", retention_ms=_WEEK_MS),
        # Keyed by prompt_name@version, not prompt_name: compaction keeps the last
        # record per key, and every version's latest full record must survive.
        # One partition keeps the registry in one total order.
        TopicSpec(PROMPT_VERSIONS, PromptVersionEvent, "prompt_name@version", 1, "compact"),
        TopicSpec(
            PROMPT_PERFORMANCE, PromptPerformance, "prompt_name", 3, "delete", retention_ms=_WEEK_MS
        ),
        # Same partition count and key as outcomes: the breaker agent reads both
        # into one table, which Faust requires to be co-partitioned. The message
        # key is the breaker's provider (``provider/model`` -> ``provider``,
        # ``processors.breaker.ops.control_key``), the partition of its outcomes.
        TopicSpec(BREAKER_CONTROL, BreakerControl, "provider", 6, "delete", retention_ms=_WEEK_MS),
        TopicSpec(
            BREAKER_TRANSITIONS, BreakerSnapshot, "provider", 1, "delete", retention_ms=_WEEK_MS
        ),
        TopicSpec(
            BREAKER_STATE,
            BreakerSnapshot,
            "provider",
            1,
            "compact",
            configs={"min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"},
        ),
    )
}


def topic_spec(name: str) -> TopicSpec:
    """Registry entry for ``name``; ``KeyError`` names the unknown topic."""
    try:
        return TOPICS[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {', '.join(sorted(TOPICS))}") from None
