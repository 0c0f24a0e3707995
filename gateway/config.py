"""Configuration of the gateway SDK (one object, passed down; no environment lookups)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class GatewayConfig(BaseModel):
    """Where the gateway finds Kafka and Redis, and its timing bounds.

    ``topic_prefix`` must match the processors' ``LLMPULSE_TOPIC_PREFIX`` (it
    prefixes topic names and Redis keys alike).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    topic_prefix: str = ""
    instance_id: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default_factory=_default_instance
    )
    #: Directory of the emitter's disk spool (events Kafka could not take yet).
    spool_dir: Path = Path(".llmpulse-spool")
    #: Capacity of the emitter's in-memory queue; beyond it events go to the spool.
    emit_queue_size: Annotated[int, Field(ge=1)] = 10_000
    #: A cached breaker snapshot is re-read from Redis at least this often
    #: (pub/sub normally delivers changes sooner).
    snapshot_refresh_seconds: Annotated[float, Field(gt=0)] = 1.0
    #: A shared view not confirmed by Redis for this long is stale: the local
    #: in-process breaker decides instead.
    snapshot_stale_seconds: Annotated[float, Field(gt=0)] = 3.0
    #: Expiry of a half-open probe permit that is never released.
    permit_ttl_ms: Annotated[int, Field(ge=100)] = 30_000
    #: Redis socket timeout: a hung Redis must not hold a request longer than this.
    redis_timeout_seconds: Annotated[float, Field(gt=0)] = 0.25

    def topic(self, name: str) -> str:
        """Qualified topic name (applies ``topic_prefix``)."""
        return f"{self.topic_prefix}{name}"


def redis_client(config: GatewayConfig) -> aioredis.Redis:
    """A Redis client that fails fast: a down Redis must not stall requests.

    Short socket timeouts and no client-side retries: the breaker view falls back
    to local breakers and the prompt selector to its cached view instead.
    """
    timeout = config.redis_timeout_seconds
    return aioredis.Redis.from_url(
        config.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
