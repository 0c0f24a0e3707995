"""Typed event models: the wire contract of every llmpulse topic.

Every model is strict: unknown fields are rejected, strings are never coerced
to numbers, money is a decimal *string* on the wire (never a JSON number, so
no float ever touches it), timestamps must carry a time zone and are
normalised to UTC. Identifier fields accept a short token alphabet only, so
they cannot carry prompt text, and values that look like credentials are
rejected outright. The only free text in the contract is a prompt template's
``content`` / ``system_message`` in the prompt registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

#: Patterns of values that must never travel in an event (API keys, bearer tokens,
#: cloud access keys, private keys). Shared with the DLQ redactor.
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{6,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:ghp|gho|xox[abp])[-_][A-Za-z0-9\-_]{10,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)


_ANY_SECRET = re.compile("|".join(f"(?:{p.pattern})" for p in SECRET_PATTERNS))


def looks_like_secret(value: str) -> bool:
    """True when ``value`` contains something shaped like a credential."""
    return _ANY_SECRET.search(value) is not None


def _no_secret(value: str) -> str:
    if looks_like_secret(value):
        # Never echo the value: error messages end up in DLQ headers and logs.
        raise ValueError("value looks like a credential and is not accepted")
    return value


_DECIMAL_RE = re.compile(r"-?[0-9]{1,30}(?:\.[0-9]{1,30})?")


def _require_decimal_string(value: Any) -> Any:
    # JSON numbers are parsed as floats by most producers, so decimals must be strings.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError('decimal values must be JSON strings such as "0.0125"')
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError("not a plain decimal string (digits, optional sign and point)")
    return Decimal(value)


def _plain_decimal(value: Decimal) -> str:
    # Never scientific notation ("1E-9"): the wire format is a plain decimal string.
    return format(value, "f")


#: JSON serialisation of every Decimal field: plain notation, as a string.
_PLAIN = PlainSerializer(_plain_decimal, return_type=str, when_used="json")


def _decimal_json(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {"type": "string", "pattern": f"^{_DECIMAL_RE.pattern}$", "description": description}
    )


#: Short identifiers: ids, names, provider/model names. No spaces, bounded length.
Identifier = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+\-]*$"),
    AfterValidator(_no_secret),
]
#: Money in USD: finite, non-negative, at most 9 decimal places (ClickHouse Decimal(38, 9)).
Money = Annotated[
    Decimal,
    BeforeValidator(_require_decimal_string),
    Field(ge=0, le=Decimal("1000000"), max_digits=18, decimal_places=9, allow_inf_nan=False),
    _decimal_json("USD as a decimal string, 0 to 1000000, at most 9 decimal places"),
    _PLAIN,
]
#: Token counts: non-negative with a sane ceiling (no model has a 100M-token context).
Tokens = Annotated[int, Field(ge=0, le=100_000_000)]
Millis = Annotated[int, Field(ge=0, le=86_400_000)]
Attempt = Annotated[int, Field(ge=1, le=100)]
PromptVersionNumber = Annotated[int, Field(ge=1, le=1_000_000)]


@dataclass(frozen=True)
class EventTimeBounds:
    """How far ``event_time`` may lie before / after the validating clock.

    ``max_past`` does not apply to state records (``Event.STATE_RECORD``): the
    latest record of a key on a compacted topic is current however old it is.
    """

    max_past: timedelta = timedelta(days=400)
    max_future: timedelta = timedelta(minutes=5)

    #: Key under which the bounds (and optionally ``now``) travel in a validation context.
    CONTEXT_KEY: ClassVar[str] = "event_time_bounds"


class Operation(StrEnum):
    """Kind of provider call; every value is billed as its own column."""

    completion = "completion"
    embedding = "embedding"
    moderation = "moderation"
    image = "image"
    audio = "audio"
    rerank = "rerank"


class OutcomeStatus(StrEnum):
    success = "success"
    failure = "failure"
    timeout = "timeout"
    rejected = "rejected"
    #: The caller gave up (cancellation, or its overall deadline cut the attempt
    #: short): says nothing about the provider, ignored by the breaker.
    cancelled = "cancelled"


class ErrorClass(StrEnum):
    rate_limited = "rate_limited"
    server_error = "server_error"
    timeout = "timeout"
    client_error = "client_error"
    auth_error = "auth_error"
    content_policy = "content_policy"
    network = "network"
    cancelled = "cancelled"


class PromptAction(StrEnum):
    created = "created"
    activated = "activated"
    deactivated = "deactivated"


class BreakerAction(StrEnum):
    force_open = "force_open"
    force_close = "force_close"
    disable = "disable"
    reset = "reset"


class BreakerState(StrEnum):
    """Breaker states. ``GAUGE`` gives the numeric value of ``circuit_breaker_state``."""

    closed = "closed"
    half_open = "half_open"
    open = "open"
    forced_open = "forced_open"
    disabled = "disabled"


#: Numeric mapping exported as the ``circuit_breaker_state`` gauge (dashboards rely on it).
BREAKER_STATE_GAUGE: dict[BreakerState, int] = {
    BreakerState.closed: 0,
    BreakerState.half_open: 1,
    BreakerState.open: 2,
    BreakerState.forced_open: 3,
    BreakerState.disabled: 4,
}


class Event(BaseModel):
    """Fields every event carries.

    ``event_id`` is generated once by the producer and reused on every retry;
    it is the idempotency key downstream. ``event_time`` must be time-zone aware;
    it is stored in UTC and must lie within the bounds given in the validation
    context (``EventTimeBounds``; defaults apply when no context is given),
    except that a state record (``STATE_RECORD``) may be any age.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, use_enum_values=False)

    SCHEMA_VERSION: ClassVar[int] = 1
    #: A state record (the value of a key on a compacted topic, or a copy of one):
    #: it stays current for as long as nothing replaces it, so its ``event_time``
    #: (when the state began) has no ``max_past`` bound. Bounding it would make
    #: a registry or a breaker that has not changed for that long unreadable.
    STATE_RECORD: ClassVar[bool] = False

    event_id: UUID
    schema_version: Literal[1] = 1
    event_time: AwareDatetime

    @field_validator("event_time", mode="after")
    @classmethod
    def _event_time_in_bounds(cls, value: datetime, info: ValidationInfo) -> datetime:
        ctx = info.context if isinstance(info.context, dict) else {}
        bounds = ctx.get(EventTimeBounds.CONTEXT_KEY, EventTimeBounds())
        now = ctx.get("now") or datetime.now(UTC)
        value = value.astimezone(UTC)
        if value > now + bounds.max_future:
            raise ValueError(f"event_time is more than {bounds.max_future} in the future")
        if not cls.STATE_RECORD and value < now - bounds.max_past:
            raise ValueError(f"event_time is more than {bounds.max_past} in the past")
        return value


