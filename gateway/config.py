"""Configuration of the gateway SDK (one object, passed down).

The environment is read in one place only, :meth:`GatewayConfig.from_env`, with
the same ``LLMPULSE_*`` names the workers read (``llmpulse.processors.settings``)
and ``LLMPULSE_GATEWAY_*`` names for the gateway's own knobs. It is read by hand,
not with pydantic-settings, because the light install (``pip install llmpulse``)
does not have it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmpulse.core.kafka_security import ENV_VARS as KAFKA_SECURITY_VARS
from llmpulse.core.kafka_security import KafkaSecurity
from llmpulse.gateway.exceptions import ConfigError

__all__ = ["ENV_VARS", "GatewayConfig", "redis_client"]


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


#: The environment variable of each ``GatewayConfig`` field (``GatewayConfig.from_env``).
#: The first three are the workers' own names, so one environment serves both.
ENV_VARS: Mapping[str, str] = {
    "bootstrap_servers": "LLMPULSE_KAFKA_BOOTSTRAP",
    "redis_url": "LLMPULSE_REDIS_URL",
    "topic_prefix": "LLMPULSE_TOPIC_PREFIX",
    "instance_id": "LLMPULSE_GATEWAY_INSTANCE_ID",
    "spool_dir": "LLMPULSE_GATEWAY_SPOOL_DIR",
    "emit_queue_size": "LLMPULSE_GATEWAY_EMIT_QUEUE_SIZE",
    "snapshot_refresh_seconds": "LLMPULSE_GATEWAY_SNAPSHOT_REFRESH_SECONDS",
    "snapshot_stale_seconds": "LLMPULSE_GATEWAY_SNAPSHOT_STALE_SECONDS",
    "permit_ttl_ms": "LLMPULSE_GATEWAY_PERMIT_TTL_MS",
    "redis_timeout_seconds": "LLMPULSE_GATEWAY_REDIS_TIMEOUT_SECONDS",
}
_GATEWAY_PREFIX = "LLMPULSE_GATEWAY_"


def _config_error(exc: ValidationError, what: str, names: Mapping[str, str]) -> ConfigError:
    """One ``ConfigError`` naming each setting at fault (``names[field]`` or the field).

    Input values are left out on purpose: a Redis URL can carry a password.
    """
    settings, parts = [], []
    for err in exc.errors(include_url=False, include_input=False):
        field = str(err["loc"][0]) if err["loc"] else "<config>"
        name = names.get(field, field)
        if err["type"] == "missing":
            parts.append(f"{name} is not set")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{name} is not a gateway setting")
        else:
            parts.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        settings.append(name)
    return ConfigError(f"invalid gateway {what}: " + "; ".join(parts), names=settings)


class GatewayConfig(BaseModel):
    """Where the gateway finds Kafka and Redis, and its timing bounds.

    ``topic_prefix`` must match the processors' ``LLMPULSE_TOPIC_PREFIX`` (it
    prefixes topic names and Redis keys alike). Constructing one with an invalid
    value raises :class:`~llmpulse.gateway.exceptions.ConfigError` naming the
    field (never pydantic's ``ValidationError``). Frozen: pass it down as is.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: Annotated[str, Field(min_length=1)]
    #: A secret (it may carry ``user:password@``): shown as ``**********``, revealed
    #: only by :func:`redis_client`. ``rediss://`` takes TLS options in its query
    #: (``?ssl_ca_certs=/path/ca.pem``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``).
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # The workers' rule (processors.settings.Settings.topic_prefix): a prefix they
    # would refuse could never meet the gateway's topics and keys.
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]*$")] = ""
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
    #: How the emitter's producer authenticates (the workers' ``LLMPULSE_KAFKA_*``
    #: security settings); plaintext by default.
    kafka_security: KafkaSecurity = KafkaSecurity()

    if not TYPE_CHECKING:
        # Hidden from type checkers so the pydantic plugin keeps the typed
        # keyword signature; at run time a ValidationError becomes ConfigError.
        def __init__(self, /, **data: Any) -> None:
            self._validate(data, "configuration", {})

    def _validate(self, data: Mapping[str, Any], what: str, names: Mapping[str, str]) -> None:
        # BaseModel.__init__ directly: pydantic runs an overridden __init__ inside
        # its own validation and would wrap our ConfigError in a ValidationError.
        try:
            BaseModel.__init__(self, **data)
        except ValidationError as exc:
            raise _config_error(exc, what, names) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """The configuration from ``LLMPULSE_*`` variables (``os.environ`` by default).

        One variable per field (``ENV_VARS``); an unset or empty variable keeps the
        field's default:

        ============================================  ==========================  ==========
        variable                                      field                       default
        ============================================  ==========================  ==========
        ``LLMPULSE_KAFKA_BOOTSTRAP`` (required)       bootstrap_servers           none
        ``LLMPULSE_REDIS_URL``                        redis_url                   redis://127.0.0.1:6379/0
        ``LLMPULSE_TOPIC_PREFIX``                     topic_prefix                ""
        ``LLMPULSE_GATEWAY_INSTANCE_ID``              instance_id                 host-pid
        ``LLMPULSE_GATEWAY_SPOOL_DIR``                spool_dir                   .llmpulse-spool
        ``LLMPULSE_GATEWAY_EMIT_QUEUE_SIZE``          emit_queue_size             10000
        ``LLMPULSE_GATEWAY_SNAPSHOT_REFRESH_SECONDS`` snapshot_refresh_seconds    1.0
        ``LLMPULSE_GATEWAY_SNAPSHOT_STALE_SECONDS``   snapshot_stale_seconds      3.0
        ``LLMPULSE_GATEWAY_PERMIT_TTL_MS``            permit_ttl_ms               30000
        ``LLMPULSE_GATEWAY_REDIS_TIMEOUT_SECONDS``    redis_timeout_seconds       0.25
        ``LLMPULSE_KAFKA_SECURITY_PROTOCOL``          kafka_security.protocol     PLAINTEXT
        ``LLMPULSE_KAFKA_SASL_MECHANISM``             kafka_security.sasl_mech... none
        ``LLMPULSE_KAFKA_SASL_USERNAME``              kafka_security.username     none
        ``LLMPULSE_KAFKA_SASL_PASSWORD``              kafka_security.password     none
        ``LLMPULSE_KAFKA_SSL_CA_FILE``                kafka_security.ca_file      system CAs
        ``LLMPULSE_KAFKA_SSL_CERT_FILE``              kafka_security.cert_file    none
        ``LLMPULSE_KAFKA_SSL_KEY_FILE``               kafka_security.key_file     none
        ``LLMPULSE_KAFKA_SSL_CHECK_HOSTNAME``         kafka_security.check_hos... true
        ============================================  ==========================  ==========

        The first three and the Kafka security variables
        (``llmpulse.core.kafka_security.ENV_VARS``, checked together by
        ``KafkaSecurity``) are the workers' own variables, so one environment
        configures both. Other ``LLMPULSE_*`` variables (the workers') are
        ignored; an unknown ``LLMPULSE_GATEWAY_*`` variable (a typo) is an error.
        Raises :class:`~llmpulse.gateway.exceptions.ConfigError` naming every
        variable at fault (``names``) when the bootstrap servers are not set or a
        value is invalid. Reads the mapping once; its only I/O checks that the
        Kafka TLS files it names are readable.
        """
        env = os.environ if environ is None else environ
        unknown = sorted(
            name
            for name in env
            if name.startswith(_GATEWAY_PREFIX) and name not in ENV_VARS.values()
        )
        if unknown:
            known = [v for v in ENV_VARS.values() if v.startswith(_GATEWAY_PREFIX)]
            raise ConfigError(
                f"unknown gateway setting {', '.join(unknown)} (known: {', '.join(known)})",
                names=unknown,
            )
        data: dict[str, Any] = {field: env[var] for field, var in ENV_VARS.items() if env.get(var)}
        security = {f: env[var] for f, var in KAFKA_SECURITY_VARS.items() if env.get(var)}
        try:
            data["kafka_security"] = KafkaSecurity.model_validate(security)
        except ValidationError as exc:
            raise _config_error(exc, "environment", KAFKA_SECURITY_VARS) from None
        config = cls.__new__(cls)
        config._validate(data, "environment", ENV_VARS)
        return config

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
        config.redis_url.get_secret_value(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
