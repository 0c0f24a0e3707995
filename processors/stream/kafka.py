"""aiokafka clients built from Settings (one place for client options)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel

from llmpulse.processors.errors import ServiceError
from llmpulse.processors.settings import ServiceAddressMissing, Settings
from llmpulse.processors.stream.codec import PoisonEvent, decode

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


class TopicMissing(ServiceError):
    """A topic llmpulse reads does not exist on the cluster (``llmpulse topics create``)."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic} does not exist: create it with `llmpulse topics create`")


def bootstrap(settings: Settings) -> str:
    """Kafka bootstrap servers of ``settings``.

    Workers never look up the local stack themselves: the CLI (or a test
    harness) fills the addresses in before it hands the settings down.
    """
    if not settings.kafka_bootstrap:
        raise ServiceAddressMissing("kafka_bootstrap")
    return settings.kafka_bootstrap


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer with ``acks=all`` (not started)."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def consumer(settings: Settings, *topics: str, group: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits, reading from the earliest offset (not started)."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def started(
    make: Callable[[], AIOKafkaConsumer], what: str, *, max_delay: float = 10.0
) -> AIOKafkaConsumer:
    """A consumer from ``make``, started once Kafka answers (a long-running task's reader).

    A worker's side task that starts its consumer while the broker restarts
    would otherwise die with "Unable to bootstrap" and take the worker down;
    it waits instead, retrying with capped exponential backoff (a fresh
    consumer each time: a failed ``start`` leaves one half started).
    """
    delay = 0.2
    while True:
        reader = make()
        try:
            await reader.start()
            return reader
        except KafkaConnectionError as exc:
            await reader.stop()
            log.warning("%s: Kafka unreachable (%s); retrying in %.1f s", what, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def read_from_start(
    settings: Settings, topic: str, partitions: int, model: type[M]
) -> list[M]:
    """Every valid event now in ``topic`` (all partitions, from the beginning, in order).

    Invalid values are skipped (the consuming workers dead-letter them). Reads up
    to the end offsets taken at the start, so it returns even on a busy topic.
    """
    # A throwaway group id: aiokafka 0.14 raises on stop() for group_id=None consumers.
    reader = consumer(settings, group=f"llmpulse-reader-{uuid.uuid4().hex[:8]}")
    await reader.start()
    events: list[M] = []
    try:
        if topic not in await reader.topics():
            raise TopicMissing(topic)  # else the offsets lookup below waits 40 s, then fails
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        ends = await reader.end_offsets(parts)
        while [tp for tp in parts if await reader.position(tp) < ends[tp]]:
            batch = await reader.getmany(timeout_ms=500)
            for tp in parts:
                for r in batch.get(tp, []):
                    try:
                        events.append(decode(model, r.value, bounds=settings.event_time_bounds))
                    except PoisonEvent:
                        continue
    finally:
        await reader.stop()
    return events
