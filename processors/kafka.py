"""aiokafka clients built from Settings (one place for client options)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from processors.settings import Settings
from processors.stack import endpoints


def bootstrap(settings: Settings) -> str:
    """Kafka bootstrap servers: configured, or the running local stack's."""
    return settings.kafka_bootstrap or endpoints(settings).kafka_bootstrap


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
