"""Settings validated at load: bounded values, address shapes, ``.env`` hygiene (issue 13).

Items 4, 9 and 14: a value that would crash a worker later (a 0-second window,
a duration past the calendar, an infinite retry cap, a DSN of the wrong shape)
is refused when the settings load, naming the variable and never repeating the
value; another tool's names in ``.env`` are ignored, and unknown ``LLMPULSE_*``
names are warnings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmpulse.cli.common import UsageError, load_settings
from llmpulse.processors.settings import Settings, unknown_names


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``LLMPULSE_*`` variable and an empty working folder (no ``.env``)."""
    for name in list(os.environ):
        if name.upper().startswith("LLMPULSE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    """The error of ``Settings()`` with ``name=value``: it must be about that variable."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    errors = info.value.errors(include_input=False)
    assert [e["loc"][0] for e in errors] == [name.removeprefix("LLMPULSE_").lower()], errors
    return str(errors[0]["msg"])


@pytest.mark.parametrize(
    "value", ["[0]", "[-60]", "[60,60]", "notjson", "[60.0]", "[60.5]", "[true]", '{"a": 1}',
              "60", "[]", "[86401]", '["60"]', "[1,2,3,4,5,6,7,8,9,10,11]"]
)  # fmt: skip
def test_prompt_windows_are_distinct_whole_seconds(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    _refused(monkeypatch, "LLMPULSE_PROMPT_WINDOWS", value)


def test_prompt_windows_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPULSE_PROMPT_WINDOWS", "[1, 60, 86400]")
    assert Settings().prompt_windows == [1, 60, 86400]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # durations: ``now`` plus or minus them must stay a date (no later OverflowError)
        ("LLMPULSE_EVENT_MAX_FUTURE", "P100000000D"),
        ("LLMPULSE_EVENT_MAX_FUTURE", "P2D"),
        ("LLMPULSE_EVENT_MAX_FUTURE", "-PT1S"),
        ("LLMPULSE_EVENT_MAX_PAST", "P100000000D"),
        ("LLMPULSE_EVENT_MAX_PAST", "P3661D"),
        ("LLMPULSE_EVENT_MAX_PAST", "PT0S"),
        # every float finite and in range
        ("LLMPULSE_SINK_RETRY_MAX_SECONDS", "inf"),
        ("LLMPULSE_SINK_RETRY_MAX_SECONDS", "nan"),
        ("LLMPULSE_SINK_RETRY_MAX_SECONDS", "601"),
        ("LLMPULSE_SINK_RETRY_MAX_SECONDS", "0"),
        ("LLMPULSE_SINK_BATCH_MAX_SECONDS", "inf"),
        ("LLMPULSE_SINK_BATCH_MAX_SECONDS", "0.001"),
        ("LLMPULSE_BREAKER_TICK_SECONDS", "1e-9"),
        ("LLMPULSE_BREAKER_TICK_SECONDS", "-inf"),
        ("LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS", "inf"),
        ("LLMPULSE_PROMPT_WINDOW_GRACE_SECONDS", "-1"),
        ("LLMPULSE_PROMPT_PARTIAL_RETENTION_SECONDS", "inf"),
        ("LLMPULSE_PROMPT_PARTIAL_RETENTION_SECONDS", "86401"),
        ("LLMPULSE_CHARGEBACK_DEFAULT_RATE", "NaN"),
        ("LLMPULSE_CHARGEBACK_DEFAULT_RATE", "Infinity"),
        # whole numbers
        ("LLMPULSE_TOPIC_REPLICATION", "0"),
        ("LLMPULSE_TOPIC_REPLICATION", "40000"),
        ("LLMPULSE_DLQ_MAX_CONSECUTIVE", "0"),
        ("LLMPULSE_DLQ_MAX_CONSECUTIVE", "1" * 5000),
        ("LLMPULSE_METRICS_ORG_LABEL_LIMIT", "1000000"),
        ("LLMPULSE_METRICS_PORT", "65536"),
        ("LLMPULSE_SINK_BATCH_MAX_ROWS", "0"),
        # names
        ("LLMPULSE_TOPIC_PREFIX", "x" * 101),
        ("LLMPULSE_TOPIC_PREFIX", "a b"),
        ("LLMPULSE_CONSUMER_GROUP_PREFIX", "g" * 101),
        ("LLMPULSE_FAILPOINT", "sink.kill_after_insert:9999999999"),
        ("LLMPULSE_TEST_SERVICES", "docker"),
        # ClickHouse DSN: scheme and path
        ("LLMPULSE_CLICKHOUSE_DSN", "ftp://x"),
        ("LLMPULSE_CLICKHOUSE_DSN", "CHDB:///srv/chdb"),
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb://memory"),
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb://relative/folder"),
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb://"),
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb:///srv/chdb?x=1"),
        ("LLMPULSE_CLICKHOUSE_DSN", "/srv/chdb"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://h:0/db"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://h:99999/db"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://h:port/db"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://h:/db"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://h:8123/a/b"),
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb:///" + "x" * 5000),
        # other service addresses
        ("LLMPULSE_REDIS_URL", "localhost:6379"),
        ("LLMPULSE_REDIS_URL", "redis://h:6379/abc"),
        ("LLMPULSE_REDIS_URL", "redis://:6379/0"),
        ("LLMPULSE_KAFKA_BOOTSTRAP", "localhost"),
        ("LLMPULSE_KAFKA_BOOTSTRAP", "h:0"),
        ("LLMPULSE_KAFKA_BOOTSTRAP", "h:1,"),
        ("LLMPULSE_KAFKA_BOOTSTRAP", "PLAINTEXT://h:9092"),
        ("LLMPULSE_PROMETHEUS_URL", "ftp://h:9090"),
        ("LLMPULSE_PROMETHEUS_URL", "http://h:x"),
    ],
)
def test_out_of_range_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    _refused(monkeypatch, name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMPULSE_EVENT_MAX_PAST", "P3660D"),
        ("LLMPULSE_EVENT_MAX_FUTURE", "P1D"),
        ("LLMPULSE_EVENT_MAX_FUTURE", "PT0S"),
        ("LLMPULSE_SINK_RETRY_MAX_SECONDS", "600"),
        ("LLMPULSE_CLICKHOUSE_DSN", "chdb:///srv/llmpulse/chdb"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://llmpulse:pw@clickhouse:8123/llmpulse"),
        ("LLMPULSE_CLICKHOUSE_DSN", "https://ch.example.com/"),
        ("LLMPULSE_CLICKHOUSE_DSN", "http://[::1]:8123"),
        ("LLMPULSE_REDIS_URL", "rediss://user:pw@cache:6380/2"),
        ("LLMPULSE_REDIS_URL", "redis://cache"),
        ("LLMPULSE_KAFKA_BOOTSTRAP", "kafka-1:9092,10.0.0.2:9093,[::1]:9094"),
        ("LLMPULSE_PROMETHEUS_URL", "http://prometheus:9090"),
        ("LLMPULSE_FAILPOINT", "sink.kill_after_insert:3"),
    ],
)
def test_sane_values_are_accepted(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    Settings()


def test_defaults_load() -> None:
    settings = Settings()
    assert settings.prompt_windows == [60, 3600]
    assert settings.clickhouse_dsn is None


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("LLMPULSE_CLICKHOUSE_DSN", "http://admin:hunter2@h:99999/db", "hunter2"),
        ("LLMPULSE_PROMPT_WINDOWS", "z" * 100_000, "zzzz"),
        ("LLMPULSE_REDIS_URL", "redis://:hunter2@" + "h" * 100_000 + ":1/x", "hunter2"),
        ("LLMPULSE_EVENT_MAX_FUTURE", "P100000000D", "100000000"),
    ],
)
def test_load_error_is_one_line_naming_the_variable_never_the_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, secret: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"invalid setting {name}: "), message
    assert "\n" not in message
    assert secret not in message
    assert len(message) < 200


