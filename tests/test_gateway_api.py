"""The gateway's public API: one import line, GatewayConfig.from_env, the exception tree,
and no lost paid result (unit level: no Kafka, no Redis).

The orchestrator runs over plain async provider functions and a breaker view that is
never refreshed (so its in-process breakers decide, all closed).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

import llmpulse.gateway
from llmpulse.gateway import (
    AllProvidersFailed,
    AttemptRecord,
    Backoff,
    BreakerView,
    Completion,
    ConfigError,
    EmitterClosed,
    EmitterError,
    ErrorDecision,
    EventEmitter,
    GatewayConfig,
    GatewayError,
    InvalidCompletion,
    InvalidRequest,
    LLMCall,
    NoProviderAvailable,
    PromptChoice,
    PromptSelector,
    PromptUnavailable,
    PromptVersionView,
    Provider,
    ProviderCall,
    ProviderError,
    ProviderHealth,
    ProviderOrchestrator,
    RequestFailed,
    RequestRejected,
    Result,
    SpoolLocked,
    redis_client,
)
from llmpulse.gateway import exceptions as gateway_exceptions
from llmpulse.gateway.config import ENV_VARS
from llmpulse.gateway.orchestrator import check_completion
from llmpulse.schemas.events import (
    BreakerSnapshot,
    BreakerState,
    ErrorClass,
    Feedback,
    LLMOutcome,
    LLMRequest,
    Operation,
    OutcomeStatus,
)
from tests import gateway_example

IMPORTED = {
    AllProvidersFailed,
    AttemptRecord,
    Backoff,
    BreakerView,
    Completion,
    ConfigError,
    EmitterClosed,
    EmitterError,
    ErrorDecision,
    EventEmitter,
    GatewayConfig,
    GatewayError,
    InvalidCompletion,
    InvalidRequest,
    LLMCall,
    NoProviderAvailable,
    PromptChoice,
    PromptSelector,
    PromptUnavailable,
    PromptVersionView,
    Provider,
    ProviderCall,
    ProviderError,
    ProviderHealth,
    ProviderOrchestrator,
    RequestFailed,
    RequestRejected,
    Result,
    SpoolLocked,
    redis_client,
}


# --- public API -----------------------------------------------------------------------------


def test_every_public_name_resolves_and_the_one_import_line_covers_all() -> None:
    public = llmpulse.gateway.__all__
    assert len(public) == len(set(public))
    assert {getattr(llmpulse.gateway, name) for name in public} == IMPORTED


def test_submodule_paths_keep_working() -> None:
    from llmpulse.gateway import errors, orchestrator, prompts, spool

    assert errors.ProviderError is ProviderError
    assert orchestrator.RequestRejected is RequestRejected
    assert orchestrator.AllProvidersFailed is AllProvidersFailed
    assert prompts.PromptUnavailable is PromptUnavailable
    assert spool.SpoolLocked is SpoolLocked


def _docstring_example() -> str:
    doc = llmpulse.gateway.__doc__ or ""
    block = doc.split("see it)::\n\n", 1)[1]
    return "".join(line.removeprefix("    ") for line in block.splitlines(keepends=True))


def test_the_docstring_example_is_the_type_checked_file() -> None:
    # mypy checks tests/gateway_example.py; this keeps the docstring's copy identical.
    source = Path(gateway_example.__file__).read_text(encoding="utf-8")
    assert source.split('"""\n\n', 1)[1] == _docstring_example()


async def test_the_example_s_provider_function_answers_and_fails_as_documented() -> None:
    completion = await gateway_example.call_acme(LLMCall(org_id="o", payload="hi"), "m")
    assert check_completion(completion) == (completion, ())
    with pytest.raises(ProviderError) as info:
        await gateway_example.call_acme(LLMCall(org_id="o"), "m")
    assert info.value.http_status == 400


# --- GatewayConfig.from_env -----------------------------------------------------------------

