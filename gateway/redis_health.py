"""Whether the gateway's Redis answers, said once per change in the logs.

The breaker view and the prompt selector keep serving while Redis fails (local
breakers, last known prompt views: DESIGN.md, an app must not stop calling
models because a view is down). But a Redis that *refuses* this instance (wrong
password, unknown ACL user, missing permission, untrusted certificate) is a
configuration error no wait will fix: it is logged at ERROR naming
``LLMPULSE_REDIS_URL`` (never its value) and kept in :attr:`RedisHealth.problem`
for health endpoints, instead of passing for an outage.
"""

from __future__ import annotations

import logging

from llmpulse.core.redis_refusal import refusal

__all__ = ["RedisHealth"]


class RedisHealth:
    """The last Redis outcome of one reader (``what``), logged when it changes."""

    def __init__(self, log: logging.Logger, what: str, fallback: str) -> None:
        """``fallback``: what the reader does meanwhile (e.g. "local breakers decide")."""
        self._log = log
        self._what = what
        self._fallback = fallback
        self._refused: bool | None = None  # None: Redis answers
        #: None while Redis answers; else one line saying what is wrong.
        self.problem: str | None = None

    def failed(self, exc: BaseException) -> None:
        """Record a failed Redis call; log it if the problem is new."""
        reason = refusal(exc)
        refused = reason is not None
        if self._refused is refused:
            return  # the same kind of problem, already said
        self._refused = refused
        if reason is None:
            self.problem = f"Redis unreachable ({type(exc).__name__}: {exc})"
        else:
            self.problem = f"Redis refused this gateway ({reason}): fix LLMPULSE_REDIS_URL"
        level = logging.ERROR if refused else logging.WARNING
        self._log.log(level, "%s: %s; %s", self._what, self.problem, self._fallback)

    def answered(self) -> None:
        """Record a Redis call that worked (logged if it ends a problem)."""
        if self._refused is None:
            return
        self._refused = self.problem = None
        self._log.info("%s: Redis reachable again", self._what)
