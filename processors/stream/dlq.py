"""Dead-letter publishing and the consecutive-poison limit.

A poison message is copied to ``<topic>.dlq`` with its original key and value
(credential-like values redacted) plus headers saying why and where it came
from, so nothing is lost and the partition keeps moving. A run of too many
consecutive poison messages on one partition means something upstream is
broken; the worker then stops instead of draining everything to the DLQ.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from llmpulse.processors.stream.codec import PoisonEvent
from llmpulse.processors.stream.metrics import DLQ_EVENTS
from llmpulse.processors.stream.redact import redact_bytes, redact_text

REASON_HEADER = "dlq.reason"
DETAIL_HEADER = "dlq.detail"


class PoisonLimitExceeded(RuntimeError):
    """Too many consecutive poison messages on one partition: stop the worker."""


class _Producer(Protocol):
    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> object: ...


class Record(Protocol):
    """What is read of a consumed message: an aiokafka ``ConsumerRecord`` or a ``SourceRecord``."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class SourceRecord(NamedTuple):
    """Where a message came from (enough to find the original and to redirect it).

    A named tuple: one is made per consumed event, at a third of a frozen
    dataclass's cost.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


class PoisonLimiter:
    """Counts consecutive poison messages per partition and enforces the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._runs: dict[tuple[str, int], int] = {}

    def ok(self, topic: str, partition: int) -> None:
        """A good message ends the run on its partition."""
        if self._runs:
            self._runs.pop((topic, partition), None)

    def poison(self, topic: str, partition: int) -> None:
        """Count one poison message; raise ``PoisonLimitExceeded`` past the limit."""
        n = self._runs.get((topic, partition), 0) + 1
        self._runs[(topic, partition)] = n
        if n > self._limit:
            raise PoisonLimitExceeded(
                f"{n} consecutive invalid messages on {topic}[{partition}] "
                f"(limit {self._limit}); stopping so an upstream fault does not drain into the DLQ"
            )


def dlq_headers(record: Record, poison: PoisonEvent, now: datetime) -> list[tuple[str, bytes]]:
    """Headers describing why and from where a message was dead-lettered."""
    return [
        (REASON_HEADER, poison.reason.encode()),
        (DETAIL_HEADER, redact_text(poison.detail).encode()),
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.failed_at", now.isoformat().encode()),
    ]


class DeadLetterPublisher:
    """Sends poison messages to their DLQ and waits for the broker's acknowledgement.

    The caller commits the source offset only after ``publish`` returned, so a
    crash never loses a poison message.
    """

    def __init__(self, producer: _Producer, limiter: PoisonLimiter) -> None:
        self._producer = producer
        self._limiter = limiter

    async def publish(self, record: Record, poison: PoisonEvent, dlq_topic: str) -> None:
        """Dead-letter ``record`` and wait for the broker's acknowledgement.

        Call ``poisoned`` afterwards to apply the consecutive-poison limit.
        """
        await self._producer.send_and_wait(
            dlq_topic,
            value=redact_bytes(record.value) if record.value else record.value,
            key=redact_bytes(record.key) if record.key else record.key,
            headers=dlq_headers(record, poison, datetime.now(UTC)),
        )
        DLQ_EVENTS.labels(topic=record.topic, reason=poison.reason).inc()

    def poisoned(self, record: Record) -> None:
        """Count a dead-lettered message; ``PoisonLimitExceeded`` past the limit."""
        self._limiter.poison(record.topic, record.partition)

    def ok(self, record: Record) -> None:
        """Record a good message on the record's partition."""
        self._limiter.ok(record.topic, record.partition)
