"""aiokafka clients built from Settings (one place for client options).

Every client of the workers and commands connects with :func:`client_options`:
the bootstrap servers and the security settings (``Settings.kafka_security``).
:func:`preflight` tells a client that Kafka refused (wrong password, untrusted
certificate: a ``ConfigError`` naming the setting, which no retry fixes) from
an unreachable Kafka (an outage, which the callers wait out or report).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from pydantic import BaseModel

from llmpulse.core import kafka_security
from llmpulse.core.kafka_security import KafkaSecurityError
from llmpulse.processors.errors import ConfigError, ServiceError
from llmpulse.processors.settings import ServiceAddressMissing, Settings
from llmpulse.processors.stream.codec import PoisonEvent, decode

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
#: How long :func:`preflight` waits for one bootstrap address.
PREFLIGHT_TIMEOUT = 10.0
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


def client_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers and security options of every aiokafka client of ``settings``.

    Holds the SASL password in clear text (aiokafka needs it): never log it.
    Raises ``ConfigError`` naming the setting when a TLS file cannot be loaded.
    """
    try:
        security = settings.kafka_security.aiokafka_options()
    except KafkaSecurityError as exc:
        raise ConfigError(str(exc)) from None
    return {"bootstrap_servers": bootstrap(settings), **security}


async def preflight(settings: Settings, *, timeout: float = PREFLIGHT_TIMEOUT) -> str | None:
    """Connect once as the clients of ``settings`` would: None if Kafka let us in.

    Raises ``ConfigError`` naming the setting when Kafka refused the
    credentials or the TLS handshake (aiokafka's clients only log that, then
    fail with "Unable to bootstrap", as if Kafka were away). Returns why no
    bootstrap address answered when none did (the caller's outage handling
    applies). Bounded: at most ``timeout`` seconds per address.
    """
    try:
        return await kafka_security.preflight(
            bootstrap(settings), settings.kafka_security, timeout=timeout
        )
    except KafkaSecurityError as exc:
        raise ConfigError(str(exc)) from None


def on_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` before a worker starts, on an event loop of its own.

    Not ``asyncio.run``: it leaves the process without a current event loop,
    and the Faust worker that starts next takes the current one.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer with ``acks=all`` (not started)."""
    options: dict[str, Any] = {
        **client_options(settings),
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
        **client_options(settings),
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def started(
    make: Callable[[], AIOKafkaConsumer],
    what: str,
    *,
    max_delay: float = 10.0,
    settings: Settings | None = None,
) -> AIOKafkaConsumer:
    """A consumer from ``make``, started once Kafka answers (a long-running task's reader).

    A worker's side task that starts its consumer while the broker restarts
    would otherwise die with "Unable to bootstrap" and take the worker down;
    it waits instead, retrying with capped exponential backoff (a fresh
    consumer each time: a failed ``start`` leaves one half started). Given the
    ``settings`` the consumer was made with, each failure is checked with
    :func:`preflight` first: a Kafka that refuses them (``ConfigError``) is not
    waited for, as no retry would let the consumer in.
    """
    delay = 0.2
    while True:
        reader = make()
        try:
            await reader.start()
            return reader
        except KafkaConnectionError as exc:
            await reader.stop()
            if settings is not None:
                await preflight(settings)
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
