"""Reports and loads while ``llmpulse worker sink`` holds the embedded chDB folder (issue 13, 7).

chDB lets one process open a data folder, so ``report costs``, ``report close``,
``pricing load``, ``migrate`` and ``prompts compare`` used to fail with "Cannot
lock file .../chdb/status" while the sink ran. The running sink now answers
them over ``<state>/chdb.sock`` (``llmpulse.processors.stream.chdb_socket``):
each output must be byte for byte what the same command prints once the sink
has stopped, errors included.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from pydantic import SecretStr

from llmpulse.processors.settings import Settings
from llmpulse.processors.sinks import base
from llmpulse.processors.stream import chdb_socket, kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas.events import PromptPerformance
from llmpulse.schemas.topics import OUTCOMES, PROMPT_PERFORMANCE, topic_spec
from llmpulse.simulator.samples import sample_outcome
from tests.harness import committed_offsets, wait_until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEPTEMBER = datetime(2026, 9, 10, tzinfo=UTC)
#: October holds a copy of September's usage (new ids), so closing either month prints
#: the same line but for the month's name.
OCTOBER_SHIFT = timedelta(days=30)


def _llmpulse(env: Mapping[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


async def _produce(settings: Settings) -> dict[str, int]:
    """September and October usage plus prompt rollups; the count per sink flow."""
    september = [
        sample_outcome(random.Random(i), SEPTEMBER + timedelta(minutes=i)) for i in range(40)
    ]
    october = [
        o.model_copy(
            update={
                "event_id": uuid.UUID(int=random.Random(1000 + i).getrandbits(128), version=4),
                "event_time": o.event_time + OCTOBER_SHIFT,
            }
        )
        for i, o in enumerate(september)
    ]
    rollups = [
        PromptPerformance(
            event_id=uuid.UUID(int=random.Random(2000 + k).getrandbits(128), version=4),
            event_time=SEPTEMBER,
            prompt_name="greeting",
            prompt_version=1 + k % 2,
            window_seconds=60,
            window_start=SEPTEMBER + timedelta(minutes=k // 2),
            source_topic="outcomes",
            source_partition=0,
            first_offset=k,
            executions=20 + k,
            successes=18 + k - k % 3,
            failures=2 + k % 3,
            latency_sum_ms=4000 + 100 * k,
            latency_sq_ms=900_000 + 5_000 * k,
            latency_sketch={500: 10, 520: 10 + k},
            input_tokens=1000,
            output_tokens=200,
            cost_usd=Decimal("0.012"),
            cost_sq=0.0001,
        )
        for k in range(12)
    ]
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for topic, events in ((OUTCOMES, september + october), (PROMPT_PERFORMANCE, rollups)):
            spec = topic_spec(topic)
            for event in events:
                await producer.send_and_wait(
                    settings.topic(topic), encode(event), key=spec.key_of(event)
                )
    finally:
        await producer.stop()
    return {"usage_events": len(september) + len(october), "prompt_performance": len(rollups)}


async def _all_sunk(settings: Settings, expected: dict[str, int]) -> bool:
    for flow, topic in (("usage_events", OUTCOMES), ("prompt_performance", PROMPT_PERFORMANCE)):
        group = f"{settings.consumer_group_prefix}.{flow}"
        offsets = await committed_offsets(settings, settings.topic(topic), group)
        if sum(v or 0 for v in offsets.values()) < expected[flow]:
            return False
    return True


_COMMANDS = {
    "migrate": "migrate",
    "pricing": "pricing load prices.yaml",
    "costs table": "report costs --start 2026-09-01 --end 2026-11-01",
    "costs csv": "report costs --start 2026-09-01 --end 2026-11-01 --format csv --output costs.csv",
    "unknown org": "report costs --start 2026-09-01 --end 2026-11-01 --org nobody",
    "compare": "prompts compare greeting --start 2026-09-01 --end 2026-10-01 --window 60",
}


def _outputs(env: Mapping[str, str], cwd: Path, close: str) -> dict[str, Any]:
    """Every command's exit code, stdout and stderr (and the CSV file it wrote)."""
    found: dict[str, Any] = {
        name: _llmpulse(env, cwd, *command.split()) for name, command in _COMMANDS.items()
    }
    written = cwd / "costs.csv"
    found["costs.csv"] = written.read_text() if written.exists() else None
    code, out, err = _llmpulse(env, cwd, "report", "close", "--period", close)
    found["close"] = (code, out.replace(close, "MONTH"), err)
    return found


