"""llmpulse event contracts: pydantic v2 models, the topic registry and JSON Schema export.

This package imports nothing from the rest of the project, so application
services can depend on it alone.
"""

from llmpulse.schemas.events import (
    BreakerAction,
    BreakerControl,
    BreakerSnapshot,
    BreakerState,
    ErrorClass,
    Event,
    EventTimeBounds,
    Feedback,
    LLMOutcome,
    LLMRequest,
    Operation,
    OutcomeStatus,
    PromptAction,
    PromptPerformance,
    PromptVersionEvent,
)
from llmpulse.schemas.topics import TOPICS, TopicSpec, topic_spec

__all__ = [
    "TOPICS",
    "BreakerAction",
    "BreakerControl",
    "BreakerSnapshot",
    "BreakerState",
    "ErrorClass",
    "Event",
    "EventTimeBounds",
    "Feedback",
    "LLMOutcome",
    "LLMRequest",
    "Operation",
    "OutcomeStatus",
    "PromptAction",
    "PromptPerformance",
    "PromptVersionEvent",
    "TopicSpec",
    "topic_spec",
]
