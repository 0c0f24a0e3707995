"""A worker's side reader waits for Kafka instead of dying when the broker is away at start.

The prompts worker's registry reader once crashed the worker with "Unable to
bootstrap" (aiokafka's ``KafkaConnectionError`` from ``start``) when it started
during a broker restart. ``kafka.started`` retries with a fresh consumer, and
stops each one that failed.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from llmpulse.processors.stream import kafka


class _Consumer:
    def __init__(self, reachable: bool) -> None:
        self.reachable = reachable
        self.started = self.stopped = False

    async def start(self) -> None:
        if not self.reachable:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1, 'IPv4')]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


async def test_a_reader_started_while_kafka_is_away_waits_for_it() -> None:
    made: list[_Consumer] = []

    def make() -> Any:
        made.append(_Consumer(reachable=len(made) >= 3))
        return made[-1]

    reader = await kafka.started(make, "test reader", max_delay=0.01)
    assert reader is made[-1]
    assert made[-1].started
    assert not made[-1].stopped
    assert len(made) == 4  # three refused attempts, each with a fresh consumer...
    assert all(c.stopped for c in made[:3])  # ...stopped, not left half started


async def test_other_start_errors_are_not_retried() -> None:
    class _Broken(_Consumer):
        async def start(self) -> None:
            raise ValueError("bad option")

    with pytest.raises(ValueError, match="bad option"):
        await kafka.started(lambda: _Broken(True), "test reader")
