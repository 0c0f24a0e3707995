"""Sticky prompt A/B selection over the registry's Redis view.

``assign`` is the pure core: weighted rendezvous hashing of (prompt, subject)
over the active versions. ``PromptSelector`` is the thin edge: it reads the
view the registry agent writes (``llmpulse.schemas.serving.prompt_key``), caches it and
keeps serving the last known view while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmpulse.gateway.config import GatewayConfig
from llmpulse.gateway.exceptions import PromptUnavailable as PromptUnavailable
from llmpulse.gateway.redis_health import RedisHealth
from llmpulse.schemas.serving import PromptView, prompt_key

log = logging.getLogger(__name__)

_2_POW_53 = float(2**53)
#: Prompt views a selector keeps by default: far above any registry, but callers may
#: name any prompt (unknown names are cached too, as empty views).
MAX_CACHED_PROMPTS = 10_000


def _unit(prompt_name: str, subject_id: str, version: int) -> float:
    """Uniform in the open interval (0, 1), a pure function of its arguments."""
    # Length prefixes keep the encoding injective ("a|b" + "c" != "a" + "b|c");
    # surrogatepass so any Python str (even lone surrogates) hashes instead of raising.
    text = f"{len(prompt_name)}:{prompt_name}|{len(subject_id)}:{subject_id}|{version}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    top53 = int.from_bytes(digest[:8], "big") >> 11
    # +0.5 keeps u away from 0, where -ln(u) would be infinite.
    return (top53 + 0.5) / _2_POW_53


def assign(prompt_name: str, subject_id: str, weights: Sequence[tuple[int, Decimal]]) -> int:
    """The version of ``prompt_name`` that ``subject_id`` gets, by weighted rendezvous hashing.

    For each ``(version, weight)`` with weight > 0, ``u`` is uniform in (0, 1)
    from sha256 of (prompt, subject, version) and the score is ``-ln(u) /
    weight``; the lowest score wins (ties: lowest version). Guarantees:

    * Sticky: the same subject always gets the same version for the same weights
      (no per-call randomness, no state).
    * Proportional: over many subjects, each version's share matches its weight
      divided by the sum of positive weights.
    * Minimal movement: each version's score depends only on its own weight, so
      adding, removing or re-weighting version ``v`` only moves subjects to or
      from ``v``; subjects between unrelated versions never move (unlike
      cumulative-weight bucketing, where every boundary shifts).

    Versions with weight 0 are never chosen. Raises ValueError if a weight is
    negative or not finite, or if no version has a weight > 0.
    """
    best: tuple[float, int] | None = None
    for version, weight in weights:
        if not weight.is_finite() or weight < 0:
            raise ValueError(f"weight of version {version} must be finite and >= 0, got {weight}")
        if weight == 0:
            continue
        score = (-math.log(_unit(prompt_name, subject_id, version)) / float(weight), version)
        if best is None or score < best:
            best = score
    if best is None:
        raise ValueError(f"prompt {prompt_name!r} has no version with weight > 0")
    return best[1]


@dataclass(frozen=True)
class PromptVersionView:
    """One active prompt version as served by the registry (weight is the effective share)."""

    version: int
    weight: Decimal
    content: str | None
    system_message: str | None
    temperature: Decimal | None
    max_tokens: int | None
    model: str | None


@dataclass(frozen=True)
class PromptChoice:
    """The prompt version chosen for one subject."""

    prompt_name: str
    version: PromptVersionView


def _problem(exc: ValidationError) -> str:
    """One line naming each problem's place in the view (``versions.0.weight: ...``)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<view>"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_view(raw: bytes | str) -> list[PromptVersionView]:
    """The versions of a registry view (``llmpulse.schemas.serving.PromptView`` JSON).

    Returns them in view order; unknown keys are ignored and missing optional
    fields are None. Raises ValueError naming the problem when the JSON is
    malformed, a field has the wrong type, a weight is negative or not a
    decimal string, or a version appears twice.
    """
    try:
        view = PromptView.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ValueError(f"prompt view is not valid JSON: {_problem(exc)}") from None
        raise ValueError(f"prompt view is invalid: {_problem(exc)}") from None
    return [
        PromptVersionView(
            version=v.version,
            weight=v.weight,
            content=v.content,
            system_message=v.system_message,
            temperature=v.temperature,
            max_tokens=v.max_tokens,
            model=v.model,
        )
        for v in view.versions
    ]


@dataclass(frozen=True)
class _Cached:
    versions: tuple[PromptVersionView, ...]
    #: Clock time of the last refresh attempt, successful or not.
    checked_at: float