class LLMRequest(Event):
    """An attempt to call a provider, emitted before the call (topic key: provider)."""

    request_id: UUID
    org_id: Identifier
    user_id: Identifier | None = None
    subject_id: Identifier | None = None
    operation: Operation
    provider: Identifier
    model: Identifier
    prompt_name: Identifier | None = None
    prompt_version: PromptVersionNumber | None = None
    attempt: Attempt = 1


class LLMOutcome(Event):
    """The result of one provider attempt: breaker input, usage and billing record.

    ``cost_usd`` is the cost the caller observed (reported cost); list cost is
    computed from the price table at report time.
    """

    request_id: UUID
    org_id: Identifier
    user_id: Identifier | None = None
    operation: Operation
    provider: Identifier
    model: Identifier
    prompt_name: Identifier | None = None
    prompt_version: PromptVersionNumber | None = None
    status: OutcomeStatus
    error_class: ErrorClass | None = None
    http_status: Annotated[int, Field(ge=100, le=599)] | None = None
    retry_after_ms: Millis | None = None
    latency_ms: Millis
    ttft_ms: Millis | None = None
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cached_tokens: Tokens = 0
    cost_usd: Money = Decimal("0")
    cache_hit: bool = False
    attempt: Attempt = 1
    is_probe: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> LLMOutcome:
        if self.status is OutcomeStatus.success and self.error_class is not None:
            raise ValueError("error_class must be empty when status is success")
        if self.status is not OutcomeStatus.success and self.error_class is None:
            raise ValueError("error_class is required when status is not success")
        if self.retry_after_ms is not None and self.error_class is not ErrorClass.rate_limited:
            raise ValueError("retry_after_ms is only valid with error_class rate_limited")
        if self.cached_tokens > self.input_tokens:
            raise ValueError("cached_tokens cannot exceed input_tokens")
        if (self.prompt_name is None) != (self.prompt_version is None):
            raise ValueError("prompt_name and prompt_version must be given together")
        return self


