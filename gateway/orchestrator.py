"""Breaker-aware provider failover for one app instance (the seed's ProviderOrchestrator).

Per request:

1. Providers are tried by ``priority`` (lower first); equal priorities are
   ordered by a weighted random draw per request (``weight``).
2. A provider is skipped while its breaker blocks it (``BreakerView.route``),
   while a 429's Retry-After has not passed in this instance, or when it is
   half-open and no fleet-wide probe permit is free.
3. Each attempt has its own timeout (``Provider.timeout_seconds``, cut to the
   request's remaining deadline) and produces an ``LLMRequest`` before and an
   ``LLMOutcome`` after the call, with ids generated here, through the
   non-blocking emitter. The outcome also feeds the instance's local breaker.
4. Errors are classified (``llmpulse.gateway.errors``): timeouts, 5xx, 429 and network
   errors fail over to the next provider; any other 4xx (and content-policy
   rejections) goes back to the caller at once as ``RequestRejected``, without
   retry or failover. Exceptions that are not provider errors (bugs in the call
   function) propagate unchanged.
5. When every provider of a round failed or was skipped, the next round starts
   after an exponential backoff with full jitter, until ``max_rounds`` or the
   overall deadline: then ``AllProvidersFailed`` (``NoProviderAvailable`` when
   no provider could be called at all).

A paid result is never lost to validation. The caller's ``LLMCall`` (and
deadline) is checked against the event contract before any provider is called:
``InvalidRequest``, zero provider calls. A provider's result is checked after
the call (``Completion`` fields as strictly as ``LLMOutcome`` takes them: ints
for tokens, a ``Decimal`` for ``cost_usd``...). An invalid one is not dropped
and not retried on another provider (the call function's code is at fault, not
the provider): ``InvalidCompletion`` carries it as returned, with the provider
and model. Its attempt's ``LLMOutcome`` says what is known for sure: status
``failure`` with error class ``client_error`` (the caller did not get a usable
result, and the breakers ignore ``client_error``: the provider answered), with
every usage field that is valid on its own (tokens, ``cost_usd``...) so billing
still counts them; an invalid field is recorded as 0 (None for ``ttft_ms``) and
is only in the exception's ``raw``.

Every attempt gets an outcome. An attempt the caller ended (its task was
cancelled, or its overall deadline cut the attempt's timeout short) has status
``cancelled``, which the breakers ignore: a caller's impatience says nothing
about the provider. Cancellation-safe: a cancelled request gives back a probe
permit it holds (the probe never completed). No attempt starts with less than
``MIN_ATTEMPT_SECONDS`` of the deadline left.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from llmpulse.gateway import metrics
from llmpulse.gateway.backoff import Backoff
from llmpulse.gateway.breaker_view import BreakerView, ProviderHealth, Route
from llmpulse.gateway.errors import ErrorDecision, classify_error
from llmpulse.gateway.exceptions import (
    AllProvidersFailed,
    ConfigError,
    InvalidCompletion,
    InvalidRequest,
    NoProviderAvailable,
    RequestRejected,
)
from llmpulse.schemas.events import (
    ErrorClass,
    Feedback,
    Identifier,
    LLMOutcome,
    LLMRequest,
    Millis,
    Money,
    Operation,
    OutcomeStatus,
    Tokens,
)

#: An attempt is not started with less than this left of the request's deadline.
MIN_ATTEMPT_SECONDS = 0.01
#: The outcome of an attempt the caller ended (cancellation or its deadline).
CANCELLED = ErrorDecision(
    status=OutcomeStatus.cancelled,
    error_class=ErrorClass.cancelled,
    http_status=None,
    retryable=False,
    retry_after_s=None,
)
#: The outcome of an attempt whose result the call function returned invalid: the
#: provider answered (the breakers ignore client_error), the caller got no result.
INVALID_COMPLETION = ErrorDecision(
    status=OutcomeStatus.failure,
    error_class=ErrorClass.client_error,
    http_status=None,
    retryable=False,
    retry_after_s=None,
)
#: The contract's ceiling for milliseconds (``Millis``): longer values are clamped.
_MAX_MILLIS = 86_400_000
#: The contract's ceiling for attempts per request (``Attempt``).
_MAX_ATTEMPTS = 100


class Emitter(Protocol):
    """What the orchestrator needs from ``llmpulse.gateway.emitter.EventEmitter``."""

    def emit(self, event: LLMRequest | LLMOutcome | Feedback) -> None: ...


@dataclass(frozen=True)
class LLMCall:
    """One logical request from the application (attempts share its ``request_id``)."""

    org_id: str
    operation: Operation = Operation.completion
    user_id: str | None = None
    subject_id: str | None = None
    prompt_name: str | None = None
    prompt_version: int | None = None
    #: Whatever the provider call function needs (messages, parameters...).
    payload: Any = None


@dataclass(frozen=True)
class Completion:
    """What a provider call function returns on success.

    Not validated when built (a call function must be able to hand back whatever
    the provider said); ``ProviderOrchestrator.execute`` checks it after the call
    and raises ``InvalidCompletion``, carrying it, when a field is invalid:
    tokens are ints in 0..100,000,000 (``cached_tokens`` <= ``input_tokens``),
    ``cost_usd`` a finite ``Decimal`` in 0..1,000,000 with at most 9 decimal
    places, ``ttft_ms`` None or an int in 0..86,400,000, ``cache_hit`` a bool.
    """

    content: Any = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    ttft_ms: int | None = None
    cache_hit: bool = False


ProviderCall = Callable[[LLMCall, str], Awaitable[Completion]]


@dataclass(frozen=True)
class Provider:
    """A provider as this instance calls it: ``call(request, model)`` raises on failure."""

    name: str
    model: str
    call: ProviderCall
    priority: int = 0
    weight: float = 1.0
    timeout_seconds: float = 30.0
    #: Model per operation where it differs from ``model`` (e.g. embeddings).
    models: Mapping[Operation, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Raises ``ConfigError`` unless names are event identifiers and numbers are > 0."""
        if not (self.weight > 0 and self.timeout_seconds > 0):
            raise ConfigError(
                f"provider {self.name}: weight and timeout_seconds must be > 0",
                names=["weight", "timeout_seconds"],
            )
        # Checked here, not when the first event is built mid-request.
        for what, value in [
            ("name", self.name),
            ("model", self.model),
            *((f"models[{op}]", m) for op, m in self.models.items()),
        ]:
            try:
                _IDENTIFIER.validate_python(value)
            except ValidationError:
                raise ConfigError(
                    f"provider {what} {value!r} is not an event identifier "
                    "(1 to 128 of A-Z a-z 0-9 . _ : / @ + -, starting alphanumeric)",
                    names=[what],
                ) from None

    def model_for(self, operation: Operation) -> str:
        return self.models.get(operation, self.model)