def test_list_item_errors_name_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPULSE_PROMPT_WINDOWS", "[60, 0]")
    with pytest.raises(UsageError, match=r"LLMPULSE_PROMPT_WINDOWS: item 1: .*greater than"):
        load_settings()


def test_dotenv_ignores_other_tools_names(clean_env: Path) -> None:
    # Docker Compose reads the same file: its names must not break llmpulse.
    (clean_env / ".env").write_text(
        "DATABASE_URL=postgres://u:p@db/app\nCOMPOSE_PROJECT_NAME=x\nLLMPULSE_TOPIC_PREFIX=env.\n"
    )
    assert Settings().topic_prefix == "env."


def test_dotenv_value_still_validated(clean_env: Path) -> None:
    (clean_env / ".env").write_text("LLMPULSE_PROMPT_WINDOWS=[0]\n")
    with pytest.raises(UsageError, match="LLMPULSE_PROMPT_WINDOWS"):
        load_settings()


def test_dotenv_not_utf8_is_one_line(clean_env: Path) -> None:
    (clean_env / ".env").write_bytes(b"LLMPULSE_TOPIC_PREFIX=\xff\xfe\n")
    with pytest.raises(UsageError, match=r"cannot read \.env: not UTF-8"):
        load_settings()


def test_unknown_llmpulse_names_warn_with_a_suggestion(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (clean_env / ".env").write_text("LLMPULSE_PROMPT_WINDOW=[60]\nDATABASE_URL=x\n")
    monkeypatch.setenv("LLMPULSE_KAFKA_BOOTSRAP", "h:1")  # typo of a real name
    monkeypatch.setenv("llmpulse_nothing_like_it", "1")
    monkeypatch.setenv("LLMPULSE_GATEWAY_EMIT_QUEUE_SIZE", "10")  # the gateway's own
    with caplog.at_level(logging.WARNING, logger="llmpulse.processors.settings"):
        settings = Settings()
    assert settings.kafka_bootstrap is None
    assert settings.prompt_windows == [60, 3600]
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert warnings == [
        "unknown setting LLMPULSE_KAFKA_BOOTSRAP in the environment is ignored; "
        "did you mean LLMPULSE_KAFKA_BOOTSTRAP?",
        "unknown setting LLMPULSE_NOTHING_LIKE_IT in the environment is ignored",
        "unknown setting LLMPULSE_PROMPT_WINDOW in .env is ignored; "
        "did you mean LLMPULSE_PROMPT_WINDOWS?",
    ]


def test_unknown_names_is_case_insensitive_and_skips_known_ones() -> None:
    assert unknown_names(["llmpulse_topic_prefix", "LLMPULSE_STATE_DIR", "PATH"]) == []
    assert unknown_names(["llmpulse_topic_prefx"]) == [
        ("LLMPULSE_TOPIC_PREFX", "LLMPULSE_TOPIC_PREFIX")
    ]