FULL_ENV = {
    "LLMPULSE_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
    "LLMPULSE_REDIS_URL": "redis://cache:6380/2",
    "LLMPULSE_TOPIC_PREFIX": "staging.",
    "LLMPULSE_GATEWAY_INSTANCE_ID": "api-7",
    "LLMPULSE_GATEWAY_SPOOL_DIR": "/var/spool/llmpulse",
    "LLMPULSE_GATEWAY_EMIT_QUEUE_SIZE": "500",
    "LLMPULSE_GATEWAY_SNAPSHOT_REFRESH_SECONDS": "0.5",
    "LLMPULSE_GATEWAY_SNAPSHOT_STALE_SECONDS": "2",
    "LLMPULSE_GATEWAY_PERMIT_TTL_MS": "1000",
    "LLMPULSE_GATEWAY_REDIS_TIMEOUT_SECONDS": "0.1",
    # The workers' own settings are none of the gateway's business.
    "LLMPULSE_CLICKHOUSE_DSN": "chdb:///tmp/x",
    "PATH": "/usr/bin",
}


def test_from_env_reads_one_variable_per_field() -> None:
    assert set(ENV_VARS) | {"kafka_security"} == set(GatewayConfig.model_fields)
    config = GatewayConfig.from_env(FULL_ENV)
    assert config == GatewayConfig(
        bootstrap_servers="kafka-1:9092,kafka-2:9092",
        redis_url=SecretStr("redis://cache:6380/2"),
        topic_prefix="staging.",
        instance_id="api-7",
        spool_dir=Path("/var/spool/llmpulse"),
        emit_queue_size=500,
        snapshot_refresh_seconds=0.5,
        snapshot_stale_seconds=2.0,
        permit_ttl_ms=1000,
        redis_timeout_seconds=0.1,
    )
    for variable in ENV_VARS.values():  # every variable is documented
        assert variable in (GatewayConfig.from_env.__doc__ or "")


def test_from_env_keeps_defaults_for_unset_or_empty_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMPULSE_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("LLMPULSE_REDIS_URL", "")
    config = GatewayConfig.from_env()  # os.environ
    assert config.bootstrap_servers == "k:9092"
    assert config.redis_url == GatewayConfig.model_fields["redis_url"].default
    assert config.emit_queue_size == 10_000


