"""Operator side of the prompt registry: read it from the topic, append validated events."""

from __future__ import annotations

from llmpulse.core.registry import PromptState, fold
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas.events import PromptVersionEvent
from llmpulse.schemas.topics import PROMPT_VERSIONS, topic_spec


async def read_registry(settings: Settings) -> dict[str, PromptState]:
    """Fold the whole (compacted, single-partition) registry topic."""
    spec = topic_spec(PROMPT_VERSIONS)
    return fold(
        await kafka.read_from_start(
            settings, settings.topic(PROMPT_VERSIONS), spec.partitions, PromptVersionEvent
        )
    )


async def append(settings: Settings, events: list[PromptVersionEvent]) -> None:
    """Produce ``events`` in order (one partition, idempotent producer, acks=all)."""
    spec = topic_spec(PROMPT_VERSIONS)
    producer = kafka.producer(settings)
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(
                settings.topic(PROMPT_VERSIONS), encode(e), key=spec.key_of(e)
            )
    finally:
        await producer.stop()
