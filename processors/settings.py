"""The one place llmpulse reads its configuration (and hands it to child processes).

Every value comes from an ``LLMPULSE_*`` environment variable or a ``.env`` file,
is validated once here, and is then passed down explicitly. No other module
reads ``os.environ``; the Faust app is created with ``env={}`` for the same reason.

Every value is bounded when it loads (a number to a finite, sane range, a
duration so that ``now`` plus or minus it is a date, an address to its shape),
so a typo fails the command at once, naming the variable, instead of crashing a
worker later. The ``.env`` file is shared with other tools (Docker Compose reads
it too): names that are not ``LLMPULSE_*`` are left alone, and an unknown
``LLMPULSE_*`` name, there or in the environment, is a warning (a typo of a
real name would otherwise be silently ignored).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from llmpulse.core.kafka_security import ENV_VARS as KAFKA_SECURITY_VARS
from llmpulse.core.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol
from llmpulse.processors import addresses
from llmpulse.processors.errors import ConfigError
from llmpulse.schemas.events import EventTimeBounds

log = logging.getLogger(__name__)

PREFIX = "LLMPULSE_"
#: ``LLMPULSE_GATEWAY_*`` belong to the gateway SDK, which validates them itself
#: (``llmpulse.gateway.config``); they are neither read nor warned about here.
GATEWAY_PREFIX = "LLMPULSE_GATEWAY_"

#: A rollup window: whole seconds, from one second to one day (a JSON ``60.0`` or
#: ``true`` is refused, not rounded).
WindowSeconds = Annotated[int, Field(strict=True, ge=1, le=86_400)]


class ServiceAddressMissing(ConfigError, RuntimeError):
    """A worker was handed settings without the address of a service it needs.

    The CLI fills empty addresses in from the local stack before it starts a
    worker; code that builds ``Settings`` itself must do the same.
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f"LLMPULSE_{name.upper()} is not set and no local stack address was filled in "
            "(run `llmpulse stack up`, or set it)"
        )
        self.setting = name


def _security_field(field: str) -> str:
    """The ``Settings`` field of a ``KafkaSecurity`` field (its variable without the prefix)."""
    return KAFKA_SECURITY_VARS[field].removeprefix(PREFIX).lower()


