"""Redis serving-view contract: key names and scripts shared by writers and readers.

The breaker agent (``processors``) writes breaker snapshots and releases probe
permits; the gateway reads snapshots and takes permits. Neither imports the
other, so the key layout and the Lua scripts they both rely on live here.

* ``breaker_key(prefix, provider)``: hash with ``version`` and ``snapshot``
  (``BreakerSnapshot`` JSON); written only through ``SET_IF_NEWER`` so a
  zombie writer can never move the version backwards.
* ``prompt_key(prefix, name)``: JSON ``{"prompt_name", "versions": [{"version",
  "weight", "content", ...}]}`` of the active versions, weights summing to 1.
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
    one breaker (``llmpulse.processors.breaker.config.BreakerConfigs.key_for``), so a model
    listed here is routed by its own breaker, every other one by its provider's.
    """
    return f"{prefix}llmpulse:breaker-model-keys"


def breaker_channel(prefix: str) -> str:
    return f"{prefix}llmpulse:breaker-updates"


def permit_keys(prefix: str, provider: str, generation: int, slots: int) -> list[str]:
    return [f"{prefix}llmpulse:probe-permit:{provider}:{generation}:{i}" for i in range(slots)]
