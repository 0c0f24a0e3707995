"""A/B statistics from aggregated moments (pure, no scipy needed at runtime).

Everything works on sufficient statistics that windowed rollups can merge:
counts, sums and sums of squares. Tests check the p-values against scipy.

* success rate: two-proportion z-test (pooled), Wilson 95% interval;
* latency, cost, feedback: Welch's t-test, t-based 95% interval of the mean;
* sample-ratio mismatch: chi-square goodness of fit of observed traffic against
  the configured weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

Z95 = 1.959963984540054


class Verdict(StrEnum):
    better = "better"
    worse = "worse"
    no_difference = "no significant difference"
    not_enough_data = "not enough data"


@dataclass(frozen=True)
class Moments:
    """n, sum and sum of squares of a sample."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance (n - 1)."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True)
class TestResult:
    estimate: float  # treatment minus baseline
    low: float  # 95% interval of the difference
    high: float
    p_value: float
    verdict: Verdict


# --- distributions -----------------------------------------------------------------
def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(df):
        return 2.0 * (1.0 - normal_cdf(abs(t)))
    t2 = t * t
    if t2 < df:
        # Near t = 0, df / (df + t^2) rounds to 1; use I_x(a, b) = 1 - I_(1-x)(b, a).
        return 1.0 - betainc(0.5, df / 2.0, t2 / (df + t2))
    return betainc(df / 2.0, 0.5, df / (df + t2))


def t_quantile_975(df: float) -> float:
    """The 97.5% quantile of Student's t (bisection on the CDF)."""
    if df > 1e6:
        return Z95
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_sf_two_sided(mid, df) > 0.05:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def gammainc_upper(s: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(s, x)."""
    if x <= 0:
        return 1.0
    if x < s + 1:
        term = total = 1.0 / s
        a = s
        for _ in range(10_000):
            a += 1
            term *= x / a
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return 1.0 - total * math.exp(-x + s * math.log(x) - math.lgamma(s))
    tiny = 1e-300
    b = x + 1 - s
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - s)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return math.exp(-x + s * math.log(x) - math.lgamma(s)) * h


# --- tests -------------------------------------------------------------------------
def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (centre - half, centre + half)


def mean_interval(m: Moments) -> tuple[float, float]:
    """95% t interval of the mean."""
    if m.n < 2:
        return (math.nan, math.nan)
    half = t_quantile_975(m.n - 1) * math.sqrt(m.variance / m.n)
    return (m.mean - half, m.mean + half)


def _verdict(p: float, estimate: float, higher_is_better: bool, alpha: float) -> Verdict:
    if p >= alpha or estimate == 0:
        return Verdict.no_difference
    return Verdict.better if (estimate > 0) == higher_is_better else Verdict.worse


def two_proportions(
    base_success: int,
    base_n: int,
    treat_success: int,
    treat_n: int,
    *,
    alpha: float = 0.05,
    min_n: int = 30,
) -> TestResult:
    """Pooled two-proportion z-test of treatment minus baseline success rate."""
    if base_n < min_n or treat_n < min_n:
        return TestResult(math.nan, math.nan, math.nan, math.nan, Verdict.not_enough_data)
    p1, p2 = base_success / base_n, treat_success / treat_n
    pooled = (base_success + treat_success) / (base_n + treat_n)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / base_n + 1 / treat_n))
    diff = p2 - p1
    p_value = 1.0 if se_pooled == 0 else 2 * (1 - normal_cdf(abs(diff) / se_pooled))
    se = math.sqrt(p1 * (1 - p1) / base_n + p2 * (1 - p2) / treat_n)
    return TestResult(
        diff, diff - Z95 * se, diff + Z95 * se, p_value, _verdict(p_value, diff, True, alpha)
    )


def welch(
    base: Moments,
    treat: Moments,
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
    min_n: int = 30,
) -> TestResult:
    """Welch's unequal-variance t-test of treatment minus baseline mean."""
    if base.n < min_n or treat.n < min_n:
        return TestResult(math.nan, math.nan, math.nan, math.nan, Verdict.not_enough_data)
    v1, v2 = base.variance / base.n, treat.variance / treat.n
    diff = treat.mean - base.mean
    se = math.sqrt(v1 + v2)
    if se == 0:
        p_value = 1.0 if diff == 0 else 0.0
        return TestResult(
            diff, diff, diff, p_value, _verdict(p_value, diff, higher_is_better, alpha)
        )
    df = (v1 + v2) ** 2 / (v1 * v1 / (base.n - 1) + v2 * v2 / (treat.n - 1))
    t = diff / se
    p_value = t_sf_two_sided(t, df)
    half = t_quantile_975(df) * se
    return TestResult(
        diff, diff - half, diff + half, p_value, _verdict(p_value, diff, higher_is_better, alpha)
    )


def sample_ratio_mismatch(observed: list[int], weights: list[float]) -> float:
    """p-value of a chi-square goodness-of-fit test of ``observed`` against ``weights``."""
    total = sum(observed)
    wsum = sum(weights)
    if total == 0 or len(observed) < 2 or wsum <= 0:
        return 1.0
    chi2 = 0.0
    for obs, w in zip(observed, weights, strict=True):
        expected = total * w / wsum
        if expected > 0:
            chi2 += (obs - expected) ** 2 / expected
    return gammainc_upper((len(observed) - 1) / 2, chi2 / 2)