class Feedback(Event):
    """A user's score (0 to 5) for one request made with a prompt version (key: prompt_name)."""

    request_id: UUID
    org_id: Identifier
    prompt_name: Identifier
    prompt_version: PromptVersionNumber
    score: Annotated[
        Decimal,
        BeforeValidator(_require_decimal_string),
        Field(ge=0, le=5, max_digits=4, decimal_places=2, allow_inf_nan=False),
        _decimal_json("score 0 to 5 as a decimal string, at most 2 decimal places"),
        _PLAIN,
    ]


class PromptVersionEvent(Event):
    """Prompt registry change (compacted topic, key: prompt_name).

    ``content`` and ``system_message`` are the only free-text fields in the
    whole contract; they are never copied into usage rows, logs or the DLQ.
    A version created years ago is still a version: any ``event_time`` age.
    """

    STATE_RECORD: ClassVar[bool] = True

    prompt_name: Identifier
    version: PromptVersionNumber
    action: PromptAction
    content: Annotated[str, Field(max_length=100_000)] | None = None
    system_message: Annotated[str, Field(max_length=100_000)] | None = None
    temperature: (
        Annotated[
            Decimal,
            BeforeValidator(_require_decimal_string),
            Field(ge=0, le=2, max_digits=3, decimal_places=2, allow_inf_nan=False),
            _decimal_json("sampling temperature 0 to 2 as a decimal string"),
            _PLAIN,
        ]
        | None
    ) = None
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    model: Identifier | None = None
    ab_weight: (
        Annotated[
            Decimal,
            BeforeValidator(_require_decimal_string),
            Field(ge=0, le=1, max_digits=5, decimal_places=4, allow_inf_nan=False),
            _decimal_json("A/B traffic weight 0 to 1 as a decimal string"),
            _PLAIN,
        ]
        | None
    ) = None
    tags: tuple[Identifier, ...] = ()

    @model_validator(mode="after")
    def _content_on_create(self) -> PromptVersionEvent:
        if self.action is PromptAction.created and not self.content:
            raise ValueError("content is required when action is created")
        return self


#: Longest force-open with an end time; longer: force-open without one, close it later.
FORCE_OPEN_MAX = timedelta(days=30)


def force_open_until_problem(until: datetime, at: datetime) -> str | None:
    """Why ``until`` cannot end a force-open sent at ``at`` (one line), or None.

    The one rule for the command line (which refuses the argument) and the
    contract (a control breaking it is dead-lettered, never applied).
    """
    if until <= at:
        return f"until {until.isoformat()} is not in the future"
    if until - at > FORCE_OPEN_MAX:
        return f"until {until.isoformat()} is more than {FORCE_OPEN_MAX.days} days ahead"
    return None


