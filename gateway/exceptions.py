"""The exceptions of the gateway SDK, in one tree.

Every error the gateway raises on purpose derives from :class:`GatewayError`, so
a service can catch one node of the tree instead of a list of classes::

    GatewayError
    ├── ConfigError              GatewayConfig, GatewayConfig.from_env, Provider or
    │                            ProviderOrchestrator was given a value that cannot work,
    │                            or EventEmitter.start found Kafka refusing its security
    │                            settings (credentials, certificate, protocol)
    ├── InvalidRequest           the caller's request is invalid; no provider was called
    ├── ProviderError            raised BY a provider call function for a failed attempt;
    │                            the orchestrator classifies it and never lets it out
    ├── RequestFailed            ProviderOrchestrator.execute could not return a Result
    │   ├── RequestRejected          a provider refused the request (not retryable)
    │   ├── InvalidCompletion        a provider answered, but its result is not a valid
    │   │                            Completion: the raw result is attached
    │   └── AllProvidersFailed       no provider served it within the rounds or deadline
    │       └── NoProviderAvailable      no provider could even be called
    ├── PromptUnavailable        PromptSelector knows no active version of the prompt
    └── EmitterError             EventEmitter used out of order
        ├── EmitterClosed            emit() after close() finished
        └── SpoolLocked              another emitter owns the spool directory

``ConfigError`` and ``InvalidRequest`` are also ``ValueError``, ``PromptUnavailable``
is also a ``LookupError`` and the emitter errors are also ``RuntimeError``, so
``except`` clauses written before this tree keep working. ``str(error)`` is one line
and never contains a request's payload or a secret (values are named, not echoed).

Outside the tree, on purpose:

* ``TypeError`` for a value of the wrong type where the signature says otherwise
  (``EventEmitter.emit`` of an unsupported event): a programming error that a type
  checker finds.
* Exceptions a provider call function raises that are not provider failures
  (a bug in it, ``asyncio.CancelledError``): ``execute`` re-raises them unchanged
  (see ``llmpulse.gateway.errors.classify_error``).
* Assigning to a field of the frozen ``GatewayConfig`` (pydantic's own error for a
  programming error a type checker finds; build a new config with ``model_copy``).

No public call of the gateway lets a pydantic ``ValidationError`` escape: invalid
values become ``ConfigError``, ``InvalidRequest`` or ``InvalidCompletion``.
This module imports nothing but the standard library.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmpulse.gateway.errors import ErrorDecision
    from llmpulse.gateway.orchestrator import AttemptRecord
    from llmpulse.schemas.events import ErrorClass

__all__ = [
    "AllProvidersFailed",
    "ConfigError",
    "EmitterClosed",
    "EmitterError",
    "GatewayError",
    "InvalidCompletion",
    "InvalidRequest",
    "NoProviderAvailable",
    "PromptUnavailable",
    "ProviderError",
    "RequestFailed",
    "RequestRejected",
    "SpoolLocked",
]


class GatewayError(Exception):
    """Base of every error the gateway SDK raises on purpose; ``str(error)`` is one line."""


class ConfigError(GatewayError, ValueError):
    """The gateway's configuration cannot work as given.

    Raised by ``GatewayConfig(...)`` and ``GatewayConfig.from_env()`` (instead of
    pydantic's ``ValidationError``), ``Provider(...)`` and ``ProviderOrchestrator(...)``,
    before any I/O. ``names`` are the settings at fault: the ``LLMPULSE_*`` variables
    when the configuration came from the environment, field names otherwise.
    """

    def __init__(self, message: str, *, names: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.names = tuple(names)


class InvalidRequest(GatewayError, ValueError):
    """The caller's request is invalid (``LLMCall`` fields, the deadline).

    Raised by ``ProviderOrchestrator.execute`` before any provider is called, so a
    caller's bad input never costs a paid call. ``problems`` name each invalid
    field and why (never its value).
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class ProviderError(GatewayError):
    """A provider call failed with a known HTTP status and/or error class.

    Provider call functions raise this (or let timeouts/network errors through)
    so that ``classify_error`` can decide between retry, failover and returning
    the error; ``execute`` turns it into ``RequestRejected`` or retries, and never
    lets it out itself. The message is kept as the exception's ``str``.
    """

    def __init__(
        self,
        message: str = "",
        *,
        http_status: int | None = None,
        error_class: ErrorClass | None = None,
        retry_after: str | float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_class = error_class
        #: Raw Retry-After: header value (delta-seconds or HTTP-date) or seconds.
        self.retry_after = retry_after


class RequestFailed(GatewayError):
    """``ProviderOrchestrator.execute`` could not serve the request.

    ``attempts`` lists every provider attempt made (each also emitted as an
    ``LLMOutcome``); ``request_id`` is the id those events carry.
    """

    def __init__(
        self,
        message: str,
        attempts: Sequence[AttemptRecord],
        *,
        request_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)
        self.request_id = request_id


class RequestRejected(RequestFailed):
    """A provider refused the request and another would refuse it too.

    Raised for a non-retryable provider error (4xx other than 408/429, auth,
    content policy): returned at once, without retry or failover. ``decision``
    is the classification (``llmpulse.gateway.errors.classify_error``); the
    provider's own ``ProviderError`` is the ``__cause__``.
    """

    def __init__(
        self,
        provider: str,
        decision: ErrorDecision,
        attempts: Sequence[AttemptRecord],
        *,
        request_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(
            f"{provider} rejected the request: {decision.error_class.value}"
            + (f" (HTTP {decision.http_status})" if decision.http_status else ""),
            attempts,
            request_id=request_id,
        )
        self.provider = provider
        self.decision = decision


class InvalidCompletion(RequestFailed):
    """A provider answered, but its call function returned an invalid ``Completion``.

    The provider was called (and may have charged for it), so the result is not
    dropped: ``raw`` is exactly what the call function returned, with ``provider``
    and ``model`` that produced it. ``problems`` name each invalid field and why
    (for example ``cost_usd`` given as a float instead of a ``Decimal``). No other
    provider is tried: the same call function code would be at fault again.
    """

    def __init__(
        self,
        provider: str,
        model: str,
        raw: object,
        problems: Sequence[str],
        attempts: Sequence[AttemptRecord],
        *,
        request_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(
            f"{provider} answered, but the call function returned an invalid Completion: "
            + "; ".join(problems),
            attempts,
            request_id=request_id,
        )
        self.provider = provider
        self.model = model
        self.raw = raw
        self.problems = tuple(problems)


class AllProvidersFailed(RequestFailed):
    """No provider served the request within ``max_rounds`` or the deadline."""

    def __init__(
        self,
        reason: str,
        attempts: Sequence[AttemptRecord],
        *,
        request_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(
            f"no provider served the request: {reason}", attempts, request_id=request_id
        )
        self.reason = reason


class NoProviderAvailable(AllProvidersFailed):
    """Every provider was skipped in every round, so none was called.

    Skipped: its breaker is open, it is cooling down after a 429, or it is
    half-open and no probe permit was free. ``attempts`` is empty.
    """


class PromptUnavailable(GatewayError, LookupError):
    """No active version is known for the prompt (none in Redis and none cached).

    Raised by ``PromptSelector.select`` and ``PromptSelector.choose``.
    """


class EmitterError(GatewayError, RuntimeError):
    """The ``EventEmitter`` was used out of order (started twice, used after close).

    Never raised because of Kafka: the emitter spools what Kafka does not take.
    """


class EmitterClosed(EmitterError):
    """``EventEmitter.emit`` was called after ``close()`` finished."""


class SpoolLocked(EmitterError):
    """Another spool (this or another process) already owns the spool directory.

    Raised by ``EventEmitter(...)`` (and ``Spool(...)``): two emitters on one
    directory would replay the same events twice.
    """