@pytest.mark.parametrize("bootstrap", [None, ""])
def test_from_env_without_bootstrap_names_the_variable(bootstrap: str | None) -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != "LLMPULSE_KAFKA_BOOTSTRAP"}
    if bootstrap is not None:
        env["LLMPULSE_KAFKA_BOOTSTRAP"] = bootstrap
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(env)
    assert not isinstance(info.value, ValidationError)
    assert info.value.names == ("LLMPULSE_KAFKA_BOOTSTRAP",)
    assert str(info.value) == "invalid gateway environment: LLMPULSE_KAFKA_BOOTSTRAP is not set"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LLMPULSE_GATEWAY_EMIT_QUEUE_SIZE", "0"),
        ("LLMPULSE_GATEWAY_EMIT_QUEUE_SIZE", "many"),
        ("LLMPULSE_GATEWAY_REDIS_TIMEOUT_SECONDS", "-1"),
        ("LLMPULSE_GATEWAY_PERMIT_TTL_MS", "1.5"),
        ("LLMPULSE_TOPIC_PREFIX", "has space"),
        ("LLMPULSE_GATEWAY_INSTANCE_ID", "x" * 129),
    ],
)
def test_from_env_with_a_bad_value_names_the_variable_not_the_value(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env({**FULL_ENV, variable: value})
    assert info.value.names == (variable,)
    assert str(info.value).startswith(f"invalid gateway environment: {variable}: ")
    assert value not in str(info.value)
    assert isinstance(info.value, ValueError)  # as the ValidationError it replaces was


def test_from_env_rejects_an_unknown_gateway_variable() -> None:
    with pytest.raises(ConfigError, match="LLMPULSE_GATEWAY_SPOOLDIR") as info:
        GatewayConfig.from_env({**FULL_ENV, "LLMPULSE_GATEWAY_SPOOLDIR": "/tmp/s"})
    assert info.value.names == ("LLMPULSE_GATEWAY_SPOOLDIR",)


def test_building_a_config_directly_raises_config_error_naming_fields() -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig(bootstrap_servers="", emit_queue_size=0)
    assert info.value.names == ("bootstrap_servers", "emit_queue_size")
    with pytest.raises(ConfigError, match="nope is not a gateway setting"):
        GatewayConfig(bootstrap_servers="k:1", nope=1)  # type: ignore[call-arg]


# --- the exception tree ---------------------------------------------------------------------


def _gateway_exception_classes() -> set[type[BaseException]]:
    """Every exception class defined anywhere in llmpulse.gateway."""
    found: set[type[BaseException]] = set()
    for info in pkgutil.iter_modules(llmpulse.gateway.__path__, "llmpulse.gateway."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("llmpulse.gateway"):
                found.add(obj)
    return found


def test_every_gateway_exception_is_in_the_documented_tree() -> None:
    classes = _gateway_exception_classes()
    assert set(gateway_exceptions.__all__) == {c.__name__ for c in classes}
    doc = gateway_exceptions.__doc__ or ""
    for cls in classes:
        assert issubclass(cls, GatewayError), cls
        assert cls.__module__ == "llmpulse.gateway.exceptions", cls
        assert re.search(rf"\b{cls.__name__}\b", doc), f"{cls.__name__} missing from the tree"
        assert cls.__doc__, cls
    public = {obj for obj in IMPORTED if isinstance(obj, type) and issubclass(obj, BaseException)}
    assert public == classes


def test_the_tree_keeps_the_old_base_classes() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(InvalidRequest, ValueError)
    assert issubclass(PromptUnavailable, LookupError)
    assert issubclass(SpoolLocked, RuntimeError)
    assert issubclass(EmitterClosed, EmitterError)
    assert issubclass(NoProviderAvailable, AllProvidersFailed)
    for cls in (RequestRejected, InvalidCompletion, AllProvidersFailed):
        assert issubclass(cls, RequestFailed)


def test_provider_configuration_errors_are_config_errors() -> None:
    async def never(call: LLMCall, model: str) -> Completion:
        raise AssertionError

    with pytest.raises(ConfigError, match="weight"):
        Provider("a", "m", never, weight=0)
    with pytest.raises(ConfigError, match="name 'bad name'"):
        Provider("bad name", "m", never)
    with pytest.raises(ConfigError, match="models"):
        Provider("a", "m", never, models={Operation.embedding: ""})
    with pytest.raises(ConfigError, match="attempts per request"):
        ProviderOrchestrator(
            [Provider("a", "m", never), Provider("b", "m", never)],
            view=BreakerView(redis_client(CONFIG), CONFIG, ["a", "b"]),
            emitter=Events(),
            max_rounds=51,
        )
    with pytest.raises(ConfigError, match="unique"):
        ProviderOrchestrator(
            [Provider("a", "m", never), Provider("a", "n", never)],
            view=BreakerView(redis_client(CONFIG), CONFIG, ["a"]),
            emitter=Events(),
        )


# --- the orchestrator: bad input, invalid results ---------------------------------------------

CONFIG = GatewayConfig(
    bootstrap_servers="127.0.0.1:1", redis_url=SecretStr("redis://127.0.0.1:1/0")
)
GOOD = Completion(content="ok", input_tokens=10, output_tokens=5, cost_usd=Decimal("0.000123"))


class Events:
    def __init__(self) -> None:
        self.items: list[LLMRequest | LLMOutcome | Feedback] = []

    def emit(self, event: LLMRequest | LLMOutcome | Feedback) -> None:
        self.items.append(event)

    def outcomes(self) -> list[LLMOutcome]:
        return [e for e in self.items if isinstance(e, LLMOutcome)]


class Answers:
    """A provider call function that returns ``result`` (whatever it is) and counts calls."""

    def __init__(self, result: Any = GOOD, fail: BaseException | None = None) -> None:
        self.result, self.fail, self.calls = result, fail, 0

    async def __call__(self, call: LLMCall, model: str) -> Completion:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self.result  # type: ignore[no-any-return]


def _orchestrator(
    *answers: Answers,
) -> tuple[ProviderOrchestrator, BreakerView, Events]:
    names = [f"p{i}" for i in range(len(answers))]
    view = BreakerView(redis_client(CONFIG), CONFIG, names)  # never refreshed: local breakers
    events = Events()
    orch = ProviderOrchestrator(
        [
            Provider(name, f"{name}-model", call, priority=i)
            for i, (name, call) in enumerate(zip(names, answers, strict=True))
        ],
        view=view,
        emitter=events,
        deadline_seconds=5,
    )
    return orch, view, events


async def test_a_float_cost_is_one_paid_call_and_the_result_is_handed_back() -> None:
    # The case: a call function builds Completion(cost_usd=0.01), a float.
    paid = Completion(content="the answer", input_tokens=10, output_tokens=5, cost_usd=0.01)  # type: ignore[arg-type]
    first, second = Answers(paid), Answers()
    orch, view, events = _orchestrator(first, second)
    with pytest.raises(InvalidCompletion) as info:
        await orch.execute(LLMCall(org_id="acme"))
    exc = info.value
    assert not isinstance(exc, ValidationError)
    assert (first.calls, second.calls) == (1, 0)  # called once, no blind failover
    assert exc.raw is paid
    assert (exc.provider, exc.model) == ("p0", "p0-model")
    assert exc.problems == ("cost_usd must be a Decimal, got float",)
    assert "cost_usd must be a Decimal" in str(exc)
    # The attempt still has its outcome: the caller got no usable result (failure,
    # client_error: the breakers ignore it), with the usage fields that are valid.
    request, outcome = events.items
    assert isinstance(request, LLMRequest)
    assert isinstance(outcome, LLMOutcome)
    assert exc.request_id == request.request_id == outcome.request_id
    assert (outcome.provider, outcome.status, outcome.error_class) == (
        "p0",
        OutcomeStatus.failure,
        ErrorClass.client_error,
    )
    assert (outcome.input_tokens, outcome.output_tokens, outcome.cost_usd) == (10, 5, Decimal(0))
    assert [a.status for a in exc.attempts] == [OutcomeStatus.failure]
    assert view.route("p0").state is BreakerState.closed


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        (None, ("expected a Completion, got NoneType",)),
        ({"content": "x"}, ("expected a Completion, got dict",)),
        (Completion(input_tokens=True), ("input_tokens must be an int, got bool",)),
        (
            Completion(output_tokens=-1),
            ("output_tokens: Input should be greater than or equal to 0",),
        ),
        (
            Completion(input_tokens=1, cached_tokens=2),
            ("cached_tokens cannot exceed input_tokens",),
        ),
        (Completion(cost_usd=Decimal("NaN")), ("cost_usd: Input should be a finite number",)),
        (Completion(ttft_ms=1.5), ("ttft_ms must be an int or None, got float",)),  # type: ignore[arg-type]
    ],
)
async def test_any_invalid_result_is_raised_with_the_raw_value(
    raw: object, problems: tuple[str, ...]
) -> None:
    answer = Answers(raw)
    orch, _, events = _orchestrator(answer, Answers())
    with pytest.raises(InvalidCompletion) as info:
        await orch.execute(LLMCall(org_id="acme"))
    assert info.value.raw is raw
    assert info.value.problems == problems
    assert answer.calls == 1
    assert [o.error_class for o in events.outcomes()] == [ErrorClass.client_error]


