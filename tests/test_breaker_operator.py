"""Operator input to the breaker: --until, --create, the config file; state records of any age.

Issue 13 items 1, 10 (breaker config) and 11. The commands here fail before
they reach Kafka or Redis (the service addresses point at closed ports), so
nothing is sent and no stack is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmpulse.core.breaker import BreakerCore, Transition
from llmpulse.processors.breaker.agent import snapshot_of
from llmpulse.processors.breaker.config import BreakerConfigError, BreakerConfigs
from llmpulse.processors.errors import InputError
from llmpulse.processors.stream.codec import SCHEMA_VIOLATION, PoisonEvent, decode
from llmpulse.schemas.events import (
    BreakerAction,
    BreakerControl,
    BreakerSnapshot,
    BreakerState,
    EventTimeBounds,
    PromptAction,
    PromptVersionEvent,
)
from llmpulse.schemas.wire import encode

NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=900)  # beyond the default 400-day max-past bound


def _run(tmp_path: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env.update(
        LLMPULSE_STATE_DIR=str(tmp_path / "state"),
        # Closed ports: a command that got past its input checks would fail with exit 1.
        LLMPULSE_KAFKA_BOOTSTRAP="127.0.0.1:1",
        LLMPULSE_REDIS_URL="redis://127.0.0.1:1/0",
        **env_extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line_exit_2(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert result.stdout == ""


# --- item 1 and 11: the command line refuses before anything is sent -------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["force-open", "prov-x", "--until", "2025-06-01"], "is not in the future"),
        (
            ["force-open", "prov-x", "--until", (NOW - timedelta(minutes=1)).isoformat()],
            "is not in the future",
        ),
        (
            ["force-open", "prov-x", "--until", (NOW + timedelta(days=45)).isoformat()],
            "more than 30 days ahead",
        ),
        (["force-open", "prov-x", "--until", "tomorrow"], "is not a date"),
        (["force-close", "prov-x", "--until", "2099-01-01"], "applies to force-open only"),
        (["reset", "prov-x", "--until", "2099-01-01"], "applies to force-open only"),
        (["force-open", "x" * 100_000], "at most 128 characters"),
    ],
)
def test_bad_control_arguments_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run(tmp_path, "breaker", *args)
    _one_line_exit_2(result, message)
    assert len(result.stderr) < 300  # a 100 KB argument is never echoed back


@pytest.mark.parametrize("command", [["breaker", "force-open", "openai"], ["worker", "breaker"]])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read breaker config"),
        (b"\xff\xfe", "cannot read breaker config"),
        (b"default: {open_seconds: yes}\n", "open_seconds: Input should be a valid number"),
    ],
)
def test_a_missing_or_invalid_config_file_is_one_line_exit_2(
    tmp_path: Path, command: list[str], text: bytes | None, message: str
) -> None:
    config = tmp_path / "breaker.yaml"
    if text is not None:
        config.write_bytes(text)
    result = _run(tmp_path, *command, LLMPULSE_BREAKER_CONFIG_FILE=str(config))
    _one_line_exit_2(result, message)


# --- item 10: the config file is validated strictly -----------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default: {open_seconds: yes}\n", "default: open_seconds: Input should be a valid number"),
        ("default: {auth_errors_force_open: 1}\n", "should be a valid boolean"),
        (
            "providers:\n  p: {minimum_calls: 20.7}\n",
            "providers.p: minimum_calls: Input should be a valid integer",
        ),
        (
            'providers:\n  p: {minimum_calls: "20"}\n',
            "minimum_calls: Input should be a valid integer",
        ),
        ("default: {open_seconds: .inf}\n", "open_seconds: Input should be a finite number"),
        ("default: {failure_rate_threshold: .nan}\n", "should be a finite number"),
    ],
)
def test_config_values_are_strict(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(text)
    with pytest.raises(BreakerConfigError, match=message) as info:
        BreakerConfigs.load(path)
    assert isinstance(info.value, InputError)  # the command line exits 2


def test_whole_numbers_are_accepted_for_seconds(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("default: {window_seconds: 30, failure_rate_threshold: null}\n")
    config = BreakerConfigs.load(path).default
    assert config.window_seconds == 30.0
    assert isinstance(config.window_seconds, float)
    assert config.failure_rate_threshold is None


# --- item 1: the contract refuses what the command line refuses (the worker dead-letters it)
def _control_bytes(until: datetime, action: str = "force_open") -> bytes:
    """A control as an older command line wrote it (no check on ``until``)."""
    return (
        f'{{"event_id": "{uuid.uuid4()}", "event_time": "{NOW.isoformat()}", '
        f'"provider": "prov-x", "action": "{action}", "reason": "typo", '
        f'"until": "{until.isoformat()}"}}'
    ).encode()


@pytest.mark.parametrize("until", [datetime(2025, 6, 1, tzinfo=UTC), NOW + timedelta(days=3650)])
def test_a_force_open_until_out_of_range_is_poison(until: datetime) -> None:
    with pytest.raises(PoisonEvent) as info:
        decode(BreakerControl, _control_bytes(until), bounds=EventTimeBounds())
    assert info.value.reason == SCHEMA_VIOLATION
    assert "until" in info.value.detail


def test_older_controls_with_until_on_another_action_still_apply() -> None:
    # An older command line ignored --until on force-close; its records stay valid.
    control = decode(
        BreakerControl,
        _control_bytes(datetime(2025, 6, 1, tzinfo=UTC), "force_close"),
        bounds=EventTimeBounds(),
    )
    assert control.action is BreakerAction.force_close


# --- item 1 and 2: state records of any age -------------------------------------------
def test_snapshots_of_a_state_older_than_the_bound_are_built_and_read_back() -> None:
    # A breaker closed 900 days ago: the timer re-publishes its snapshot every tick.
    core = BreakerCore("prov-old", state=BreakerState.closed, version=3, since=LONG_AGO)
    snap = snapshot_of(core, NOW)
    assert snap.event_time == LONG_AGO
    assert decode(BreakerSnapshot, encode(snap), bounds=EventTimeBounds()) == snap


def test_a_transition_dated_ahead_of_the_worker_clock_is_published_at_now() -> None:
    # A probe's event time may lie ahead of this worker's clock (within the
    # configured max-future bound, which may exceed the default five minutes).
    ahead = NOW + timedelta(minutes=30)
    core = BreakerCore("prov-ahead", state=BreakerState.closed, version=5, since=ahead)
    t = Transition("prov-ahead", BreakerState.half_open, BreakerState.closed, ahead, 5, "x")
    assert snapshot_of(core, NOW, t).event_time == NOW
    assert snapshot_of(core, NOW).event_time == NOW


def test_registry_records_older_than_the_bound_are_read_back() -> None:
    old = PromptVersionEvent(
        event_id=uuid.uuid4(),
        event_time=LONG_AGO,
        prompt_name="greet",
        version=1,
        action=PromptAction.created,
        content="Hello",
    )
    assert decode(PromptVersionEvent, encode(old), bounds=EventTimeBounds()) == old