@dataclass(frozen=True)
class AttemptRecord:
    """One provider attempt of a request."""

    provider: str
    attempt: int
    status: OutcomeStatus
    error_class: ErrorClass | None
    latency_ms: float
    probe: bool


@dataclass(frozen=True)
class Result:
    """A served request. ``added_latency_ms``: time spent beyond the successful call."""

    request_id: uuid.UUID
    provider: str
    model: str
    completion: Completion
    attempts: tuple[AttemptRecord, ...]
    elapsed_ms: float
    added_latency_ms: float
    failed_over: bool


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
#: Each usage field of a Completion: the type it must have and the contract's rule.
_USAGE: dict[str, tuple[type | tuple[type, ...], str, TypeAdapter[Any]]] = {
    "input_tokens": (int, "an int", TypeAdapter(Tokens)),
    "output_tokens": (int, "an int", TypeAdapter(Tokens)),
    "cached_tokens": (int, "an int", TypeAdapter(Tokens)),
    "cost_usd": (Decimal, "a Decimal", TypeAdapter(Money)),
    "ttft_ms": ((int, type(None)), "an int or None", TypeAdapter(Millis | None)),
    "cache_hit": (bool, "a bool", TypeAdapter(bool)),
}


def check_completion(value: object) -> tuple[Completion, tuple[str, ...]]:
    """The part of a call function's result an ``LLMOutcome`` can carry, and its problems.

    Returns ``(value, ())`` when ``value`` is a valid ``Completion`` (see its
    docstring). Otherwise a ``Completion`` with the same content and only the
    usage fields that are valid on their own (the others at their defaults),
    and one line per problem naming the field (never its value). Never raises.
    """
    if not isinstance(value, Completion):
        return Completion(), (f"expected a Completion, got {type(value).__name__}",)
    valid: dict[str, Any] = {}
    problems: list[str] = []
    for name, (kind, kind_text, adapter) in _USAGE.items():
        field_value = getattr(value, name)
        # bool is an int: a True token count is a bug, not 1 token.
        if not isinstance(field_value, kind) or (
            isinstance(field_value, bool) and kind is not bool
        ):
            problems.append(f"{name} must be {kind_text}, got {type(field_value).__name__}")
            continue
        try:
            adapter.validate_python(field_value, strict=True)
        except ValidationError as exc:
            msg = exc.errors(include_url=False, include_input=False)[0]["msg"]
            problems.append(f"{name}: {msg.removeprefix('Value error, ')}")
            continue
        valid[name] = field_value
    if valid.get("cached_tokens", 0) > valid.get("input_tokens", 0):
        problems.append("cached_tokens cannot exceed input_tokens")
        del valid["cached_tokens"]
    if not problems:
        return value, ()
    return Completion(content=value.content, **valid), tuple(problems)


