"""Operator side of the breaker: read the fleet view, send overrides.

``status`` reads the Redis serving view and falls back to the compacted
``llm.breaker-state.v1`` topic when Redis is unreachable; a Redis that refuses
the credentials or TLS of ``LLMPULSE_REDIS_URL`` is an error, not a fallback
(the fallback would hide a configuration that no retry fixes). Overrides are
``BreakerControl`` events on ``llm.breaker-control.v1``, applied by the agent
(so they are ordered with the provider's outcomes and survive restarts).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

import redis.asyncio as aioredis
from pydantic import ValidationError

from llmpulse.core.breaker import breaker_provider
from llmpulse.processors.breaker.config import BreakerConfigs
from llmpulse.processors.settings import Settings
from llmpulse.processors.stream import kafka, redis_client
from llmpulse.processors.stream.codec import encode
from llmpulse.schemas import serving
from llmpulse.schemas.events import BreakerAction, BreakerControl, BreakerSnapshot
from llmpulse.schemas.topics import BREAKER_CONTROL, BREAKER_STATE, topic_spec


def control_key(control: BreakerControl) -> bytes:
    """Kafka key of a control: its breaker's provider, the partition of its outcomes."""
    return breaker_provider(control.provider).encode()


def new_control(
    provider: str, action: BreakerAction, reason: str, until: datetime | None
) -> BreakerControl:
    """A validated control event sent now (``ValidationError`` names the bad field)."""
    return BreakerControl(
        event_id=uuid.uuid4(),
        event_time=datetime.now(UTC),
        provider=provider,
        action=action,
        reason=reason,
        until=until,
    )


async def send(settings: Settings, control: BreakerControl) -> None:
    """Produce ``control`` (acks=all) to its provider's partition."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic(BREAKER_CONTROL),
            encode(control),
            key=control_key(control),
        )
    finally:
        await producer.stop()


async def send_control(
    settings: Settings, provider: str, action: BreakerAction, reason: str, until: datetime | None
) -> BreakerControl:
    """Validate and produce one control event; returns it."""
    control = new_control(provider, action, reason, until)
    await send(settings, control)
    return control


async def status_from_redis(settings: Settings) -> list[BreakerSnapshot]:
    client = redis_client.connect(settings, socket_timeout=2)
    try:
        keys = [k async for k in client.scan_iter(serving.breaker_key(settings.topic_prefix, "*"))]
        out = []
        for key in sorted(keys):
            raw = await client.hget(key, "snapshot")
            try:
                out.append(BreakerSnapshot.model_validate_json(raw or b""))
            except ValidationError:
                # Not written by the agent (the view is rebuildable): say so, skip it.
                print(f"warning: ignoring invalid snapshot in {key.decode()}", file=sys.stderr)
        return out
    finally:
        await client.aclose()


async def status_from_topic(settings: Settings) -> list[BreakerSnapshot]:
    """Latest snapshot per provider from the compacted state topic."""
    spec = topic_spec(BREAKER_STATE)
    latest: dict[str, BreakerSnapshot] = {}
    for snap in await kafka.read_from_start(
        settings, settings.topic(BREAKER_STATE), spec.partitions, BreakerSnapshot
    ):
        if snap.version >= latest.get(snap.provider, snap).version:
            latest[snap.provider] = snap
    return [latest[k] for k in sorted(latest)]


async def status(settings: Settings) -> tuple[str, list[BreakerSnapshot]]:
    """(source, snapshots): Redis when reachable, else the state topic.

    Raises ``redis_client.RedisRefused`` when Redis refuses the credentials or TLS.
    """
    try:
        # In its own task: a failed redis-py connect can leave a pending
        # cancellation on the task that ran it.
        return "redis", await asyncio.create_task(status_from_redis(settings))
    except (aioredis.RedisError, OSError) as exc:
        redis_client.raise_if_refused(settings, exc)
    return "topic", await status_from_topic(settings)


async def is_known(settings: Settings, key: str) -> bool:
    """Whether breaker ``key`` is configured (breaker config file) or exists already.

    A control for any other key would start a new breaker (and metric series),
    which is what a typo in a provider name does: the command line asks for
    ``--create`` then.
    """
    if key in BreakerConfigs.load(settings.breaker_config_file).by_key:
        return True
    _source, snapshots = await status(settings)
    return any(s.provider == key for s in snapshots)
