"""Test harness helpers: start services once, unique topic names per test.

``LLMPULSE_TEST_SERVICES=local`` (default) starts real local processes through
``llmpulse.devstack.stack``; ``testcontainers`` starts Kafka and Redis containers
instead (needs a Docker engine; install the ``docker`` extra). Services given
in settings (``LLMPULSE_KAFKA_BOOTSTRAP`` ...) are used as they are.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorNotAvailableError
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from llmpulse.devstack import stack
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka
from llmpulse.processors.stream.topics import create_topics
from llmpulse.schemas import Feedback, LLMOutcome, OutcomeStatus


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
def running_secure_services(settings: Settings, state_dir: Path) -> Iterator[Settings]:
    """A second local stack (in ``state_dir``) that also serves SASL_SSL Kafka and TLS Redis.

    Yields ``settings`` pointed at those secure listeners only (SCRAM-SHA-512 over
    TLS, the stack's CA, its ACL user); everything else, the state folder (and so
    the chDB data) included, stays as ``settings`` had it.
    """
    from tests import tiers

    tiers.check(tiers.STACK, "started secure services (tests.harness.running_secure_services)")
    own = settings.model_copy(
        update={
            "state_dir": state_dir,
            "kafka_bootstrap": None,
            "redis_url": None,
            "prometheus_url": None,
        }
    )
    stack.up(own, progress=lambda m: print(f"[secure stack] {m}", flush=True), secure=True)
    try:
        yield stack.secure_endpoints(own).apply(settings)
    finally:
        stack.down(own, progress=lambda m: None)


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
            update["redis_url"] = SecretStr(
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


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    every: float = 0.2,
    explain: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """``wait_for`` for a predicate that has to ask a service (polled every ``every`` s).

    On timeout the failure message ends with what ``explain`` says (where things stand).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            detail = f": {await explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        await asyncio.sleep(every)


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset to be written, per partition of ``topic``."""
    consumer: AIOKafkaConsumer = kafka.consumer(settings, group=f"end-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def caught_up(
    settings: Settings, topic: str, group: str, ends: dict[int, int] | None = None
) -> bool:
    """Whether ``group`` committed every partition of ``topic`` up to ``ends`` (default: its end).

    A stateful worker commits only up to its input cursor, so for its group this
    means every event before ``ends`` is applied. A partition never written needs no commit.
    """
    return not await behind(settings, topic, group, ends)


async def behind(
    settings: Settings, topic: str, group: str, ends: dict[int, int] | None = None
) -> dict[int, tuple[int | None, int]]:
    """(committed, target) of each partition ``group`` has not committed up to ``ends``."""
    targets = ends if ends is not None else await end_offsets(settings, topic)
    committed = await committed_offsets(settings, topic, group)
    return {
        p: (committed.get(p), end)
        for p, end in sorted(targets.items())
        if (committed.get(p) or 0) < end
    }


async def assigned_members(settings: Settings, group: str) -> int:
    """Members of consumer ``group`` that hold an assignment (0 while it rebalances)."""
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    await admin.start()
    try:
        try:
            (response,) = await admin.describe_consumer_groups([group])
        except CoordinatorNotAvailableError:  # a fresh broker creating __consumer_offsets
            return 0
        _error, _group, state, _ptype, _protocol, members = response.groups[0]
        if state != "Stable":
            return 0
        return sum(1 for member in members if member[4])  # member_assignment bytes
    finally:
        await admin.close()


def spawn_worker(env: dict[str, str], flow: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m llmpulse worker <flow>`` as a child process, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "llmpulse", "worker", flow],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def sigkill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` without a chance to commit, flush or leave its group; reap it."""
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc`` (a clean shutdown), SIGKILL it if it is still there after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


#: Sums of one prompt rollup window: executions, successes, latency sum (ms), tokens,
#: cost, feedback count, feedback sum.
RollupSums = tuple[int, int, int, int, Decimal, int, Decimal]


def rollups_brute_force(
    outcomes: Iterable[LLMOutcome], feedback: Iterable[Feedback], windows: Iterable[int]
) -> dict[tuple[str, int, int, int], RollupSums]:
    """Prompt rollups computed directly from the events, per (prompt, version, window
    size, window start in epoch seconds): what the rollup worker must add up to."""
    sums: dict[tuple[str, int, int, int], list[Any]] = {}
    outcomes, feedback = list(outcomes), list(feedback)

    def window(name: str, version: int, size: int, at: datetime) -> list[Any]:
        key = (name, version, size, int(at.timestamp() // size) * size)
        return sums.setdefault(key, [0, 0, 0, 0, Decimal(0), 0, Decimal(0)])

    for size in windows:
        for o in outcomes:
            if o.prompt_name is None or o.prompt_version is None:
                continue  # not a prompt execution
            if o.status is OutcomeStatus.cancelled:
                continue  # the caller gave up: no result of the prompt version
            w = window(o.prompt_name, o.prompt_version, size, o.event_time)
            w[0] += 1
            w[1] += o.status is OutcomeStatus.success
            w[2] += o.latency_ms
            w[3] += o.input_tokens + o.output_tokens
            w[4] += o.cost_usd
        for f in feedback:
            w = window(f.prompt_name, f.prompt_version, size, f.event_time)
            w[5] += 1
            w[6] += f.score
    return {k: (v[0], v[1], v[2], v[3], v[4], v[5], v[6]) for k, v in sums.items()}