class PromptSelector:
    """Picks a sticky prompt version per subject from the registry view in Redis.

    Each prompt's view is re-read at most once per ``refresh_seconds``. If Redis
    fails (``RedisError`` or ``OSError``), the view is missing or malformed,
    the last known view keeps being served without raising, and Redis is tried
    again after ``refresh_seconds``; one warning is logged per Redis outage.
    An empty view (the registry says no version is active) replaces the cache.

    The Redis client's own timeouts and retries bound how long a refresh can
    block ``select``: give it short timeouts (``llmpulse.gateway.config.redis_client``).
    Concurrent callers share one refresh per prompt: the caller that starts it
    waits for it (at most the client's timeouts, once per ``refresh_seconds``
    and prompt); others with a cached view are served from it meanwhile.

    At most ``max_prompts`` views are cached: beyond that the one refreshed
    longest ago goes (a prompt in use is refreshed every ``refresh_seconds``,
    so what goes is a name nobody asked for lately).
    """

    def __init__(
        self,
        redis: Redis,
        config: GatewayConfig,
        *,
        refresh_seconds: float = 1.0,
        max_prompts: int = MAX_CACHED_PROMPTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not refresh_seconds > 0:
            raise ValueError(f"refresh_seconds must be > 0, got {refresh_seconds}")
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        self._redis = redis
        self._config = config
        self._refresh_seconds = refresh_seconds
        self._max_prompts = max_prompts
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: Whether Redis answers (``redis_health.problem``: why not), logged on change.
        self.redis_health = RedisHealth(log, "prompt selector", "serving last known prompt views")

    async def select(self, prompt_name: str, subject_id: str) -> PromptChoice:
        """The version ``subject_id`` gets (see ``assign``) from the current or last known view.

        Raises PromptUnavailable when no version with weight > 0 is known for
        the prompt (unknown prompt, all deactivated, or Redis down and nothing
        cached). Never raises Redis errors.
        """
        cached = self._cache.get(prompt_name)
        if cached is None or self._clock() - cached.checked_at >= self._refresh_seconds:
            task = self._inflight.get(prompt_name)
            if task is None:
                # Own task: one GET per prompt however many callers, and a caller's
                # cancellation cannot interrupt redis-py mid-command (which can
                # leave the connection out of step).
                task = asyncio.create_task(self._refresh(prompt_name))
                self._inflight[prompt_name] = task
                task.add_done_callback(self._forget)
                await asyncio.shield(task)
            elif cached is None:
                await asyncio.shield(task)
            # else: another caller is refreshing; the cached view is still good to serve.
            cached = self._cache.get(prompt_name)
        return self.choose(prompt_name, subject_id, cached.versions if cached else ())

    def choose(
        self, prompt_name: str, subject_id: str, versions: Sequence[PromptVersionView]
    ) -> PromptChoice:
        """The version ``subject_id`` gets among ``versions`` (pure, see ``assign``).

        Raises PromptUnavailable if no version has a weight > 0.
        """
        if not any(v.weight > 0 for v in versions):
            raise PromptUnavailable(f"no active version of prompt {prompt_name!r}")
        chosen = assign(prompt_name, subject_id, [(v.version, v.weight) for v in versions])
        return PromptChoice(prompt_name, next(v for v in versions if v.version == chosen))

    async def _refresh(self, prompt_name: str) -> None:
        key = prompt_key(self._config.topic_prefix, prompt_name)
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            self.redis_health.failed(exc)
            self._keep(prompt_name)
            return
        self.redis_health.answered()
        if raw is None:
            # Unknown prompt, or Redis lost its data (the view is rebuildable and is
            # rewritten only on change): the last known view is the best answer.
            self._keep(prompt_name)
            return
        try:
            versions = parse_view(raw)
        except ValueError as exc:
            log.warning("ignoring malformed prompt view %s: %s", key, exc)
            self._keep(prompt_name)
            return
        self._put(prompt_name, tuple(versions))

    def _forget(self, task: asyncio.Task[None]) -> None:
        for name, running in list(self._inflight.items()):
            if running is task:
                del self._inflight[name]

    def _keep(self, prompt_name: str) -> None:
        """Keep the last known view (or none) and wait refresh_seconds before retrying."""
        old = self._cache.get(prompt_name)
        self._put(prompt_name, old.versions if old else ())

    def _put(self, prompt_name: str, versions: tuple[PromptVersionView, ...]) -> None:
        """Cache a refreshed view last in line; drop the oldest refreshes beyond the bound."""
        self._cache.pop(prompt_name, None)
        self._cache[prompt_name] = _Cached(versions, self._clock())
        while len(self._cache) > self._max_prompts:
            del self._cache[next(iter(self._cache))]
