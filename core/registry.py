"""Prompt registry: fold ``llm.prompt-versions.v1`` into state, validate changes (pure).

Rules (the seed's ``activateVersion`` without a weight deactivated every version,
including the one being activated, which its own CHECK then rejected):

* versions of a prompt are 1, 2, 3, ... (a new version is always latest + 1);
* temperature is 0 to 2, an A/B weight 0 to 1;
* ``activate`` without a weight makes that version the only active one (the
  others are deactivated first, in the same ordered batch of events);
* ``activate`` with a weight adds the version to the A/B test; the explicit
  weights of active versions may sum to at most 1;
* the remainder (1 minus the explicit weights) goes to the active version that
  was activated without a weight (the primary), if there is one; otherwise the
  explicit weights are scaled up proportionally so they sum to 1.

Every event carries the version's full record (content and settings), because
the topic is compacted per ``prompt_name@version`` and only the latest record of
each version survives.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from llmpulse.schemas.events import PromptAction, PromptVersionEvent


class RegistryError(ValueError):
    """An invalid registry command (one-line message; nothing is written)."""


@dataclass(frozen=True)
class VersionRecord:
    version: int
    content: str
    system_message: str | None = None
    temperature: Decimal | None = None
    max_tokens: int | None = None
    model: str | None = None
    tags: tuple[str, ...] = ()
    active: bool = False
    weight: Decimal | None = None  # None while active = primary (gets the remainder)


@dataclass
class PromptState:
    name: str
    versions: dict[int, VersionRecord] = field(default_factory=dict)

    @property
    def latest(self) -> int:
        return max(self.versions, default=0)

    def active(self) -> list[VersionRecord]:
        return [v for _, v in sorted(self.versions.items()) if v.active]

    def effective_weights(self) -> dict[int, Decimal]:
        """Traffic share per active version (sums to 1 when anything is active)."""
        active = self.active()
        if not active:
            return {}
        explicit = {v.version: v.weight for v in active if v.weight is not None}
        primary = [v.version for v in active if v.weight is None]
        total = sum(explicit.values(), Decimal(0))
        shares = dict(explicit)
        if primary:
            shares[primary[0]] = Decimal(1) - total
        elif total > 0:
            shares = {k: w / total for k, w in explicit.items()}
        else:  # every active version weighted 0: equal split
            shares = {k: Decimal(1) / len(explicit) for k in explicit}
        return shares


def fold(events: Iterable[PromptVersionEvent]) -> dict[str, PromptState]:
    """Registry state after ``events`` in topic order."""
    state: dict[str, PromptState] = {}
    for e in events:
        prompt = state.setdefault(e.prompt_name, PromptState(e.prompt_name))
        prompt.versions[e.version] = VersionRecord(
            version=e.version,
            content=e.content or "",
            system_message=e.system_message,
            temperature=e.temperature,
            max_tokens=e.max_tokens,
            model=e.model,
            tags=e.tags,
            active=e.action is PromptAction.activated,
            weight=e.ab_weight if e.action is PromptAction.activated else None,
        )
    return state


def _event(
    name: str, rec: VersionRecord, action: PromptAction, now: datetime
) -> PromptVersionEvent:
    return PromptVersionEvent(
        event_id=uuid.uuid4(),
        event_time=now,
        prompt_name=name,
        version=rec.version,
        action=action,
        content=rec.content,
        system_message=rec.system_message,
        temperature=rec.temperature,
        max_tokens=rec.max_tokens,
        model=rec.model,
        ab_weight=rec.weight if action is PromptAction.activated else None,
        tags=rec.tags,
    )


def _get(
    state: dict[str, PromptState], name: str, version: int
) -> tuple[PromptState, VersionRecord]:
    prompt = state.get(name)
    if prompt is None:
        raise RegistryError(f"unknown prompt {name!r}")
    rec = prompt.versions.get(version)
    if rec is None:
        raise RegistryError(f"prompt {name!r} has no version {version} (latest is {prompt.latest})")
    return prompt, rec


def plan_create(
    state: dict[str, PromptState],
    name: str,
    record: VersionRecord,
    *,
    now: datetime | None = None,
) -> list[PromptVersionEvent]:
    """Events creating ``record`` as the next version of ``name``."""
    prompt = state.get(name, PromptState(name))
    expected = prompt.latest + 1
    if record.version != expected:
        raise RegistryError(
            f"version {record.version} of {name!r} skips or repeats a version: next is {expected}"
        )
    if record.temperature is not None and not 0 <= record.temperature <= 2:
        raise RegistryError(f"temperature {record.temperature} is outside 0 to 2")
    if not record.content.strip():
        raise RegistryError("content is empty")
    fresh = replace(record, active=False, weight=None)
    return [_event(name, fresh, PromptAction.created, now or datetime.now(UTC))]


def plan_activate(
    state: dict[str, PromptState],
    name: str,
    version: int,
    weight: Decimal | None,
    *,
    now: datetime | None = None,
) -> list[PromptVersionEvent]:
    """Events activating ``version`` (alone without a weight, in the A/B test with one)."""
    prompt, rec = _get(state, name, version)
    now = now or datetime.now(UTC)
    if weight is None:
        others = [v for v in prompt.active() if v.version != version]
        events = [_event(name, v, PromptAction.deactivated, now) for v in others]
        return [
            *events,
            _event(name, replace(rec, active=True, weight=None), PromptAction.activated, now),
        ]
    if not 0 <= weight <= 1:
        raise RegistryError(f"weight {weight} is outside 0 to 1")
    others_total = sum(
        (v.weight for v in prompt.active() if v.version != version and v.weight is not None),
        Decimal(0),
    )
    if others_total + weight > 1:
        raise RegistryError(
            f"weights of active versions would sum to {others_total + weight} (at most 1)"
        )
    return [_event(name, replace(rec, active=True, weight=weight), PromptAction.activated, now)]


def plan_deactivate(
    state: dict[str, PromptState], name: str, version: int, *, now: datetime | None = None
) -> list[PromptVersionEvent]:
    _prompt, rec = _get(state, name, version)
    if not rec.active:
        raise RegistryError(f"version {version} of {name!r} is not active")
    return [_event(name, rec, PromptAction.deactivated, now or datetime.now(UTC))]
