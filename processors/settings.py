"""The one place llmpulse reads its configuration (and hands it to child processes).

Every value comes from an ``LLMPULSE_*`` environment variable or a ``.env`` file,
is validated once here, and is then passed down explicitly. No other module
reads ``os.environ``; the Faust app is created with ``env={}`` for the same reason.
"""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmpulse.processors.errors import ConfigError
from llmpulse.schemas.events import EventTimeBounds


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


class Settings(BaseSettings):
    """Validated configuration for every llmpulse command and worker.

    Service addresses left empty mean "use the local stack" that
    ``llmpulse stack up`` starts on free loopback ports; set them to use
    existing services instead (the local stack then leaves that service alone).
    """

    model_config = SettingsConfigDict(
        env_prefix="LLMPULSE_", env_file=".env", extra="forbid", frozen=True
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
    kafka_bootstrap: str | None = Field(default=None, description="host:port[,host:port]")
    redis_url: str | None = Field(default=None, description="redis://host:port/db")
    prometheus_url: str | None = Field(default=None, description="http://host:port")
    clickhouse_dsn: str | None = Field(
        default=None,
        description="chdb:///path (embedded, default <state_dir>/chdb) or http(s)://user:pw@host:port/db",
    )
    kafka_version: str = Field(default="4.1.1", pattern=r"^4\.\d+\.\d+$")
    test_services: Literal["local", "testcontainers"] = Field(
        default="local",
        description="Test fixtures start local processes, or testcontainers (needs Docker).",
    )

    # --- topics ----------------------------------------------------------------
    topic_prefix: str = Field(
        default="", pattern=r"^[A-Za-z0-9._-]*$", description="Prepended to every topic name."
    )
    topic_replication: int = Field(default=1, ge=1)

    # --- validation --------------------------------------------------------------
    event_max_past: timedelta = Field(default=timedelta(days=400))
    event_max_future: timedelta = Field(default=timedelta(minutes=5))
    dlq_max_consecutive: int = Field(
        default=1000,
        ge=1,
        description="Consecutive poison messages on one partition that stop the worker.",
    )

    # --- usage sink --------------------------------------------------------------
    consumer_group_prefix: str = Field(default="llmpulse", pattern=r"^[A-Za-z0-9._-]+$")
    sink_batch_max_rows: int = Field(default=5000, ge=1, le=1_000_000)
    sink_batch_max_seconds: float = Field(default=1.0, gt=0, le=60)
    sink_retry_max_seconds: float = Field(default=10.0, gt=0)

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
        pattern=r"^(|sink\.kill_after_insert:\d+)$",
        description="Test-only fault injection, e.g. sink.kill_after_insert:3 (SIGKILL after "
        "the 3rd acknowledged insert, before its offsets are committed).",
    )

    # --- breaker -------------------------------------------------------------------
    breaker_config_file: Path | None = Field(
        default=None, description="YAML with per-provider breaker settings (see README)."
    )
    breaker_tick_seconds: float = Field(default=0.5, gt=0, le=10)
    breaker_permit_ttl_seconds: float = Field(
        default=30.0, gt=0, description="Expiry of a half-open probe permit not released."
    )

    # --- prompt performance ------------------------------------------------------------
    prompt_windows: list[int] = Field(
        default=[60, 3600], min_length=1, description="Tumbling window sizes in seconds."
    )
    prompt_window_grace_seconds: float = Field(
        default=10.0, ge=0, description="Wait after a window ends before closing it."
    )
    prompt_partial_retention_seconds: float = Field(
        default=600.0,
        gt=60,
        description="How long a closed window's state is kept after it closed.",
    )

    # --- metrics -----------------------------------------------------------------
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port")
    metrics_org_label_limit: int = Field(default=50, ge=0)

    @model_validator(mode="after")
    def _bounds_positive(self) -> Settings:
        if self.event_max_past <= timedelta(0) or self.event_max_future < timedelta(0):
            raise ValueError("event_max_past must be > 0 and event_max_future >= 0")
        return self

    @property
    def chdb_dir(self) -> Path:
        """Data folder of the embedded chDB engine when no DSN is configured."""
        return self.state_dir / "chdb"

    @property
    def effective_clickhouse_dsn(self) -> str:
        """The configured DSN, or an embedded chDB one under ``state_dir``."""
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{self.chdb_dir.resolve()}"

    @property
    def event_time_bounds(self) -> EventTimeBounds:
        """Accepted event_time range relative to the validating clock."""
        return EventTimeBounds(max_past=self.event_max_past, max_future=self.event_max_future)

    def child_env(self, **extra: str) -> dict[str, str]:
        """Environment for an ``llmpulse`` child process on the same services.

        Starts from this process's environment without any ``LLMPULSE_*``
        variable, then sets the service addresses, topic prefix and state folder
        of these settings, then ``extra`` (``LLMPULSE_*`` names).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
        env["LLMPULSE_STATE_DIR"] = str(self.state_dir.resolve())
        env["LLMPULSE_TOPIC_PREFIX"] = self.topic_prefix
        for name in ("kafka_bootstrap", "redis_url", "prometheus_url"):
            value = getattr(self, name)
            if value:
                env[f"LLMPULSE_{name.upper()}"] = str(value)
        env.update(extra)
        return env

    def topic(self, name: str) -> str:
        """Qualified topic name for a registry name (applies ``topic_prefix``)."""
        return f"{self.topic_prefix}{name}"
