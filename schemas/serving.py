"""Redis serving-view contract: key names and scripts shared by writers and readers.

The breaker agent (``processors``) writes breaker snapshots and releases probe
permits; the gateway reads snapshots and takes permits. Neither imports the
other, so the key layout and the Lua scripts they both rely on live here.

* ``breaker_key(prefix, provider)``: hash with ``version`` and ``snapshot``
  (``BreakerSnapshot`` JSON); written only through ``SET_IF_NEWER`` so a
  zombie writer can never move the version backwards.
* ``prompt_key(prefix, name)``: a ``PromptView`` as JSON, ``{"prompt_name", "versions":
  [{"version", "weight", "content", ...}]}``: the active versions, weights summing to 1.
* ``breaker_channel(prefix)``: pub/sub channel announcing every applied snapshot.
* ``heartbeat_key(prefix)``: epoch milliseconds, rewritten by the breaker worker
  on every timer tick (expiring after ``HEARTBEAT_TTL_MS``). Snapshots only change
  on transitions, so this is how a reader tells "nothing happened" from "the
  worker is gone" (an ``open`` snapshot would otherwise block a provider forever).
* ``permit_keys(prefix, provider, generation, n)``: the N half-open probe permits
  of one half-open period (``generation`` = the breaker version of that
  half_open snapshot), taken with ``ACQUIRE_PERMIT`` (``SET NX PX``, value = the
  probe's request id). The agent releases a permit when the probe's successful
  outcome arrives (``RELEASE_PERMIT``), so the next probe of the same period may
  go; a failed probe's permit is left to expire, and a re-opened breaker's next
  half-open period has a new generation, so stale views cannot over-probe.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

#: KEYS[1] = breaker key; ARGV = version, snapshot JSON, channel.
#: Applies the snapshot only when its version is newer; returns 1 if applied.
SET_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'snapshot', ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  return 1
end
return 0
"""

#: KEYS = the N permit keys of a provider; ARGV = holder id, expiry in ms.
#: Takes the first free permit; returns its 1-based slot, or 0 when all N are held.
ACQUIRE_PERMIT = """
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    return i
  end
end
return 0
"""

#: KEYS = permit keys of a provider; ARGV = holder id. Deletes the permit held by it.
RELEASE_PERMIT = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    return 1
  end
end
return 0
"""


def prompt_key(prefix: str, prompt_name: str) -> str:
    """JSON of a prompt's active versions with effective A/B weights (registry agent)."""
    return f"{prefix}llmpulse:prompt:{prompt_name}"


def breaker_key(prefix: str, provider: str) -> str:
    return f"{prefix}llmpulse:breaker:{provider}"


#: Expiry of the breaker worker's heartbeat key.
HEARTBEAT_TTL_MS = 30_000


def heartbeat_key(prefix: str) -> str:
    return f"{prefix}llmpulse:breaker-heartbeat"


def model_breakers_key(prefix: str) -> str:
    """JSON list of the ``provider/model`` keys that have a breaker of their own.

    Rewritten by the breaker worker with its heartbeat. An outcome feeds exactly
    one breaker (``llmpulse.core.breaker.breaker_key``), so a model listed here is
    routed by its own breaker, every other one by its provider's.
    """
    return f"{prefix}llmpulse:breaker-model-keys"


def breaker_channel(prefix: str) -> str:
    return f"{prefix}llmpulse:breaker-updates"


def permit_keys(prefix: str, provider: str, generation: int, slots: int) -> list[str]:
    return [f"{prefix}llmpulse:probe-permit:{provider}:{generation}:{i}" for i in range(slots)]


# --- the prompt registry view -------------------------------------------------------------


def _view_decimal(value: Any) -> Decimal:
    # A JSON number would reach here as a float, already rounded: only decimal
    # strings (or whole numbers) carry a weight exactly.
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a decimal string, got {value!r}")
    try:
        parsed = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"must be a decimal string, got {value!r}") from None
    if not parsed.is_finite():
        raise ValueError(f"must be finite, got {value!r}")
    return parsed


#: A finite Decimal, a decimal string on the wire (plain notation, never "1E-7").
ViewDecimal = Annotated[
    Decimal,
    BeforeValidator(_view_decimal),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]


class PromptVersionEntry(BaseModel):
    """One active prompt version in a ``PromptView``; ``weight`` is its effective share."""

    # Readers ignore keys they do not know (a newer writer may add some, and running
    # gateways must keep serving), but never coerce a value of the wrong type.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    version: int
    weight: Annotated[ViewDecimal, Field(ge=0)]
    content: str | None = None
    system_message: str | None = None
    temperature: ViewDecimal | None = None
    max_tokens: int | None = None
    model: str | None = None


class PromptView(BaseModel):
    """The Redis serving view of one prompt (``prompt_key``): its active versions.

    Written by the registry agent on every change of the prompt, read by the
    gateway's ``PromptSelector``. Guarantees on a validated view: each version
    appears once, in the writer's order (ascending version), every weight is a
    finite Decimal >= 0 (the writer's weights sum to 1 when any version is
    active; an empty ``versions`` means none is). ``prompt_name`` is always
    written; readers key views by their Redis key and do not need it.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")  # as for the entries

    prompt_name: str | None = None
    versions: tuple[PromptVersionEntry, ...]

    @model_validator(mode="after")
    def _versions_unique(self) -> PromptView:
        seen = [v.version for v in self.versions]
        if len(set(seen)) != len(seen):
            raise ValueError(f"prompt view lists a version twice: {seen}")
        return self
