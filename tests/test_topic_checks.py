"""Existing topics are checked, not trusted (real Kafka).

* ``llmpulse topics create`` on a cluster where topics exist with the wrong
  partition count, cleanup policy or retention exits 2 with one line naming
  each topic, the expected and the actual value; on matching topics it exits 0.
* A worker refuses to start (exit 2, one line) when the topics a Faust table is
  co-partitioned with (breaker: ``llm.outcomes.v1``, ``llm.breaker-control.v1``
  and the table's changelog) have different partition counts.

Each test makes its mismatched topics with the admin client under a fresh
topic prefix, before ``llmpulse topics create`` would make them right.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.topics import (
    TopicMismatch,
    create_topics,
    planned_topics,
    verify_copartitioned,
)
from llmpulse.schemas.topics import BREAKER_CONTROL, OUTCOMES, PROMPT_VERSIONS

pytestmark = pytest.mark.stack

_WEEK_MS = 7 * 24 * 3600 * 1000
#: The registry's configuration of the event topics (the broker's default retention may be less).
_DELETE_WEEK = {"cleanup.policy": "delete", "retention.ms": str(_WEEK_MS)}


def _fresh(services: Settings) -> Settings:
    return services.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:10]}."})


async def _make(settings: Settings, *topics: NewTopic) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap(settings))
    await admin.start()
    try:
        await admin.create_topics(list(topics))
    finally:
        await admin.close()


def _llmpulse(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # cwd is an empty folder so that no .env file of the checkout is read.
    return subprocess.run(
        [sys.executable, "-m", "llmpulse", *args],
        env=settings.child_env(LLMPULSE_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'chdb'}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


async def test_topics_create_names_each_mismatched_existing_topic(
    services: Settings, tmp_path: Path
) -> None:
    settings = _fresh(services)
    control, registry, outcomes = (
        settings.topic(n) for n in (BREAKER_CONTROL, PROMPT_VERSIONS, OUTCOMES)
    )
    await _make(
        settings,
        NewTopic(control, 3, 1, topic_configs=_DELETE_WEEK),
        NewTopic(registry, 1, 1, topic_configs={"cleanup.policy": "compact,delete"}),
        NewTopic(
            outcomes, 6, 1, topic_configs={"cleanup.policy": "delete", "retention.ms": "1000"}
        ),
    )

    done = _llmpulse(settings, tmp_path, "topics", "create")

    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("llmpulse: error: ")
    assert f"topic {control}: 3 partitions, expected 6" in line
    assert f"topic {registry}: cleanup.policy compact,delete, expected compact" in line
    assert f"topic {outcomes}: retention.ms 1000, expected at least {_WEEK_MS} (or -1)" in line
    # The missing topics were created all the same; only the three are wrong.
    with pytest.raises(TopicMismatch) as again:
        await create_topics(settings)
    assert str(again.value).count("topic ") == 3


async def test_topics_create_accepts_matching_existing_topics(
    settings: Settings, tmp_path: Path
) -> None:
    # The fixture created every topic; a second run checks them and changes nothing.
    done = _llmpulse(settings, tmp_path, "topics", "create")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(planned_topics(settings))
    assert all(line.startswith("exists ") for line in lines), done.stdout


async def test_mismatched_copartitioned_topics_are_refused_before_a_worker_starts(
    services: Settings,
) -> None:
    settings = _fresh(services)
    control, outcomes = settings.topic(BREAKER_CONTROL), settings.topic(OUTCOMES)
    await _make(settings, NewTopic(control, 3, 1, topic_configs=_DELETE_WEEK))
    with pytest.raises(TopicMismatch):
        await create_topics(settings)  # creates the others, names the control topic

    with pytest.raises(TopicMismatch) as refused:
        await verify_copartitioned(settings, ["breaker"])
    message = str(refused.value)
    assert "table breaker_state needs 6 partitions" in message
    assert f"{outcomes} 6" in message
    assert f"{control} 3" in message
    # The prompts tables do not read the control topic; the sink has no table.
    await verify_copartitioned(settings, ["prompts", "sink"])


async def test_worker_exits_2_on_mismatched_copartitioned_topics(
    services: Settings, tmp_path: Path
) -> None:
    settings = _fresh(services)
    control = settings.topic(BREAKER_CONTROL)
    await _make(settings, NewTopic(control, 3, 1, topic_configs=_DELETE_WEEK))
    with pytest.raises(TopicMismatch):
        await create_topics(settings)

    done = _llmpulse(settings, tmp_path, "worker", "breaker")

    assert done.returncode == 2, done.stderr[-2000:]
    line = _one_line(done.stderr)
    assert line.startswith("llmpulse: error: table breaker_state needs 6 partitions")
    assert f"{control} 3" in line
