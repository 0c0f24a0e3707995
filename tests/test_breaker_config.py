"""Breaker configuration file: presets, per-provider and per-model breakers, clear errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llmpulse.core.breaker import BreakerConfig
from llmpulse.processors.breaker.config import BreakerConfigError, BreakerConfigs
from llmpulse.processors.breaker.ops import control_key
from llmpulse.schemas.events import BreakerAction, BreakerControl


def _load(tmp_path: Path, text: str) -> BreakerConfigs:
    path = tmp_path / "b.yaml"
    path.write_text(text)
    return BreakerConfigs.load(path)


def test_no_file_means_defaults() -> None:
    configs = BreakerConfigs.load(None)
    assert configs.config_for("anything") == BreakerConfig()
    assert configs.key_for("openai", "gpt-4o") == "openai"


def test_seed_preset_default_and_overrides(tmp_path: Path) -> None:
    configs = _load(
        tmp_path,
        "default: {preset: seed}\n"
        "providers:\n"
        "  openai: {open_seconds: 30, open_max_seconds: 30}\n"
        "  openai/gpt-4o: {consecutive_failures: 3}\n",
    )
    seed = BreakerConfig.seed_preset()
    assert configs.config_for("anthropic") == seed
    assert configs.config_for("openai").open_seconds == 30
    assert configs.config_for("openai").consecutive_failures == seed.consecutive_failures
    # A provider/model entry is its own breaker; other models share the provider's.
    assert configs.key_for("openai", "gpt-4o") == "openai/gpt-4o"
    assert configs.key_for("openai", "gpt-4o-mini") == "openai"
    assert configs.config_for("openai/gpt-4o").consecutive_failures == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default: {preset: fast}\n", "unknown preset"),
        ("default: {open_seconds: -1}\n", "must be > 0"),
        ("providers:\n  openai: {failure_rate: 0.5}\n", "unknown setting"),
        ("providers:\n  openai: {failure_rate_threshold: 1.5}\n", "rate thresholds"),
        ("other: {}\n", "top-level keys"),
        ("default: [1, 2]\n", "expected a mapping"),
    ],
)
def test_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BreakerConfigError, match=message):
        _load(tmp_path, text)


def test_a_per_model_control_is_keyed_to_its_provider_partition() -> None:
    # Outcomes are keyed by provider: a control keyed by "openai/gpt-own" would go to
    # another partition (and worker) than the outcomes of the breaker it controls.
    def control(key: str) -> BreakerControl:
        return BreakerControl(
            event_id=uuid.uuid4(),
            event_time=datetime.now(UTC),
            provider=key,
            action=BreakerAction.force_open,
            reason="test",
        )

    assert control_key(control("openai/gpt-own")) == b"openai"
    assert control_key(control("openai")) == b"openai"
