"""The workers' and operator commands' Redis client, built in one place.

``Settings.redis_url`` is a secret (a ``rediss://user:password@...`` URL): it is
revealed here, to build the client, and nowhere else. TLS options ride in the
URL's query (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname``), which redis-py hands to its TLS connection.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from llmpulse.core.redis_refusal import refusal
from llmpulse.processors import addresses
from llmpulse.processors.errors import ServiceError
from llmpulse.processors.settings import ServiceAddressMissing, Settings


class RedisRefused(ServiceError):
    """Redis refused the configured credentials or TLS: fix LLMPULSE_REDIS_URL (exit 1)."""


def url(settings: Settings) -> SecretStr:
    """The Redis URL of ``settings``, still secret (e.g. for a ``GatewayConfig``).

    Workers never look up the local stack themselves: the CLI (or a test
    harness) fills the address in before it hands the settings down.
    """
    if not settings.redis_url:
        raise ServiceAddressMissing("redis_url")
    return settings.redis_url


def connect(settings: Settings, **options: Any) -> aioredis.Redis:
    """A client for ``settings.redis_url`` (``options`` go to ``Redis.from_url``)."""
    return aioredis.Redis.from_url(url(settings).get_secret_value(), **options)


def raise_if_refused(settings: Settings, exc: BaseException) -> None:
    """Raise ``RedisRefused`` (one line, password redacted) if ``exc`` is a refusal.

    An unreachable Redis returns: the caller decides whether to fall back.
    """
    reason = refusal(exc)
    if reason is not None:
        url = settings.redis_url.get_secret_value() if settings.redis_url else ""
        raise RedisRefused(
            f"Redis at {addresses.redacted(url)} (LLMPULSE_REDIS_URL) refused llmpulse: {reason}"
        ) from None


def log_failure(log: logging.Logger, exc: BaseException, meanwhile: str) -> None:
    """Log a failed Redis call of a worker, which carries on (Redis is a rebuildable view).

    An outage is a WARNING that clears by itself; a refusal (credentials, ACL, TLS)
    never does, so it is an ERROR naming the setting to fix. ``meanwhile`` says
    what the worker does instead (e.g. "snapshot v3 of openai deferred").
    """
    reason = refusal(exc)
    if reason is None:
        log.warning("redis unavailable, %s: %s", meanwhile, exc)
    else:
        log.error("Redis refused llmpulse (%s): fix LLMPULSE_REDIS_URL; %s", reason, meanwhile)
