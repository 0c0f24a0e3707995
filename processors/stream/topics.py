"""``llmpulse topics create``: every registry topic and its DLQ, and the Faust changelogs."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.faust_app import changelog_topics
from llmpulse.schemas.topics import TOPICS

_DLQ_CONFIGS = {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}


@dataclass(frozen=True)
class TopicResult:
    name: str
    status: str  # "created" or "exists"


def planned_topics(settings: Settings) -> list[NewTopic]:
    """The topics ``create_topics`` makes: each registry entry plus its DLQ."""
    out: list[NewTopic] = []
    for spec in TOPICS.values():
        out.append(
            NewTopic(
                settings.topic(spec.name),
                spec.partitions,
                settings.topic_replication,
                topic_configs=spec.topic_configs(),
            )
        )
        out.append(
            NewTopic(
                settings.topic(spec.dlq), 1, settings.topic_replication, topic_configs=_DLQ_CONFIGS
            )
        )
    for name, partitions in changelog_topics(settings):
        out.append(
            NewTopic(
                name,
                partitions,
                settings.topic_replication,
                topic_configs={"cleanup.policy": "compact"},
            )
        )
    return out


async def create_topics(settings: Settings) -> list[TopicResult]:
    """Create missing topics (idempotent); raises the broker's error for any other failure."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap(settings))
    await admin.start()
    try:
        response = await admin.create_topics(planned_topics(settings), timeout_ms=30_000)
    finally:
        await admin.close()
    results: list[TopicResult] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code == 0:
            results.append(TopicResult(name, "created"))
        elif code == TopicAlreadyExistsError.errno:
            results.append(TopicResult(name, "exists"))
        else:
            raise for_code(code)(f"creating topic {name}")
    return sorted(results, key=lambda r: r.name)
