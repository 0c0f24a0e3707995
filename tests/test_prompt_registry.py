"""Prompt registry rules (pure): versions, weights, the remainder, the seed's activation bug."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llmpulse.core.registry import (
    PromptState,
    RegistryError,
    VersionRecord,
    fold,
    plan_activate,
    plan_create,
    plan_deactivate,
)
from llmpulse.schemas import PromptAction, PromptVersionEvent


class Log:
    """The registry topic in miniature: an ordered list of events and its fold."""

    def __init__(self, n_versions: int = 3) -> None:
        self.events: list[PromptVersionEvent] = []
        for v in range(1, n_versions + 1):
            self.apply(
                plan_create(
                    self.state, "greet", VersionRecord(v, f"Hello v{v}", temperature=Decimal("0.7"))
                )
            )

    @property
    def state(self) -> dict[str, PromptState]:
        return fold(self.events)

    def apply(self, events: list[PromptVersionEvent]) -> dict[str, PromptState]:
        self.events += events
        return self.state


def _registry(n_versions: int = 3) -> dict[str, PromptState]:
    return Log(n_versions).state


def test_versions_increase_by_one() -> None:
    state = _registry(2)
    with pytest.raises(RegistryError, match="next is 3"):
        plan_create(state, "greet", VersionRecord(5, "x"))
    with pytest.raises(RegistryError, match="next is 3"):
        plan_create(state, "greet", VersionRecord(2, "x"))
    with pytest.raises(RegistryError, match="next is 1"):
        plan_create(state, "other", VersionRecord(2, "x"))


def test_temperature_bounds() -> None:
    with pytest.raises(RegistryError, match="temperature 3 is outside 0 to 2"):
        plan_create({}, "p", VersionRecord(1, "x", temperature=Decimal(3)))


def test_activate_without_weight_is_the_only_active_and_stays_active() -> None:
    log = Log(3)
    log.apply(plan_activate(log.state, "greet", 1, None))
    log.apply(plan_activate(log.state, "greet", 2, Decimal("0.3")))
    events = plan_activate(log.state, "greet", 3, None)
    assert [(e.version, e.action) for e in events] == [
        (1, PromptAction.deactivated),
        (2, PromptAction.deactivated),
        (3, PromptAction.activated),
    ]
    state = log.apply(events)
    assert [v.version for v in state["greet"].active()] == [3]
    assert state["greet"].effective_weights() == {3: Decimal(1)}


def test_remainder_goes_to_the_primary_version() -> None:
    log = Log(3)
    log.apply(plan_activate(log.state, "greet", 1, None))
    log.apply(plan_activate(log.state, "greet", 2, Decimal("0.2")))
    state = log.apply(plan_activate(log.state, "greet", 3, Decimal("0.3")))
    assert state["greet"].effective_weights() == {
        1: Decimal("0.5"),
        2: Decimal("0.2"),
        3: Decimal("0.3"),
    }


def test_without_primary_weights_are_scaled_to_one() -> None:
    log = Log(2)
    log.apply(plan_activate(log.state, "greet", 1, Decimal("0.2")))
    state = log.apply(plan_activate(log.state, "greet", 2, Decimal("0.2")))
    assert state["greet"].effective_weights() == {1: Decimal("0.5"), 2: Decimal("0.5")}


@pytest.mark.parametrize(
    ("version", "weight", "message"),
    [
        (2, Decimal("1.5"), "weight 1.5 is outside 0 to 1"),
        (2, Decimal("-0.1"), "outside 0 to 1"),
        (9, Decimal("0.1"), "has no version 9"),
    ],
)
def test_invalid_activation(version: int, weight: Decimal, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        plan_activate(_registry(3), "greet", version, weight)


def test_weights_sum_at_most_one() -> None:
    log = Log(3)
    state = log.apply(plan_activate(log.state, "greet", 1, Decimal("0.6")))
    with pytest.raises(RegistryError, match=r"sum to 1\.1"):
        plan_activate(state, "greet", 2, Decimal("0.5"))
    # Re-weighting an active version replaces its own weight.
    assert plan_activate(state, "greet", 1, Decimal("0.9"))


def test_unknown_prompt_and_deactivate_rules() -> None:
    with pytest.raises(RegistryError, match="unknown prompt 'nope'"):
        plan_activate(_registry(1), "nope", 1, None)
    with pytest.raises(RegistryError, match="is not active"):
        plan_deactivate(_registry(1), "greet", 1)


def test_every_event_carries_the_full_record() -> None:
    state = _registry(1)
    [event] = plan_activate(state, "greet", 1, Decimal("0.5"))
    assert event.content == "Hello v1"
    assert event.temperature == Decimal("0.7")
