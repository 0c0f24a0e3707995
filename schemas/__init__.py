"""llmpulse event contracts: pydantic v2 models, the topic registry and JSON Schema export.

This package imports nothing from the rest of the project, so application
services can depend on it alone.

Errors: the contracts define no exception classes of their own. Decoding
(``Model.model_validate_json``) raises pydantic's ``ValidationError``, whose
entries name the field and the rule; the workers turn it into a DLQ reason
(``llmpulse.processors.stream.codec.PoisonEvent``) and the gateway into its own
tree (``llmpulse.gateway.exceptions``), so neither lets it escape.
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
