"""Operator side of the prompt registry: read it from the topic, append validated events."""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition

from processors import kafka
from processors.codec import PoisonEvent, decode, encode
from processors.prompt_registry import PromptState, fold
from processors.settings import Settings
from schemas.events import PromptVersionEvent
from schemas.topics import PROMPT_VERSIONS, topic_spec


async def read_registry(settings: Settings) -> dict[str, PromptState]:
    """Fold the whole (compacted, single-partition) registry topic."""
    topic = settings.topic(PROMPT_VERSIONS)
    consumer = kafka.consumer(settings, group=f"llmpulse-registry-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    events: list[PromptVersionEvent] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for r in batch.get(tp, []):
                try:
                    events.append(
                        decode(PromptVersionEvent, r.value, bounds=settings.event_time_bounds)
                    )
                except PoisonEvent:
                    continue  # the registry agent reports these; they never change state
    finally:
        await consumer.stop()
    return fold(events)


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