def test_check_completion_keeps_the_valid_usage_fields() -> None:
    raw = Completion(content="c", input_tokens=7, cached_tokens=9, cost_usd=Decimal("0.5"))
    usable, problems = check_completion(raw)
    assert problems == ("cached_tokens cannot exceed input_tokens",)
    assert usable == Completion(content="c", input_tokens=7, cost_usd=Decimal("0.5"))
    assert check_completion(GOOD) == (GOOD, ())


BAD_CALLS = [
    pytest.param(LLMCall(org_id=""), "org_id", id="empty-org"),
    pytest.param(LLMCall(org_id="has space"), "org_id", id="org-pattern"),
    pytest.param(LLMCall(org_id="a", user_id="u" * 200), "user_id", id="long-user"),
    pytest.param(LLMCall(org_id="a", subject_id=""), "subject_id", id="empty-subject"),
    pytest.param(LLMCall(org_id="a", operation="chat"), "operation", id="operation"),  # type: ignore[arg-type]
    pytest.param(LLMCall(org_id="a", prompt_name="p"), "prompt_name", id="prompt-pair"),
    pytest.param(
        LLMCall(org_id="a", prompt_name="p", prompt_version=0), "prompt_version", id="version-0"
    ),
]


@pytest.mark.parametrize(("call", "field"), BAD_CALLS)
async def test_bad_caller_input_is_refused_before_any_provider_call(
    call: LLMCall, field: str
) -> None:
    answer = Answers()
    orch, _, events = _orchestrator(answer)
    with pytest.raises(InvalidRequest) as info:
        await orch.execute(call)
    assert not isinstance(info.value, ValidationError)
    assert any(p.startswith(field) for p in info.value.problems), info.value.problems
    assert (answer.calls, events.items) == (0, [])


