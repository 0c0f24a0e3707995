"""A Faust worker whose task, timer or batch processing dies exits 1 (real Kafka and Redis).

Issue 13 item 4: with ``LLMPULSE_PROMPT_WINDOWS='[0]'`` the prompts agent hit a
ZeroDivisionError on every event while the process stayed up (no alert, no
restart). Settings now refuse such values (``tests/test_settings.py``); these
tests pin that any exception escaping a worker's coroutine still takes the
process down with exit code 1, so a supervisor (``worker all``, docker-compose,
systemd) notices and restarts it. The workers have no Faust agents (whose
supervisor would restart a crashed actor in place): records come through the
batch path, and a task or timer crashes the app (``faust_app.run``).

The fault is injected into a real ``llmpulse worker prompts`` process: a small
launcher replaces one coroutine of ``PromptsService`` (or the batch step its
records go through) with one that raises, then runs the command line's ``main``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import LLMOutcome, Operation, OutcomeStatus
from llmpulse.schemas.topics import OUTCOMES
from tests.harness import wait_for

pytestmark = pytest.mark.stack

#: Launcher of a prompts worker with one fault; ``FAULT`` is filled in per test.
_LAUNCHER = """
import sys
import llmpulse.processors.prompts.agent as agent
from llmpulse.cli import main
from llmpulse.processors.stream.ordered import OrderedStep

async def dies(*args):
    raise ZeroDivisionError("injected fault")

FAULT
sys.exit(main(["worker", "prompts"]))
"""

FAULTS = {
    # app.task: the registry materializer (one-shot coroutine started with the app)
    "task": "agent.PromptsService._materialize_registry = dies",
    # app.timer: the idle-window emitter (every second)
    "timer": "agent.PromptsService._emit_idle_windows = dies",
    # the batch path (``BatchSource.batch``), where a 0-second window failed
    "batch": "OrderedStep.batch = dies",
}


async def _send_outcome(settings: Settings) -> None:
    outcome = LLMOutcome(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        request_id=uuid.uuid4(),
        org_id="acme",
        operation=Operation.completion,
        provider="openai",
        model="m",
        prompt_name="greet",
        prompt_version=1,
        status=OutcomeStatus.success,
        latency_ms=100,
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal("0.0001"),
    )
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic(OUTCOMES), encode(outcome), key=b"openai")
    finally:
        await producer.stop()


@pytest.mark.parametrize("where", sorted(FAULTS))
async def test_worker_exits_1_when_a_coroutine_dies(
    settings: Settings, tmp_path: Path, where: str
) -> None:
    env = settings.child_env(LLMPULSE_STATE_DIR=str(tmp_path / "state"))
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER.replace("FAULT", FAULTS[where])],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        if where == "batch":
            await _send_outcome(settings)
        # A bound for a hung test, not a timing claim (the worker starts, joins its
        # group and recovers its tables first; slow on a loaded machine).
        await wait_for(lambda: proc.poll() is not None, 600, "the worker to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 1, output
    assert "ZeroDivisionError" in output, output
