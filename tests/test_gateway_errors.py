"""Unit tests: provider error classification, Retry-After parsing, full-jitter backoff."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmpulse.gateway.backoff import Backoff
from llmpulse.gateway.errors import ErrorDecision, ProviderError, classify_error, parse_retry_after
from llmpulse.schemas.events import ErrorClass, OutcomeStatus

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

F, T, R = OutcomeStatus.failure, OutcomeStatus.timeout, OutcomeStatus.rejected
E = ErrorClass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        # asyncio.TimeoutError is this same class since Python 3.11.
        pytest.param(TimeoutError(), ErrorDecision(T, E.timeout, None, True), id="timeout"),
        pytest.param(
            ConnectionResetError(), ErrorDecision(F, E.network, None, True), id="conn-reset"
        ),
        pytest.param(
            ConnectionRefusedError(), ErrorDecision(F, E.network, None, True), id="conn-refused"
        ),
        pytest.param(OSError("unreachable"), ErrorDecision(F, E.network, None, True), id="oserror"),
        pytest.param(
            ProviderError("slow down", http_status=429, retry_after="7"),
            ErrorDecision(F, E.rate_limited, 429, True, 7.0),
            id="429-retry-after",
        ),
        pytest.param(
            ProviderError("slow down", http_status=429),
            ErrorDecision(F, E.rate_limited, 429, True, None),
            id="429-no-retry-after",
        ),
        pytest.param(
            ProviderError("quota", error_class=E.rate_limited, retry_after=1.5),
            ErrorDecision(F, E.rate_limited, None, True, 1.5),
            id="rate-limited-class",
        ),
        pytest.param(
            ProviderError("timeout", http_status=408),
            ErrorDecision(T, E.timeout, 408, True),
            id="408",
        ),
        pytest.param(
            ProviderError("boom", http_status=500), ErrorDecision(F, E.server_error, 500, True)
        ),
        pytest.param(
            ProviderError("bad gateway", http_status=502),
            ErrorDecision(F, E.server_error, 502, True),
            id="502",
        ),
        pytest.param(
            ProviderError("overloaded", http_status=503, retry_after="3"),
            ErrorDecision(F, E.server_error, 503, True, 3.0),
            id="503-retry-after",
        ),
        pytest.param(
            ProviderError("odd", http_status=599), ErrorDecision(F, E.server_error, 599, True)
        ),
        pytest.param(
            ProviderError("key", http_status=401), ErrorDecision(F, E.auth_error, 401, False)
        ),
        pytest.param(
            ProviderError("forbidden", http_status=403),
            ErrorDecision(F, E.auth_error, 403, False),
        ),
        pytest.param(
            ProviderError("key", error_class=E.auth_error),
            ErrorDecision(F, E.auth_error, None, False),
            id="auth-class",
        ),
        pytest.param(
            ProviderError("flagged", http_status=400, error_class=E.content_policy),
            ErrorDecision(R, E.content_policy, 400, False),
            id="content-policy-400",
        ),
        pytest.param(
            ProviderError("flagged", error_class=E.content_policy),
            ErrorDecision(R, E.content_policy, None, False),
            id="content-policy",
        ),
        pytest.param(
            ProviderError("bad", http_status=400), ErrorDecision(F, E.client_error, 400, False)
        ),
        pytest.param(
            ProviderError("gone", http_status=404), ErrorDecision(F, E.client_error, 404, False)
        ),
        pytest.param(
            ProviderError("too big", http_status=413, retry_after="5"),
            ErrorDecision(F, E.client_error, 413, False),
            id="413-ignores-retry-after",
        ),
        pytest.param(
            ProviderError("x", error_class=E.server_error),
            ErrorDecision(F, E.server_error, None, True),
            id="class-server-error",
        ),
        pytest.param(
            ProviderError("x", error_class=E.network),
            ErrorDecision(F, E.network, None, True),
            id="class-network",
        ),
        pytest.param(
            ProviderError("x", error_class=E.timeout),
            ErrorDecision(T, E.timeout, None, True),
            id="class-timeout",
        ),
        pytest.param(
            ProviderError("x", error_class=E.client_error),
            ErrorDecision(F, E.client_error, None, False),
            id="class-client-error",
        ),
        pytest.param(
            ProviderError("unknown"), ErrorDecision(F, E.server_error, None, True), id="bare"
        ),
    ],
)
def test_classify_error(exc: BaseException, expected: ErrorDecision) -> None:
    assert classify_error(exc, NOW) == expected


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("caller bug"),
        KeyError("k"),
        RuntimeError("x"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
    ],
)
def test_non_provider_exceptions_are_not_classified(exc: BaseException) -> None:
    assert classify_error(exc, NOW) is None


def test_provider_error_keeps_message_and_fields() -> None:
    exc = ProviderError("upstream said no", http_status=429, retry_after="2")
    assert str(exc) == "upstream said no"
    assert (exc.http_status, exc.error_class, exc.retry_after) == (429, None, "2")


def test_rate_limit_retry_after_http_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    decision = classify_error(ProviderError("429", http_status=429, retry_after=later), NOW)
    assert decision is not None
    assert decision.retry_after_s == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("0.5", 0.5),
        (2.5, 2.5),
        (3, 3.0),
        (-4.0, 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        (float("nan"), None),
        (float("inf"), None),
        ("Mon, 99 Foo 2024 25:61:00 GMT", None),
        ("9" * 400, None),
    ],
)
def test_parse_retry_after(value: str | float | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_dates() -> None:
    future = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(future, NOW) == pytest.approx(90.0)
    assert parse_retry_after(past, NOW) == 0.0
    # Fixed RFC 9110 example string, independent of the formatter used above.
    assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", NOW) == pytest.approx(60.0)
    # A naive "now" is taken as UTC.
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", naive) == pytest.approx(60.0)


@given(st.one_of(st.text(), st.floats(), st.integers(), st.none()))
def test_parse_retry_after_never_raises(value: str | float | None) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0.0


# --- backoff -------------------------------------------------------------------------------


@given(
    base=st.floats(min_value=1e-6, max_value=10.0),
    factor=st.floats(min_value=1.0, max_value=1e6),
    retry=st.one_of(st.integers(min_value=0, max_value=80), st.just(10_000), st.just(10**30)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_within_bound(base: float, factor: float, retry: int, seed: int) -> None:
    policy = Backoff(base_seconds=base, cap_seconds=base * factor)
    bound = policy.cap_seconds if retry > 2000 else min(policy.cap_seconds, base * 2**retry)
    assert policy.ceiling(retry) == pytest.approx(bound, rel=1e-12)
    rng = random.Random(seed)
    for _ in range(20):
        assert 0.0 <= policy.delay(retry, rng) <= bound


@settings(max_examples=30, deadline=None)
@given(
    retry=st.one_of(st.integers(min_value=0, max_value=12), st.just(10_000)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_is_uniform_over_bound(retry: int, seed: int) -> None:
    policy = Backoff(base_seconds=0.05, cap_seconds=2.0)
    bound = 2.0 if retry > 100 else min(2.0, 0.05 * 2**retry)
    rng = random.Random(seed)
    draws = [policy.delay(retry, rng) for _ in range(5000)]
    # Mean of U[0, b] is b/2 with standard error b/sqrt(12 * 5000) ~ 0.004 b: 0.03 b is ~7 sigma.
    assert sum(draws) / len(draws) == pytest.approx(bound / 2, abs=0.03 * bound)
    # Full jitter spans the whole range, not just a band near the top or the bottom.
    assert min(draws) < 0.05 * bound
    assert max(draws) > 0.95 * bound


def test_delay_grows_then_caps() -> None:
    policy = Backoff(base_seconds=0.1, cap_seconds=1.0)
    assert [policy.ceiling(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_defaults() -> None:
    assert Backoff() == Backoff(base_seconds=0.05, cap_seconds=2.0)


@pytest.mark.parametrize(
    ("base", "cap", "match"),
    [
        (0.0, 1.0, "base_seconds"),
        (-1.0, 1.0, "base_seconds"),
        (float("nan"), 1.0, "base_seconds"),
        (float("inf"), float("inf"), "base_seconds"),
        (0.1, 0.0, "cap_seconds"),
        (0.1, float("inf"), "cap_seconds"),
        (1.0, 0.5, "must be >= base_seconds"),
    ],
)
def test_backoff_validation(base: float, cap: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Backoff(base_seconds=base, cap_seconds=cap)


def test_negative_retry_rejected() -> None:
    with pytest.raises(ValueError, match="retry must be >= 0"):
        Backoff().delay(-1, random.Random(0))
