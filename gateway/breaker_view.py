"""The fleet-wide breaker view inside one app instance, with a local fallback.

Shared view: the breaker agent writes one versioned ``BreakerSnapshot`` per
provider to Redis (``llmpulse.schemas.serving.breaker_key``) and announces it on
``breaker_channel``. This view keeps a copy per provider, applies pub/sub
announcements as they come (only newer versions, like the Redis script), and
re-reads every key at least every ``snapshot_refresh_seconds`` (a missed
announcement is repaired within that time). A provider without a key has never
left ``closed``. A model the breaker worker runs a breaker of its own for
(``serving.model_breakers_key``, ``provider/model`` in its configuration) is
routed, probed and fed to the local fallback by that breaker; every other model
by its provider's.

Local fallback: every outcome this instance observes also feeds an in-process
``BreakerCore`` with the same rules as the agent (``llmpulse.core.breaker``). The
shared view is stale when it has not been confirmed by Redis, or the breaker
worker has not been seen alive (its heartbeat key, or an announcement), for
``snapshot_stale_seconds`` (Redis down or partitioned, or no breaker worker
running: an ``open`` snapshot would otherwise block a provider for good). Then
routing decisions come from the local breaker, and from the shared view again as
soon as both are confirmed.

Half-open: under the shared view a caller must hold one of the fleet's
``probe_permits`` Redis permits of that half-open generation before calling;
under the local view one probe at a time per instance is allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from llmpulse.core.breaker import BreakerConfig, BreakerCore, breaker_key, classify
from llmpulse.gateway import metrics
from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.redis_health import RedisHealth
from llmpulse.schemas import serving
from llmpulse.schemas.events import BreakerSnapshot, BreakerState, LLMOutcome

log = logging.getLogger(__name__)

_BLOCKING = (BreakerState.open, BreakerState.forced_open)
_REDIS_ERRORS = (aioredis.RedisError, OSError, asyncio.TimeoutError)


class Source(StrEnum):
    shared = "shared"
    local = "local"


@dataclass(frozen=True)
class Route:
    """Whether a provider may be called now, and how.

    ``allowed`` False: skip the provider. ``probe`` True: the call is a half-open
    probe; under the shared view it needs a permit of ``generation`` (one of
    ``slots``) first (``BreakerView.acquire_permit``).
    """

    provider: str
    state: BreakerState
    source: Source
    allowed: bool
    probe: bool = False
    generation: int = 0
    slots: int = 1


@dataclass(frozen=True)
class ProviderHealth:
    """What an instance knows about one provider (for health endpoints and logs)."""

    provider: str
    state: BreakerState
    source: Source
    shared_state: BreakerState | None
    shared_version: int | None
    shared_age_seconds: float | None
    local_state: BreakerState


class BreakerView:
    """Per-provider breaker state for routing: shared when fresh, local otherwise."""

    def __init__(
        self,
        redis: aioredis.Redis,
        config: GatewayConfig,
        providers: Sequence[str],
        *,
        breaker_config: BreakerConfig | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        mono: Callable[[], float] = time.monotonic,
        on_snapshot: Callable[[BreakerSnapshot], None] | None = None,
    ) -> None:
        """``on_snapshot`` is called with each snapshot the view takes (newer versions only,
        from pub/sub or a refresh read, whichever comes first)."""
        self._on_snapshot = on_snapshot
        self._redis = redis
        self._config = config
        self._wall = wall
        self._mono = mono
        self._providers = list(dict.fromkeys(providers))
        self._shared: dict[str, BreakerSnapshot | None] = {}
        self._confirmed: dict[str, float] = {}
        self._breaker_config = breaker_config or BreakerConfig()
        self._local = {p: BreakerCore(p, self._breaker_config) for p in self._providers}
        self._local_probe: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._acquire = redis.register_script(serving.ACQUIRE_PERMIT)
        self._release = redis.register_script(serving.RELEASE_PERMIT)
        #: Whether Redis answers this view (``redis_health.problem``: why not), logged on change.
        self.redis_health = RedisHealth(log, "breaker view", "local breakers decide")
        self._counters: dict[tuple[str, Source], Any] = {}
        self._agent_seen: float | None = None
        self._last_heartbeat: bytes | None = None
        self._model_keys: frozenset[str] = frozenset()

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Read every provider's snapshot once, then follow pub/sub and refresh on a timer."""
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="breaker-view-refresh"),
            asyncio.create_task(self._listen_loop(), name="breaker-view-listen"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # --- decisions -------------------------------------------------------------------
    def breaker_key(self, provider: str, model: str | None = None) -> str:
        """The breaker that decides for ``model`` of ``provider``: its own, if the breaker
        worker runs one (``serving.model_breakers_key``), else the provider's."""
        return breaker_key(provider, model, self._model_keys)

    def route(self, provider: str, model: str | None = None) -> Route:
        """How ``model`` of ``provider`` may be called now (pure in-memory; no I/O).

        ``Route.provider`` is the breaker key (``provider`` or ``provider/model``).
        """
        key = self.breaker_key(provider, model)
        route = self._route(key)
        self._count(key, route.source)
        return route

    def _route(self, provider: str) -> Route:
        snap = self._shared.get(provider)
        confirmed = self._confirmed.get(provider)
        bound = self._mono() - self._config.snapshot_stale_seconds
        fresh = (
            confirmed is not None
            and confirmed >= bound
            and self._agent_seen is not None
            and self._agent_seen >= bound
        )
        if fresh:
            state = snap.state if snap else BreakerState.closed
            if state is BreakerState.half_open and snap is not None:
                return Route(
                    provider, state, Source.shared, True, True, snap.version, snap.probe_permits
                )
            return Route(provider, state, Source.shared, state not in _BLOCKING)
        now = self._wall()
        if (
            snap is not None
            and snap.state in _BLOCKING
            and snap.next_attempt_at is not None
            and now < snap.next_attempt_at
        ):
            # The fleet's last verdict before the view went stale still runs: keep the
            # provider out until then instead of sending it this instance's traffic.
            return Route(provider, snap.state, Source.local, False)
        core = self._local_core(provider)
        core.tick(now)
        if core.state is BreakerState.half_open:
            allowed = provider not in self._local_probe
            return Route(provider, core.state, Source.local, allowed, True, core.version)
        return Route(provider, core.state, Source.local, core.state not in _BLOCKING)

    async def acquire_permit(self, route: Route, holder: str) -> bool:
        """Take a probe permit for ``route`` (a probe route). False: not this time.

        Under the local view the permit is this instance's single probe slot.
        A Redis failure counts as "no permit": never probe without one.
        """
        if route.source is Source.local:
            if route.provider in self._local_probe:
                return False
            self._local_probe.add(route.provider)
            return True
        keys = serving.permit_keys(
            self._config.topic_prefix, route.provider, route.generation, route.slots
        )
        try:
            slot = await self._acquire(keys=keys, args=[holder, self._config.permit_ttl_ms])
        except _REDIS_ERRORS as exc:
            log.warning("probe permit for %s not taken (redis): %s", route.provider, exc)
            return False
        return bool(slot)

    async def release_permit(self, route: Route, holder: str) -> None:
        """Give back a permit whose probe never reached the provider (e.g. cancelled)."""
        if route.source is Source.local:
            self._local_probe.discard(route.provider)
            return
        keys = serving.permit_keys(
            self._config.topic_prefix, route.provider, route.generation, route.slots
        )
        try:
            await self._release(keys=keys, args=[holder])
        except _REDIS_ERRORS as exc:  # it expires after permit_ttl_ms anyway
            log.warning("probe permit for %s not released (redis): %s", route.provider, exc)

    def record(self, outcome: LLMOutcome) -> None:
        """Feed one of this instance's outcomes to the local breaker it belongs to."""
        key = self.breaker_key(outcome.provider, outcome.model)
        core = self._local_core(key)
        core.record(classify(outcome, core.config), self._wall())
        if outcome.is_probe:
            self._local_probe.discard(key)

    def health(self) -> list[ProviderHealth]:
        """Current view of every known provider."""
        now = self._mono()
        out = []
        for provider in self._providers:
            route = self._route(provider)  # not counted as a routing decision
            snap = self._shared.get(provider)
            confirmed = self._confirmed.get(provider)
            out.append(
                ProviderHealth(
                    provider=provider,
                    state=route.state,
                    source=route.source,
                    shared_state=(snap.state if snap else BreakerState.closed)
                    if confirmed is not None
                    else None,
                    shared_version=(snap.version if snap else 0) if confirmed is not None else None,
                    shared_age_seconds=now - confirmed if confirmed is not None else None,
                    local_state=self._local_core(provider).state,
                )
            )
        return out

    # --- shared view maintenance --------------------------------------------------------
    def apply(self, snap: BreakerSnapshot) -> bool:
        """Apply a snapshot just announced by the breaker worker (newer versions only).

        An announcement is also proof that the worker is alive. True if applied.
        """
        self._agent_seen = self._mono()
        return self._store(snap)

    def _store(self, snap: BreakerSnapshot) -> bool:
        if snap.provider not in self._local:
            return False
        held = self._shared.get(snap.provider)
        self._confirmed[snap.provider] = self._mono()
        if held is not None and held.version >= snap.version:
            return False
        self._shared[snap.provider] = snap
        if self._on_snapshot is not None:
            self._on_snapshot(snap)
        return True

    async def refresh(self) -> bool:
        """Re-read every provider's snapshot from Redis; False if Redis failed."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(serving.heartbeat_key(self._config.topic_prefix))
                pipe.get(serving.model_breakers_key(self._config.topic_prefix))
                keys = list(self._providers)
                for key in keys:
                    pipe.hget(serving.breaker_key(self._config.topic_prefix, key), "snapshot")
                heartbeat, model_keys, *raws = await pipe.execute()
        except _REDIS_ERRORS as exc:
            self.redis_health.failed(exc)
            return False
        self.redis_health.answered()
        now = self._mono()
        # A heartbeat that changed since the last read proves the worker ticked: no
        # clock comparison, so skew between hosts does not matter. (The worker's
        # tick, 0.5 s by default, must stay below snapshot_stale_seconds.)
        if heartbeat is not None and heartbeat != self._last_heartbeat:
            self._agent_seen = now
        self._last_heartbeat = heartbeat
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                self._confirmed[key] = now  # never transitioned: closed
                continue
            snap = self._parse(raw)
            if snap is not None:
                self._store(snap)
        if self._follow_model_keys(model_keys):
            return await self.refresh()  # read the newly followed breakers now
        return True

    def _follow_model_keys(self, raw: bytes | str | None) -> bool:
        """Take the worker's list of per-model breakers; True if one is new to this view."""
        if raw is None:
            return False
        try:
            listed = json.loads(raw)
            keys = frozenset(str(k) for k in listed if isinstance(k, str))
        except (ValueError, TypeError):
            log.warning("breaker view: unreadable list of per-model breakers: %r", raw)
            return False
        # Only models of providers this instance calls.
        keys = frozenset(k for k in keys if k.split("/", 1)[0] in self._local)
        new = keys - self._model_keys
        self._model_keys = keys
        for key in new:
            self._local_core(key)  # followed from now on
        return bool(new)

    def _parse(self, raw: bytes | str) -> BreakerSnapshot | None:
        try:
            return BreakerSnapshot.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("breaker view: invalid snapshot ignored: %s", exc)
            return None

    def _count(self, provider: str, source: Source) -> None:
        # Labelled children cached: ``labels()`` costs more than the decision itself.
        child = self._counters.get((provider, source))
        if child is None:
            child = metrics.BREAKER_VIEW_SOURCE.labels(provider=provider, source=source.value)
            self._counters[(provider, source)] = child
        child.inc()

    def _local_core(self, provider: str) -> BreakerCore:
        core = self._local.get(provider)
        if core is None:
            core = self._local[provider] = BreakerCore(provider, self._breaker_config)
            self._providers.append(provider)
        return core

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.snapshot_refresh_seconds)
            await self.refresh()

    async def _listen_loop(self) -> None:
        """Apply announced snapshots as they come; resubscribe after Redis failures."""
        channel = serving.breaker_channel(self._config.topic_prefix)
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if msg is not None and msg.get("type") == "message":
                        snap = self._parse(msg["data"])
                        if snap is not None:
                            self.apply(snap)
            except _REDIS_ERRORS:
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*_REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


__all__ = ["BreakerView", "ProviderHealth", "Route", "Source"]