class BreakerControl(Event):
    """Operator override for one provider's breaker (key: provider).

    ``until`` (force_open only) must lie after ``event_time`` and at most 30 days
    (``FORCE_OPEN_MAX``) later. The command line refuses it with other actions;
    records of older versions that carry it with another action are applied
    without it, as they always were.
    """

    provider: Identifier
    action: BreakerAction
    reason: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_secret)]
    until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _until_in_range(self) -> BreakerControl:
        if self.until is not None and self.action is BreakerAction.force_open:
            problem = force_open_until_problem(self.until, self.event_time)
            if problem:
                raise ValueError(problem)
        return self


class BreakerSnapshot(Event):
    """Fleet-wide breaker state of one provider (compacted topic, key: provider).

    ``version`` increases by one on every change; readers apply a snapshot only
    when its version is newer than the one they hold. ``event_time`` is when the
    state began (``since``), any age: a breaker may stay closed for years.
    """

    STATE_RECORD: ClassVar[bool] = True

    provider: Identifier
    state: BreakerState
    version: Annotated[int, Field(ge=0)]
    since: AwareDatetime
    as_of: AwareDatetime
    failure_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    calls_in_window: Annotated[int, Field(ge=0)]
    next_attempt_at: AwareDatetime | None = None
    previous_state: BreakerState | None = None
    reason: Annotated[str, Field(max_length=100, pattern=r"^[a-z_ ]*$")] | None = None
    #: Half-open probes the fleet may send per half-open period (the number of
    #: permit slots, ``llmpulse.schemas.serving.permit_keys``).
    probe_permits: Annotated[int, Field(ge=1, le=100)] = 1


class PromptPerformance(Event):
    """One closed rollup of a prompt version over an event-time window (key: prompt_name).

    Each record is a partial from one source partition (``source_topic``,
    ``source_partition``) starting at ``first_offset``; consumers add partials up
    (every field is a sum, the latency sketch merges by adding bucket counts).
    ``is_correction`` marks events that arrived after the window had closed.
    ``latency_sketch`` maps a log-bucket index to a count (relative error 1%:
    bucket i covers (g^(i-1), g^i] ms with g = 1.01/0.99; index 0 holds 0 ms).
    """

    prompt_name: Identifier
    prompt_version: PromptVersionNumber
    window_seconds: Annotated[int, Field(ge=1, le=86_400)]
    window_start: AwareDatetime
    source_topic: Identifier
    source_partition: Annotated[int, Field(ge=0)]
    first_offset: Annotated[int, Field(ge=0)]
    is_correction: bool = False
    executions: Annotated[int, Field(ge=0)] = 0
    successes: Annotated[int, Field(ge=0)] = 0
    failures: Annotated[int, Field(ge=0)] = 0
    latency_sum_ms: Annotated[int, Field(ge=0)] = 0
    latency_sq_ms: Annotated[int, Field(ge=0)] = 0
    latency_sketch: dict[int, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    input_tokens: Annotated[int, Field(ge=0)] = 0
    output_tokens: Annotated[int, Field(ge=0)] = 0
    cost_usd: Annotated[
        Decimal,
        BeforeValidator(_require_decimal_string),
        Field(ge=0, decimal_places=9, allow_inf_nan=False),
        _decimal_json("sum of reported cost in USD as a decimal string"),
        _PLAIN,
    ] = Decimal(0)
    cost_sq: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    feedback_count: Annotated[int, Field(ge=0)] = 0
    feedback_sum: Annotated[
        Decimal,
        BeforeValidator(_require_decimal_string),
        Field(ge=0, decimal_places=2, allow_inf_nan=False),
        _decimal_json("sum of feedback scores as a decimal string"),
        _PLAIN,
    ] = Decimal(0)
    feedback_sq: Annotated[
        Decimal,
        BeforeValidator(_require_decimal_string),
        Field(ge=0, decimal_places=4, allow_inf_nan=False),
        _decimal_json("sum of squared feedback scores as a decimal string"),
        _PLAIN,
    ] = Decimal(0)