def _check_call(call: LLMCall, deadline_seconds: float | None, now: datetime) -> None:
    """Raise ``InvalidRequest`` unless ``call`` fits the event contract (no I/O)."""
    problems: list[str] = []
    if deadline_seconds is not None and not (
        isinstance(deadline_seconds, int | float)
        and math.isfinite(deadline_seconds)
        and deadline_seconds > 0
    ):
        problems.append("deadline_seconds must be a finite number > 0")
    if not isinstance(call, LLMCall):
        problems.append(f"expected an LLMCall, got {type(call).__name__}")
    else:
        try:
            # The events of every attempt carry these fields: the contract decides.
            LLMRequest(
                event_id=_PROBE_ID,
                event_time=now,
                request_id=_PROBE_ID,
                org_id=call.org_id,
                user_id=call.user_id,
                subject_id=call.subject_id,
                operation=call.operation,
                provider="probe",
                model="probe",
                prompt_name=call.prompt_name,
                prompt_version=call.prompt_version,
            )
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in err["loc"]) or "call"
                problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        if (call.prompt_name is None) != (call.prompt_version is None):
            problems.append("prompt_name and prompt_version must be given together")
    if problems:
        raise InvalidRequest("invalid request: " + "; ".join(problems), problems=problems)


_PROBE_ID = uuid.UUID(int=0)


@dataclass
class _Request:
    call: LLMCall
    request_id: uuid.UUID
    deadline: float
    attempts: list[AttemptRecord] = field(default_factory=list)


