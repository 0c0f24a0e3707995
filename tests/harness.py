"""Test harness helpers: start services once, unique topic names per test.

``LLMPULSE_TEST_SERVICES=local`` (default) starts real local processes through
``llmpulse.devstack.stack``; ``testcontainers`` starts Kafka and Redis containers
instead (needs a Docker engine; install the ``docker`` extra). Services given
in settings (``LLMPULSE_KAFKA_BOOTSTRAP`` ...) are used as they are.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from llmpulse.devstack import stack
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.topics import create_topics


@contextmanager
def running_services(settings: Settings) -> Iterator[Settings]:
    """Services for a test session; yields settings that point at them.

    Only tests marked ``stack`` may start them (:class:`tests.tiers.TierViolation`).
    """
    from tests import tiers  # here: the tiers plugin must be imported by pytest first

    tiers.check(tiers.STACK, "started the test services (tests.harness.running_services)")
    if settings.test_services == "testcontainers":
        with _containers(settings) as ready:
            yield ready
        return
    endpoints = stack.up(settings, progress=lambda m: print(f"[stack] {m}", flush=True))
    try:
        yield stack.with_endpoints(settings, endpoints)
    finally:
        stack.down(settings, progress=lambda m: None)


@contextmanager
def _containers(settings: Settings) -> Iterator[Settings]:  # pragma: no cover - needs Docker
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with ExitStack() as stack_:
        update: dict[str, Any] = {}
        if not settings.kafka_bootstrap:
            k = stack_.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
            update["kafka_bootstrap"] = k.get_bootstrap_server()
        if not settings.redis_url:
            r = stack_.enter_context(RedisContainer("redis:7-alpine"))
            update["redis_url"] = (
                f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0"
            )
        yield settings.model_copy(update=update)


async def with_unique_topics(settings: Settings) -> Settings:
    """Settings with a fresh topic prefix and every registry topic created under it."""
    isolated = settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:10]}."})
    await create_topics(isolated)
    return isolated


async def read_all(
    settings: Settings, topic: str, expected: int, timeout: float = 60.0
) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` records arrived (or timeout)."""
    consumer = kafka.consumer(settings, topic, group=f"reader-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(records) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
        # One more short poll proves nothing beyond ``expected`` was there.
        extra = await consumer.getmany(timeout_ms=500)
        for recs in extra.values():
            records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def committed_offsets(settings: Settings, topic: str, group: str) -> dict[int, int | None]:
    """Committed offset per partition of ``topic`` for consumer group ``group``."""
    consumer: AIOKafkaConsumer = kafka.consumer(settings, group=group)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in sorted(parts)}
    finally:
        await consumer.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail the test with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