class Settings(BaseSettings):
    """Validated configuration for every llmpulse command and worker.

    Service addresses left empty mean "use the local stack" that
    ``llmpulse stack up`` starts on free loopback ports; set them to use
    existing services instead (the local stack then leaves that service alone).
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_file=".env", extra="forbid", frozen=True, allow_inf_nan=False
    )

    # --- where things live -------------------------------------------------
    state_dir: Path = Field(
        default=Path(".llmpulse"),
        description="Local stack data, logs, pid files and the chDB data folder.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "llmpulse",
        description="Downloaded Kafka jars (kept outside the repository).",
    )

    # --- services (empty = local stack) ------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, max_length=4096, description="host:port[,host:port]"
    )
    # Secrets (a URL or DSN may carry a password): repr, str and logs show ``**********``;
    # ``get_secret_value()`` only where a client is built, ``addresses.redacted`` in messages.
    redis_url: SecretStr | None = Field(
        default=None,
        max_length=4096,
        description="redis://host:port/db, or rediss://user:pw@host:port/db?ssl_ca_certs=/ca.pem",
    )
    prometheus_url: str | None = Field(
        default=None, max_length=4096, description="http://host:port"
    )
    clickhouse_dsn: SecretStr | None = Field(
        default=None,
        max_length=4096,
        description="chdb:///path (embedded, default <state_dir>/chdb) or http(s)://user:pw@host:port/db",
    )
    kafka_version: str = Field(default="4.1.1", pattern=r"^4\.\d+\.\d+$")
    test_services: Literal["local", "testcontainers"] = Field(
        default="local",
        description="Test fixtures start local processes, or testcontainers (needs Docker).",
    )

    # --- Kafka security (checked together: llmpulse.core.kafka_security) ----------
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)"
    )
    kafka_sasl_username: str | None = Field(default=None, max_length=1024)
    # Unbounded: pydantic's length error would quote the start of the password.
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = Field(
        default=None, description="PEM CA certificates of the brokers (default: the system's)"
    )
    kafka_ssl_cert_file: Path | None = Field(
        default=None, description="PEM client certificate (mutual TLS), with the key file"
    )
    kafka_ssl_key_file: Path | None = Field(default=None, description="its unencrypted PEM key")
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="Verify that the broker's certificate names its host."
    )

    # --- topics ----------------------------------------------------------------
    # At most 100 characters: Kafka refuses topic names over 249, and the longest
    # name built on the prefix (a table changelog's) adds about 50.
    topic_prefix: str = Field(
        default="",
        max_length=100,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prepended to every topic name.",
    )
    topic_replication: int = Field(default=1, ge=1, le=32_767)  # Kafka's int16

    # --- validation --------------------------------------------------------------
    # Bounded so that ``now`` minus / plus them stays a date (an overflow would
    # crash the decoder instead of dead-lettering the event).
    event_max_past: timedelta = Field(
        default=timedelta(days=400), gt=timedelta(0), le=timedelta(days=3660)
    )
    event_max_future: timedelta = Field(
        default=timedelta(minutes=5), ge=timedelta(0), le=timedelta(days=1)
    )
    dlq_max_consecutive: int = Field(
        default=1000,
        ge=1,
        le=1_000_000_000,
        description="Consecutive poison messages on one partition that stop the worker.",
    )

    # --- usage sink --------------------------------------------------------------
    consumer_group_prefix: str = Field(
        default="llmpulse", max_length=100, pattern=r"^[A-Za-z0-9._-]+$"
    )
    # Measured (bench.sink_throughput, worker process): 10,000 rows ran 1.2x the rate of
    # 5,000 (each insert has a fixed cost in the engine) for +25 MB peak RSS; 20,000, 1.3x
    # for +70 MB, past the 600 MB budget of a sink with embedded chDB.
    sink_batch_max_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    sink_batch_max_seconds: float = Field(default=1.0, ge=0.01, le=60)
    sink_retry_max_seconds: float = Field(default=10.0, ge=0.01, le=600)

    # --- billing -------------------------------------------------------------------
    chargeback_default_rate: Decimal = Field(
        default=Decimal("1.2"),
        ge=0,
        le=100,
        decimal_places=4,
        description="Chargeback multiplier of organizations without a chargeback_rates row.",
    )

    failpoint: str = Field(
        default="",
        pattern=r"^(|sink\.kill_after_insert:\d{1,9})$",
        description="Test-only fault injection, e.g. sink.kill_after_insert:3 (SIGKILL after "
        "the 3rd acknowledged insert, before its offsets are committed).",
    )

    # --- breaker -------------------------------------------------------------------
    breaker_config_file: Path | None = Field(
        default=None, description="YAML with per-provider breaker settings (see README)."
    )
    breaker_tick_seconds: float = Field(default=0.5, ge=0.01, le=10)

    # --- prompt performance ------------------------------------------------------------
    prompt_windows: list[WindowSeconds] = Field(
        default=[60, 3600],
        min_length=1,
        max_length=10,
        description="Tumbling window sizes in seconds (a JSON list of distinct whole seconds).",
    )
    prompt_window_grace_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="Wait after a window ends before closing it."
    )
    prompt_partial_retention_seconds: float = Field(
        default=600.0,
        gt=60,
        le=86_400,
        description="How long a closed window's state is kept after it closed.",
    )

    # --- metrics -----------------------------------------------------------------
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port")
    metrics_org_label_limit: int = Field(default=50, ge=0, le=10_000)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The default sources, with the environment and ``.env`` read by ``_EnvNames``."""
        env_file = getattr(dotenv_settings, "env_file", cls.model_config.get("env_file"))
        return (
            init_settings,
            _EnvNames(settings_cls),
            _DotEnvNames(settings_cls, env_file=env_file),
            file_secret_settings,
        )

    @field_validator("prompt_windows", mode="before")
    @classmethod
    def _windows_json(cls, value: Any) -> Any:
        # A string here is a value that was not JSON (``_EnvNames`` passes it on).
        if isinstance(value, str):
            raise ValueError("not a JSON list of whole seconds, e.g. [60, 3600]")
        return value

    @field_validator("prompt_windows")
    @classmethod
    def _windows_distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("window sizes must be distinct")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _kafka_bootstrap(cls, value: str | None) -> str | None:
        return value and addresses.kafka_bootstrap(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value:
            addresses.redis_url(value.get_secret_value())
        return value

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus_url(cls, value: str | None) -> str | None:
        return value and addresses.prometheus_url(value)

    @field_validator("clickhouse_dsn")
    @classmethod
    def _clickhouse_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value:
            addresses.clickhouse_dsn(value.get_secret_value())
        return value

    @field_validator(*(_security_field(f) for f in KAFKA_SECURITY_VARS), mode="before")
    @classmethod
    def _kafka_empty_is_unset(cls, value: Any) -> Any:
        # An empty variable is an unset one (KafkaSecurity reads them alike).
        return None if value == "" else value

    @model_validator(mode="after")
    def _kafka_security_valid(self) -> Settings:
        self.kafka_security  # noqa: B018 (raises on settings that cannot work together)
        return self

    @property
    def kafka_security(self) -> KafkaSecurity:
        """The Kafka clients' security, from the ``kafka_security_protocol`` to ``kafka_ssl_*``.

        Checked when the settings load: settings that cannot work together raise
        a ``ValidationError`` located at the field at fault, so the command line
        names its ``LLMPULSE_*`` variable.
        """
        values = {field: getattr(self, _security_field(field)) for field in KAFKA_SECURITY_VARS}
        try:
            return KafkaSecurity(**values)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(e["type"], e["msg"]),
                        loc=(_security_field(str(e["loc"][0])),),
                        input=None,
                    )
                    for e in exc.errors(include_input=False, include_url=False)
                ],
            ) from None

    @property
    def chdb_dir(self) -> Path:
        """Data folder of the embedded chDB engine when no DSN is configured."""
        return self.state_dir / "chdb"

    @property
    def effective_clickhouse_dsn(self) -> str:
        """The configured DSN, or an embedded chDB one under ``state_dir``.

        Revealed (a server DSN may hold a password): hand it to a client, and to
        a message only through ``addresses.redacted``.
        """
        if self.clickhouse_dsn:
            return self.clickhouse_dsn.get_secret_value()
        return f"chdb://{self.chdb_dir.resolve()}"

    @property
    def event_time_bounds(self) -> EventTimeBounds:
        """Accepted event_time range relative to the validating clock."""
        return EventTimeBounds(max_past=self.event_max_past, max_future=self.event_max_future)

    def child_env(self, **extra: str) -> dict[str, str]:
        """Environment for an ``llmpulse`` child process on the same services.

        Starts from this process's environment without any ``LLMPULSE_*``
        variable, then sets the service addresses, Kafka security settings,
        topic prefix and state folder of these settings, then ``extra``
        (``LLMPULSE_*`` names). Holds the passwords in clear text (the child needs
        them): never log it.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
        env["LLMPULSE_STATE_DIR"] = str(self.state_dir.resolve())
        env["LLMPULSE_TOPIC_PREFIX"] = self.topic_prefix
        for name in ("kafka_bootstrap", "redis_url", "prometheus_url"):
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()  # the child needs the password itself
            if value:
                env[f"LLMPULSE_{name.upper()}"] = value
        env.update(self.kafka_security.environment())
        env.update(extra)
        return env

    def topic(self, name: str) -> str:
        """Qualified topic name for a registry name (applies ``topic_prefix``)."""
        return f"{self.topic_prefix}{name}"


class _EnvNames(EnvSettingsSource):
    """The environment as pydantic-settings reads it, plus two guards.

    A value of a list setting that is not JSON reaches validation as it is (a
    ``ValidationError`` naming the variable) instead of pydantic-settings'
    ``SettingsError``; every unknown ``LLMPULSE_*`` name is logged as a warning.
    """

    where = "the environment"

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value

    def __call__(self) -> dict[str, Any]:
        for name, hint in unknown_names(self.env_vars):
            also = f"; did you mean {hint}?" if hint else ""
            log.warning("unknown setting %s in %s is ignored%s", name, self.where, also)
        return super().__call__()


class _DotEnvNames(_EnvNames, DotEnvSettingsSource):
    """``.env`` values of ``Settings`` fields only: other tools' names in the file are ignored."""

    where = ".env"

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {name: value for name, value in super().__call__().items() if name in fields}


def unknown_names(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """``(NAME, closest known name or None)`` of each ``LLMPULSE_*`` name no setting has.

    Case-insensitive, as the settings are read; ``LLMPULSE_GATEWAY_*`` are the
    gateway's.
    """
    known = [field.upper() for field in Settings.model_fields]
    unknown = []
    for name in sorted({n.upper() for n in names}):
        rest = name.removeprefix(PREFIX)
        if name.startswith(PREFIX) and not name.startswith(GATEWAY_PREFIX) and rest not in known:
            close = difflib.get_close_matches(rest, known, n=1, cutoff=0.75)
            unknown.append((name, f"{PREFIX}{close[0]}" if close else None))
    return unknown