class ProviderOrchestrator:
    """Routes requests over providers with the fleet's breaker view (see module doc)."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        view: BreakerView,
        emitter: Emitter,
        backoff: Backoff | None = None,
        max_rounds: int = 3,
        deadline_seconds: float = 60.0,
        max_retry_after_seconds: float = 600.0,
        rng: random.Random | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        if not providers:
            raise ConfigError("at least one provider is required", names=["providers"])
        if len({p.name for p in providers}) != len(providers):
            raise ConfigError("provider names must be unique", names=["providers"])
        if max_rounds < 1 or not deadline_seconds > 0:
            raise ConfigError(
                "max_rounds must be >= 1 and deadline_seconds > 0",
                names=["max_rounds", "deadline_seconds"],
            )
        if max_rounds * len(providers) > _MAX_ATTEMPTS:
            # Else a request's later attempts could not be recorded (LLMRequest.attempt).
            raise ConfigError(
                f"max_rounds x providers must be <= {_MAX_ATTEMPTS} (attempts per request)",
                names=["max_rounds", "providers"],
            )
        self.providers = list(providers)
        self.view = view
        self.emitter = emitter
        self.backoff = backoff or Backoff()
        self.max_rounds = max_rounds
        self.deadline_seconds = deadline_seconds
        # A provider's Retry-After is honoured up to this bound (a bogus "one day"
        # must not take a provider out of this instance's rotation for a day).
        self.max_retry_after_seconds = max_retry_after_seconds
        self._rng = rng or random.Random()
        self._wall = wall
        self._mono = mono
        self._not_before: dict[str, float] = {}

    # --- public -----------------------------------------------------------------------
    async def execute(self, call: LLMCall, *, deadline_seconds: float | None = None) -> Result:
        """Serve ``call`` from the first provider that succeeds (see module doc).

        Raises ``InvalidRequest`` (before any provider call) for an invalid
        ``call`` or deadline; ``RequestRejected``, ``InvalidCompletion``,
        ``AllProvidersFailed`` or ``NoProviderAvailable`` (all ``RequestFailed``,
        with the request id and attempts) when no valid result was obtained; and
        re-raises unchanged what a call function raised that is not a provider
        failure. Never raises pydantic's ``ValidationError``.
        """
        _check_call(call, deadline_seconds, self._wall())
        started = self._mono()
        req = _Request(call, uuid.uuid4(), started + (deadline_seconds or self.deadline_seconds))
        preferred: str | None = None
        for round_no in range(self.max_rounds):
            if round_no:
                delay = self.backoff.delay(round_no - 1, self._rng)
                if self._mono() + delay >= req.deadline:
                    break
                await asyncio.sleep(delay)
            for provider in self.order():
                preferred = preferred or provider.name
                if self._mono() >= req.deadline:
                    raise AllProvidersFailed(
                        "deadline passed", req.attempts, request_id=req.request_id
                    )
                completion = await self._try(provider, req)
                if completion is not None:
                    elapsed = (self._mono() - started) * 1000
                    if provider.name != preferred:
                        metrics.FAILOVERS.labels(provider=provider.name).inc()
                    return Result(
                        request_id=req.request_id,
                        provider=provider.name,
                        model=provider.model_for(req.call.operation),
                        completion=completion,
                        attempts=tuple(req.attempts),
                        elapsed_ms=elapsed,
                        added_latency_ms=max(0.0, elapsed - req.attempts[-1].latency_ms),
                        failed_over=provider.name != preferred,
                    )
        if not req.attempts:
            raise NoProviderAvailable(
                "every provider is unavailable", req.attempts, request_id=req.request_id
            )
        raise AllProvidersFailed("every attempt failed", req.attempts, request_id=req.request_id)

    def order(self) -> list[Provider]:
        """Providers by priority; equal priorities in a weighted random order."""
        keyed = [(p.priority, -(self._rng.random() ** (1 / p.weight)), p) for p in self.providers]
        keyed.sort(key=lambda k: (k[0], k[1]))
        return [p for _, _, p in keyed]

    def health(self) -> list[tuple[ProviderHealth, float]]:
        """Every breaker's view (per provider, and per model where the worker runs one)
        and the seconds left of its provider's Retry-After cooldown."""
        now = self._mono()
        return [
            (h, max(0.0, self._not_before.get(h.provider.split("/")[0], now) - now))
            for h in self.view.health()
        ]

    # --- one attempt ----------------------------------------------------------------------
    async def _try(self, provider: Provider, req: _Request) -> Completion | None:
        """Attempt ``provider`` if it may be called; None if skipped or failed over."""
        if self._not_before.get(provider.name, 0.0) > self._mono():
            return None
        route = self.view.route(provider.name, provider.model_for(req.call.operation))
        if not route.allowed:
            return None
        holder = str(req.request_id)
        if route.probe:
            try:
                if not await self.view.acquire_permit(route, holder):
                    return None
            except asyncio.CancelledError:
                await asyncio.shield(self.view.release_permit(route, holder))
                raise
        return await self._call(provider, route, req)

    async def _call(self, provider: Provider, route: Route, req: _Request) -> Completion | None:
        call, number = req.call, len(req.attempts) + 1
        model = provider.model_for(call.operation)
        holder = str(req.request_id)
        budget = req.deadline - self._mono()
        if budget < MIN_ATTEMPT_SECONDS:  # no time to try: leave the provider alone
            if route.probe:
                await asyncio.shield(self.view.release_permit(route, holder))
            return None
        self.emitter.emit(
            LLMRequest(
                event_id=uuid.uuid4(),
                event_time=self._wall(),
                request_id=req.request_id,
                org_id=call.org_id,
                user_id=call.user_id,
                subject_id=call.subject_id,
                operation=call.operation,
                provider=provider.name,
                model=model,
                prompt_name=call.prompt_name,
                prompt_version=call.prompt_version,
                attempt=number,
            )
        )
        cut_by_deadline = budget < provider.timeout_seconds
        began = self._mono()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that arrives as the call completes.
            async with asyncio.timeout(min(provider.timeout_seconds, budget)):
                completion = await provider.call(call, model)
        except asyncio.CancelledError:
            self._finish(provider, route, req, self._since(began), None, CANCELLED)
            if route.probe:
                await asyncio.shield(self.view.release_permit(route, holder))
            raise
        except Exception as exc:
            latency = self._since(began)
            decision = classify_error(exc, self._wall())
            if (
                decision is not None
                and decision.status is OutcomeStatus.timeout
                and cut_by_deadline
            ):
                decision = CANCELLED  # the caller's deadline, not the provider, ended it
            if decision is None or decision is CANCELLED or not decision.retryable:
                # Not the provider's fault: the next caller may probe at once.
                self._finish(provider, route, req, latency, None, decision or CANCELLED)
                if route.probe:
                    await asyncio.shield(self.view.release_permit(route, holder))
                if decision is None:
                    raise  # a bug in the call function, not a provider answer
                if decision is CANCELLED:
                    return None  # the loop reports the passed deadline
                raise RequestRejected(
                    provider.name, decision, req.attempts, request_id=req.request_id
                ) from exc
            self._finish(provider, route, req, latency, None, decision)
            if decision.retry_after_s:
                wait = min(decision.retry_after_s, self.max_retry_after_seconds)
                self._not_before[provider.name] = self._mono() + wait
            return None
        latency = self._since(began)
        usable, problems = check_completion(completion)
        if problems:
            # Paid for, so neither dropped nor retried elsewhere (module doc).
            self._finish(provider, route, req, latency, usable, INVALID_COMPLETION)
            if route.probe:
                await asyncio.shield(self.view.release_permit(route, holder))
            raise InvalidCompletion(
                provider.name,
                model,
                completion,
                problems,
                req.attempts,
                request_id=req.request_id,
            )
        self._finish(provider, route, req, latency, completion, None)
        return completion

    def _since(self, began: float) -> float:
        return (self._mono() - began) * 1000

    def _finish(
        self,
        provider: Provider,
        route: Route,
        req: _Request,
        latency_ms: float,
        completion: Completion | None,
        decision: ErrorDecision | None,
    ) -> None:
        """Record the attempt, feed the local breaker and emit the outcome."""
        call, number = req.call, len(req.attempts) + 1
        done = completion or Completion()
        status = decision.status if decision else OutcomeStatus.success
        retry_after_ms = None
        if (
            decision
            and decision.retry_after_s is not None
            and decision.error_class is ErrorClass.rate_limited
        ):
            retry_after_ms = min(round(decision.retry_after_s * 1000), _MAX_MILLIS)
        outcome = LLMOutcome(
            event_id=uuid.uuid4(),
            event_time=self._wall(),
            request_id=req.request_id,
            org_id=call.org_id,
            user_id=call.user_id,
            operation=call.operation,
            provider=provider.name,
            model=provider.model_for(call.operation),
            prompt_name=call.prompt_name,
            prompt_version=call.prompt_version,
            status=status,
            error_class=decision.error_class if decision else None,
            http_status=decision.http_status if decision else None,
            retry_after_ms=retry_after_ms,
            latency_ms=min(round(latency_ms), _MAX_MILLIS),
            ttft_ms=done.ttft_ms,
            input_tokens=done.input_tokens,
            output_tokens=done.output_tokens,
            cached_tokens=done.cached_tokens,
            cost_usd=done.cost_usd,
            cache_hit=done.cache_hit,
            attempt=number,
            is_probe=route.probe,
        )
        req.attempts.append(
            AttemptRecord(
                provider.name, number, status, outcome.error_class, latency_ms, route.probe
            )
        )
        metrics.ATTEMPTS.labels(provider=provider.name, status=status.value).inc()
        self.view.record(outcome)
        self.emitter.emit(outcome)


__all__ = [
    "INVALID_COMPLETION",
    "AllProvidersFailed",
    "AttemptRecord",
    "Completion",
    "Emitter",
    "InvalidCompletion",
    "InvalidRequest",
    "LLMCall",
    "NoProviderAvailable",
    "Provider",
    "ProviderCall",
    "ProviderOrchestrator",
    "RequestRejected",
    "Result",
    "check_completion",
]
