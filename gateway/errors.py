"""Classification of a failed provider attempt: what to record and whether to retry.

Pure functions, no I/O; ``now`` is passed in so Retry-After dates are testable.

``classify_error`` maps an exception raised by a provider call to an
``ErrorDecision``. Rules are checked top to bottom; the first match wins:

=====================================================  ============  ==============  =========
exception                                              status        error_class     retryable
=====================================================  ============  ==============  =========
``TimeoutError`` (``asyncio.TimeoutError`` too)        timeout       timeout         yes
``OSError`` incl. ``ConnectionError`` (network)        failure       network         yes
``ProviderError`` with error_class content_policy      rejected      content_policy  no
``ProviderError`` 429 or error_class rate_limited      failure       rate_limited    yes
``ProviderError`` 401/403 or error_class auth_error    failure       auth_error      no
``ProviderError`` 408                                  timeout       timeout         yes
``ProviderError`` 5xx                                  failure       server_error    yes
``ProviderError`` other 4xx                            failure       client_error    no
``ProviderError`` no 4xx/5xx, error_class timeout      timeout       timeout         yes
``ProviderError`` no 4xx/5xx, error_class network      failure       network         yes
``ProviderError`` no 4xx/5xx, error_class client_error failure       client_error    no
``ProviderError`` no 4xx/5xx, otherwise                failure       server_error    yes
anything else (caller bug, ``CancelledError``, ...)    ``None``: not a provider failure, re-raise
=====================================================  ============  ==============  =========

Retryable means the provider failed this attempt: retry it or fail over to
another provider. Not retryable means the request itself is at fault (or not
allowed), so another provider would fail the same way: return the error to the
caller. ``retry_after_s`` is set on retryable ``ProviderError`` decisions that
carry a parseable Retry-After (429, and 503 where servers commonly send one).

``ProviderError`` itself is defined with the gateway's other exceptions in
``llmpulse.gateway.exceptions`` (still importable from here).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from llmpulse.gateway.exceptions import ProviderError
from llmpulse.schemas.events import ErrorClass, OutcomeStatus

# RFC 9110 delta-seconds is 1*DIGIT; some providers send fractions ("0.5"), accept those too.
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(value: str | float | None, now: datetime) -> float | None:
    """Seconds to wait (always >= 0 and finite) from a Retry-After value, or None.

    Accepts seconds as a number, a delta-seconds string, or an HTTP-date (a date
    in the past gives 0.0; a date without zone and a naive ``now`` are taken as
    UTC). A negative number gives 0.0; missing, negative-delta strings,
    non-finite or unparseable values give None; this function never raises.
    Callers bound the result (``ProviderOrchestrator`` caps it at
    ``max_retry_after_seconds``).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    try:
        return max(0.0, (when - now).total_seconds())
    except OverflowError:
        return None


@dataclass(frozen=True)
class ErrorDecision:
    """How one failed attempt is recorded and handled.

    ``status`` is failure, timeout or rejected (never success). ``retryable``
    True: the provider failed, retry or fail over; False: return the error to
    the caller without retry or failover. ``retry_after_s`` (>= 0) is the
    provider's requested wait, when it gave one.
    """

    status: OutcomeStatus
    error_class: ErrorClass
    http_status: int | None
    retryable: bool
    retry_after_s: float | None = None


def classify_error(exc: BaseException, now: datetime) -> ErrorDecision | None:
    """The decision for ``exc`` per the module table; None if it is not a provider failure.

    None means the exception did not come from the provider (a bug in caller
    code, cancellation, ...): the caller must re-raise it unchanged.
    """
    # TimeoutError subclasses OSError, so it must be checked first.
    if isinstance(exc, TimeoutError):
        return ErrorDecision(OutcomeStatus.timeout, ErrorClass.timeout, None, True)
    if isinstance(exc, OSError):
        return ErrorDecision(OutcomeStatus.failure, ErrorClass.network, None, True)
    if isinstance(exc, ProviderError):
        return _classify_provider(exc, now)
    return None


def _classify_provider(exc: ProviderError, now: datetime) -> ErrorDecision:
    status, cls = exc.http_status, exc.error_class
    if cls is ErrorClass.content_policy:
        return ErrorDecision(OutcomeStatus.rejected, cls, status, False)
    if status == 429 or cls is ErrorClass.rate_limited:
        return _retry(OutcomeStatus.failure, ErrorClass.rate_limited, exc, now)
    if status in (401, 403) or cls is ErrorClass.auth_error:
        return ErrorDecision(OutcomeStatus.failure, ErrorClass.auth_error, status, False)
    if status == 408:
        return _retry(OutcomeStatus.timeout, ErrorClass.timeout, exc, now)
    if status is not None and 500 <= status <= 599:
        return _retry(OutcomeStatus.failure, ErrorClass.server_error, exc, now)
    if status is not None and 400 <= status <= 499:
        return ErrorDecision(OutcomeStatus.failure, ErrorClass.client_error, status, False)
    # No usable status: the provider's own error class decides.
    if cls is ErrorClass.timeout:
        return _retry(OutcomeStatus.timeout, cls, exc, now)
    if cls is ErrorClass.network:
        return _retry(OutcomeStatus.failure, cls, exc, now)
    if cls is ErrorClass.client_error:
        return ErrorDecision(OutcomeStatus.failure, cls, status, False)
    # Unknown provider failure: assume it is the provider's fault so another may serve.
    return _retry(OutcomeStatus.failure, ErrorClass.server_error, exc, now)


def _retry(
    status: OutcomeStatus, cls: ErrorClass, exc: ProviderError, now: datetime
) -> ErrorDecision:
    wait = parse_retry_after(exc.retry_after, now)
    return ErrorDecision(status, cls, exc.http_status, True, wait)


__all__ = ["ErrorDecision", "ProviderError", "classify_error", "parse_retry_after"]
