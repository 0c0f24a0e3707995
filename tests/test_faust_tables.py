"""The changelog topics that ``topics create`` makes match the Faust apps' tables."""

from __future__ import annotations

from pathlib import Path

from processors.breaker_agent import BreakerService
from processors.faust_app import changelog_topics
from processors.prompts_agent import PromptsService
from processors.settings import Settings


def test_every_table_changelog_is_created_up_front(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        kafka_bootstrap="127.0.0.1:1",
        redis_url="redis://127.0.0.1:1/0",
        topic_prefix="x.",
    )
    actual = set()
    for service in (BreakerService(settings), PromptsService(settings)):
        for table in service.app.tables.values():
            actual.add((table.changelog_topic.get_topic_name(), table.partitions))
    assert actual == set(changelog_topics(settings))
