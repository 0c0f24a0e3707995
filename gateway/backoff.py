"""Retry delays with exponential "full jitter" backoff.

Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): the
delay before retry ``n`` is uniform in ``[0, min(cap, base * 2**n)]``. The
randomness spreads retries of many clients so they do not hit a recovering
provider in lockstep.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Full-jitter backoff policy.

    Guarantees ``0 < base_seconds <= cap_seconds``, both finite (ValueError
    otherwise), and that every delay is within ``[0, min(cap, base * 2**retry)]``.
    """

    base_seconds: float = 0.05
    cap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_seconds) and self.base_seconds > 0):
            raise ValueError(f"base_seconds must be finite and > 0, got {self.base_seconds}")
        if not (math.isfinite(self.cap_seconds) and self.cap_seconds > 0):
            raise ValueError(f"cap_seconds must be finite and > 0, got {self.cap_seconds}")
        if self.cap_seconds < self.base_seconds:
            raise ValueError(
                f"cap_seconds ({self.cap_seconds}) must be >= base_seconds ({self.base_seconds})"
            )

    def ceiling(self, retry: int) -> float:
        """Upper bound of the delay before retry ``retry`` (0-based): ``min(cap, base * 2**retry)``.

        Exact for any non-negative ``retry``, however large (no overflow).
        """
        if retry < 0:
            raise ValueError(f"retry must be >= 0, got {retry}")
        try:
            # ldexp is base * 2**retry without building a huge int.
            return min(self.cap_seconds, math.ldexp(self.base_seconds, retry))
        except OverflowError:
            return self.cap_seconds

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to sleep before retry ``retry`` (0-based): uniform in ``[0, ceiling(retry)]``."""
        return rng.uniform(0.0, self.ceiling(retry))