@pytest.mark.stack
async def test_commands_answered_by_the_running_sink_match_a_stopped_sink(
    settings: Settings, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = settings.child_env(LLMPULSE_STATE_DIR=str(state))
    (tmp_path / "prices.yaml").write_text((EXAMPLES / "pricing.yaml").read_text())
    assert _llmpulse(env, tmp_path, "migrate")[0] == 0
    for args in (
        ["prompts", "create", "greeting", "--content", "Hello"],
        ["prompts", "create", "greeting", "--content", "Hi there"],
        ["prompts", "activate", "greeting", "--version", "1"],
        ["prompts", "activate", "greeting", "--version", "2", "--weight", "0.5"],
    ):
        code, _out, err = _llmpulse(env, tmp_path, *args)
        assert code == 0, err
    expected = await _produce(settings)

    log = tmp_path / "sink.log"
    with log.open("wb") as sink_log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "llmpulse", "worker", "sink"],
            env=env,
            stdout=sink_log,
            stderr=subprocess.STDOUT,
        )
        try:
            await wait_until(lambda: _all_sunk(settings, expected), 120, "every event sunk")
            while_running = await asyncio.to_thread(_outputs, env, tmp_path, "2026-09")
            served = (state / "chdb.sock").is_socket()
            assert worker.poll() is None, log.read_text()[-2000:]
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0, log.read_text()[-2000:]
        finally:
            if worker.poll() is None:
                worker.kill()
    assert not (state / "chdb.sock").exists()
    (tmp_path / "costs.csv").unlink(missing_ok=True)
    stopped = await asyncio.to_thread(_outputs, env, tmp_path, "2026-10")

    assert while_running == stopped
    assert served  # the commands above went through the running worker
    assert stopped["migrate"] == (0, "schema up to date\n", "")
    assert stopped["pricing"][0] == 0
    assert stopped["pricing"][1].endswith(" loaded\n")
    assert "Acme Corp" in stopped["costs table"][1]
    assert stopped["costs csv"] == (0, "", "wrote costs.csv\n")
    assert stopped["unknown org"][0] == 2
    assert stopped["unknown org"][2].startswith("llmpulse: error: ")
    assert stopped["compare"][0] == 0
    assert stopped["compare"][1]
    assert stopped["close"][0] == 0
    assert stopped["close"][1].startswith("closed MONTH: ")


# --- the socket itself, in process (chDB tier) ------------------------------------------------


def _count_tables(client: Client, arguments: Mapping[str, Any]) -> str:
    rows = client.query("SELECT count() FROM system.tables WHERE database = currentDatabase()")
    return f"{rows.result_rows[0][0] > 0}\n"


def _bad_input(client: Client, arguments: Mapping[str, Any]) -> str:
    from llmpulse.processors.billing.reports import BillingInputError

    raise BillingInputError(f"period {arguments['period']} is already closed")


def _crash(client: Client, arguments: Mapping[str, Any]) -> str:
    raise RuntimeError("boom\nsecond line")


_OPERATIONS = {op.__name__: op for op in (_count_tables, _bad_input, _crash)}


@pytest.mark.chdb
def test_an_operation_runs_while_the_sinks_hold_their_client_lock(
    base_settings: Settings, ch: Client
) -> None:
    """Operations use their own chDB handle: a long sink write never blocks a report
    (nor does a report block the sinks' writes)."""
    answers: list[str] = []
    with chdb_socket.serving(base_settings, _OPERATIONS), base._CLIENT_LOCK:
        asker = threading.Thread(
            target=lambda: answers.append(chdb_socket.run(base_settings, _count_tables, {})),
            daemon=True,
        )
        asker.start()
        asker.join(timeout=120)  # a deadlock guard, not a timing assertion
    assert answers == ["True\n"]


@pytest.mark.chdb
def test_errors_come_back_as_one_line_with_their_exit_code(
    base_settings: Settings, ch: Client
) -> None:
    path = chdb_socket.socket_path(base_settings)
    assert path is not None
    with chdb_socket.serving(base_settings, _OPERATIONS):
        assert path.is_socket()
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(chdb_socket.OperationInputError, match=r"^period 2026-09 is already"):
            chdb_socket.run(base_settings, _bad_input, {"period": "2026-09"})
        with pytest.raises(
            chdb_socket.OperationFailed, match=r"^_crash failed: RuntimeError: boom$"
        ):
            chdb_socket.run(base_settings, _crash, {})

        def _not_served(client: Client, arguments: Mapping[str, Any]) -> str:
            return "never\n"

        with pytest.raises(chdb_socket.OperationInputError, match=r"unknown operation '_not"):
            chdb_socket.run(base_settings, _not_served, {})
    assert not path.exists()


@pytest.mark.chdb
def test_a_stale_socket_of_a_dead_worker_falls_back_to_the_folder(
    base_settings: Settings, ch: Client
) -> None:
    path = chdb_socket.socket_path(base_settings)
    assert path is not None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: as after a SIGKILL
    try:
        assert chdb_socket.run(base_settings, _count_tables, {}) == "True\n"
        # A worker starting on the folder replaces it.
        with chdb_socket.serving(base_settings, _OPERATIONS):
            assert chdb_socket.run(base_settings, _count_tables, {}) == "True\n"
    finally:
        path.unlink(missing_ok=True)


def test_a_stuck_worker_is_a_one_line_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings().model_copy(
        update={"clickhouse_dsn": SecretStr(f"chdb://{tmp_path / 'chdb'}")}
    )
    monkeypatch.setattr(chdb_socket, "ANSWER_SECONDS", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.bind(str(tmp_path / "chdb.sock"))
        stuck.listen()  # connections queue up; nobody ever answers
        with pytest.raises(
            chdb_socket.OperationFailed,
            match=r"^the sink worker did not answer _count_tables within 0\.2 s$",
        ):
            chdb_socket.run(settings, _count_tables, {})
