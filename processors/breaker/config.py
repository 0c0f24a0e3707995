"""Breaker configuration per provider (or per provider and model) from a YAML file.

    default: {preset: seed}            # or any BreakerConfig field
    providers:
      openai: {failure_rate_threshold: 0.5, minimum_calls: 20, open_seconds: 30}
      openai/gpt-4o: {consecutive_failures: 3}   # a separate breaker for this model

Without a file every provider uses ``BreakerConfig()``. A ``provider/model``
entry gives that model its own breaker (key ``provider/model``); other models
of the provider share the provider's breaker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from llmpulse.core.breaker import BreakerConfig, breaker_key
from llmpulse.processors.errors import InputError


class BreakerConfigError(InputError, ValueError):
    """The breaker configuration file is missing or invalid (one-line message, exit 2)."""


@cache
def _schema() -> type[BaseModel]:
    """Strict pydantic model of the ``BreakerConfig`` fields, derived from the dataclass.

    Strict, because YAML guesses types: ``open_seconds: yes`` is a boolean,
    ``minimum_calls: 20.7`` a float and ``"20"`` a string, and none of them is
    what the setting means. Infinity and NaN are refused too.
    """
    hints = get_type_hints(BreakerConfig)
    definitions: dict[str, Any] = {
        f.name: (hints[f.name], f.default) for f in fields(BreakerConfig)
    }
    return create_model(
        "BreakerConfigFile", __config__=ConfigDict(strict=True, allow_inf_nan=False), **definitions
    )


def _build(raw: Any, where: str, base: BreakerConfig | None = None) -> BreakerConfig:
    if not isinstance(raw, dict):
        raise BreakerConfigError(f"{where}: expected a mapping of settings")
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset not in (None, "seed", "default"):
        raise BreakerConfigError(f"{where}: unknown preset {preset!r} (seed or default)")
    start = BreakerConfig.seed_preset() if preset == "seed" else (base or BreakerConfig())
    known = {f.name for f in fields(BreakerConfig)}
    unknown = set(raw) - known
    if unknown:
        raise BreakerConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    try:
        checked = _schema().model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        setting = ".".join(map(str, first["loc"]))
        raise BreakerConfigError(f"{where}: {setting}: {first['msg']}") from None
    values = {f.name: getattr(start, f.name) for f in fields(BreakerConfig)}
    values.update({name: getattr(checked, name) for name in raw})
    try:
        return BreakerConfig(**values)
    except ValueError as exc:  # the rules across settings (BreakerConfig.__post_init__)
        raise BreakerConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class BreakerConfigs:
    """Lookup of the breaker key and configuration for an outcome."""

    default: BreakerConfig = field(default_factory=BreakerConfig)
    by_key: dict[str, BreakerConfig] = field(default_factory=dict)

    def key_for(self, provider: str, model: str) -> str:
        """Breaker key: ``provider/model`` when configured per model, else ``provider``
        (the rule is ``llmpulse.core.breaker.breaker_key``)."""
        # by_key holds the provider keys too; none of them contains "/", so only a
        # per-model entry can match (and a dict lookup keeps the hot path O(1)).
        return breaker_key(provider, model, self.by_key)

    def model_keys(self) -> list[str]:
        """The ``provider/model`` keys configured with a breaker of their own."""
        return sorted(key for key in self.by_key if "/" in key)

    def config_for(self, key: str) -> BreakerConfig:
        return self.by_key.get(key, self.default)

    @classmethod
    def load(cls, path: Path | None) -> BreakerConfigs:
        if path is None:
            return cls()
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise BreakerConfigError(f"cannot read breaker config {path}: {detail}") from None
        if not isinstance(doc, dict) or set(doc) - {"default", "providers"}:
            raise BreakerConfigError(f"{path.name}: top-level keys are default and providers")
        default = _build(doc.get("default", {}), f"{path.name}: default")
        providers = doc.get("providers", {}) or {}
        if not isinstance(providers, dict):
            raise BreakerConfigError(f"{path.name}: providers must be a mapping")
        by_key = {
            str(k): _build(v, f"{path.name}: providers.{k}", default) for k, v in providers.items()
        }
        return cls(default, by_key)
