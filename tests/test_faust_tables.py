"""Faust tables: changelog topics made up front; offsets committed only behind the changelog."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from pydantic import SecretStr

from llmpulse.core.rollup import Partial
from llmpulse.processors.breaker.agent import BreakerService
from llmpulse.processors.prompts.agent import PromptsService
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream.faust_app import (
    AckTrackingProducer,
    ChangelogFirstConsumer,
    changelog_topics,
    create_app,
)
from llmpulse.schemas.topics import PROMPT_PERFORMANCE


def test_every_table_changelog_is_created_up_front(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
        topic_prefix="x.",
    )
    actual = set()
    for service in (BreakerService(settings), PromptsService(settings)):
        for table in service.app.tables.values():
            actual.add((table.changelog_topic.get_topic_name(), table.partitions))
    assert actual == set(changelog_topics(settings))


class _FakeProducer:
    def __init__(self) -> None:
        self.unacknowledged: set[asyncio.Future[object]] = set()


async def test_offsets_are_committed_only_after_the_changelog_writes_before_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    committed: list[dict[Any, int]] = []
    crashed: list[BaseException] = []

    async def base_commit(self: Any, offsets: dict[Any, int], **kw: Any) -> bool:
        committed.append(dict(offsets))
        return True

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit_offsets", base_commit)
    consumer = ChangelogFirstConsumer.__new__(ChangelogFirstConsumer)
    producer = _FakeProducer()
    consumer.__dict__.update(
        app=SimpleNamespace(producer=producer), crash=crash, transport=SimpleNamespace()
    )

    loop = asyncio.get_running_loop()
    write = loop.create_future()
    producer.unacknowledged.add(write)
    commit = asyncio.create_task(consumer._commit_offsets({TP("t", 0): 10}))
    await asyncio.sleep(0.05)
    assert committed == []  # the changelog write is not acknowledged yet
    write.set_result("metadata")
    assert await commit is True
    assert committed == [{TP("t", 0): 10}]

    failed = loop.create_future()
    failed.set_exception(RuntimeError("not enough replicas"))
    producer.unacknowledged = {failed}
    assert await consumer._commit_offsets({TP("t", 0): 20}) is False
    assert committed == [{TP("t", 0): 10}]  # never past a lost write
    assert [str(e) for e in crashed] == ["not enough replicas"]


async def test_commits_are_held_at_the_commit_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    committed: list[dict[Any, int]] = []

    async def base_commit(self: Any, offsets: dict[Any, int], **kw: Any) -> bool:
        committed.append(dict(offsets))
        return True

    monkeypatch.setattr(faust_aiokafka.Consumer, "_commit_offsets", base_commit)
    consumer = ChangelogFirstConsumer.__new__(ChangelogFirstConsumer)
    limits = {TP("src", 0): 7, TP("src", 1): None}
    consumer.__dict__.update(
        app=SimpleNamespace(producer=_FakeProducer()),
        transport=SimpleNamespace(commit_limit=lambda tp, o: limits.get(tp, o)),
    )
    assert await consumer._commit_offsets({TP("src", 0): 10, TP("src", 1): 4, TP("x", 0): 3})
    assert committed == [{TP("src", 0): 7, TP("x", 0): 3}]
    assert await consumer._commit_offsets({TP("src", 1): 9}) is False  # nothing to commit
    assert len(committed) == 1


def test_faust_apps_use_the_changelog_first_transport(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
    )
    app = create_app(settings, "prompts")
    assert isinstance(app.producer, AckTrackingProducer)
    assert type(app.transport).Consumer is ChangelogFirstConsumer


async def test_a_closed_window_is_published_only_after_its_changelog_writes(
    tmp_path: Path,
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
    )
    service = PromptsService(settings)
    sent: list[str] = []

    async def send_and_wait(topic: str, *args: Any) -> None:
        sent.append(topic)

    write = asyncio.get_running_loop().create_future()
    producer: Any = SimpleNamespace(unacknowledged={write}, send_and_wait=send_and_wait)
    service.app._producer = producer
    partial = Partial("greet", 1, 60, int(time.time()) // 60 * 60, 0, first_offset=0)
    partial.add_feedback(0, Decimal(4))
    publish = asyncio.create_task(service._emit([partial], "llm.feedback.v1"))
    await asyncio.sleep(0.05)
    assert sent == []  # the partial's own changelog write is not acknowledged yet
    write.set_result("metadata")
    await publish
    assert sent == [settings.topic(PROMPT_PERFORMANCE)]