@pytest.mark.parametrize("deadline", [0, -1.0, math.nan, math.inf])
async def test_a_bad_deadline_is_refused_before_any_provider_call(deadline: float) -> None:
    answer = Answers()
    orch, _, events = _orchestrator(answer)
    with pytest.raises(InvalidRequest, match="deadline_seconds"):
        await orch.execute(LLMCall(org_id="acme"), deadline_seconds=deadline)
    assert (answer.calls, events.items) == (0, [])


async def test_valid_input_is_still_served() -> None:
    orch, _, events = _orchestrator(Answers())
    call = LLMCall(
        org_id="acme", user_id="u-1", subject_id="s-1", prompt_name="p", prompt_version=3
    )
    result = await orch.execute(call, deadline_seconds=2)
    assert result.completion is GOOD
    assert [o.status for o in events.outcomes()] == [OutcomeStatus.success]


async def test_every_provider_skipped_is_no_provider_available() -> None:
    answer = Answers()
    orch, view, _ = _orchestrator(answer)
    now = datetime.now(UTC)
    # The fleet's open verdict still runs, even though this view is stale.
    view.apply(
        BreakerSnapshot(
            event_id=uuid.uuid4(),
            event_time=now,
            provider="p0",
            state=BreakerState.open,
            version=1,
            since=now,
            as_of=now,
            failure_rate=1.0,
            calls_in_window=10,
            next_attempt_at=now + timedelta(minutes=5),
        )
    )
    with pytest.raises(NoProviderAvailable) as info:
        await orch.execute(LLMCall(org_id="acme"))
    assert isinstance(info.value, AllProvidersFailed)
    assert (info.value.attempts, answer.calls) == ((), 0)
    assert info.value.request_id is not None


async def test_request_failures_carry_the_request_id_of_their_events() -> None:
    orch, _, events = _orchestrator(Answers(fail=ProviderError("no", http_status=400)))
    with pytest.raises(RequestRejected) as info:
        await orch.execute(LLMCall(org_id="acme"))
    assert {e.request_id for e in events.items} == {info.value.request_id}
    orch, _, events = _orchestrator(Answers(fail=ProviderError("down", http_status=503)))
    orch.max_rounds = 1
    with pytest.raises(AllProvidersFailed) as failed:
        await orch.execute(LLMCall(org_id="acme"))
    assert {e.request_id for e in events.items} == {failed.value.request_id}


async def test_a_retry_after_beyond_the_contract_is_clamped_not_a_validation_error() -> None:
    limited = Answers(fail=ProviderError("slow down", http_status=429, retry_after="172800"))
    orch, _, events = _orchestrator(limited, Answers())
    result = await orch.execute(LLMCall(org_id="acme"))
    assert result.provider == "p1"
    assert events.outcomes()[0].retry_after_ms == 86_400_000
