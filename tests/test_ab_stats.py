"""A/B statistics against scipy, plus power and false-positive checks by simulation."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from llmpulse.core.ab_stats import (
    Moments,
    Verdict,
    betainc,
    gammainc_upper,
    mean_interval,
    sample_ratio_mismatch,
    t_quantile_975,
    t_sf_two_sided,
    two_proportions,
    welch,
    wilson_interval,
)


def moments(xs: list[float]) -> Moments:
    return Moments(len(xs), sum(xs), sum(x * x for x in xs))


@given(st.floats(0.1, 50), st.floats(0.1, 50), st.floats(0.001, 0.999))
@settings(max_examples=200)
def test_betainc_matches_scipy(a: float, b: float, x: float) -> None:
    assert betainc(a, b, x) == pytest.approx(sps.beta.cdf(x, a, b), abs=1e-9)


@given(st.floats(-30, 30), st.floats(1, 5000))
@settings(max_examples=200)
def test_t_two_sided_matches_scipy(t: float, df: float) -> None:
    # scipy's t.sf is only good to ~1e-9 near t = 0 (it gives exactly 1.0 for
    # t = 2e-9, df = 1, where the true value is 1 - 1.29e-9); the closed-form test
    # below checks that region more tightly.
    assert t_sf_two_sided(t, df) == pytest.approx(2 * sps.t.sf(abs(t), df), abs=5e-9)


@given(st.floats(-30, 30))
@settings(max_examples=200)
def test_t_two_sided_matches_the_cauchy_closed_form(t: float) -> None:
    """With one degree of freedom, t is Cauchy: p = 1 - (2/pi) * atan(|t|), exactly."""
    assert t_sf_two_sided(t, 1.0) == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-9)


@pytest.mark.parametrize("df", [1, 2, 5, 30, 500, 1e5])
def test_t_quantile(df: float) -> None:
    assert t_quantile_975(df) == pytest.approx(sps.t.ppf(0.975, df), rel=1e-6)


@given(st.floats(0.5, 20), st.floats(0.01, 80))
@settings(max_examples=200)
def test_chi2_tail_matches_scipy(k2: float, x: float) -> None:
    assert gammainc_upper(k2, x) == pytest.approx(sps.gamma.sf(x, k2), abs=1e-9)


def test_two_proportions_matches_scipy_ztest() -> None:
    res = two_proportions(400, 1000, 450, 1000)
    p = (400 + 450) / 2000
    z = (0.45 - 0.40) / math.sqrt(p * (1 - p) * (2 / 1000))
    assert res.p_value == pytest.approx(2 * sps.norm.sf(z), rel=1e-9)
    assert res.estimate == pytest.approx(0.05)
    assert res.verdict is Verdict.better


def test_welch_matches_scipy_on_known_inputs() -> None:
    rng = random.Random(1)
    a = [rng.gauss(100, 15) for _ in range(200)]
    b = [rng.gauss(104, 25) for _ in range(150)]
    res = welch(moments(a), moments(b), higher_is_better=False)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert res.estimate == pytest.approx(sum(b) / len(b) - sum(a) / len(a))
    ci = ref.confidence_interval(0.95)
    assert (res.low, res.high) == pytest.approx((ci.low, ci.high), rel=1e-6)


def test_intervals_match_scipy() -> None:
    lo, hi = wilson_interval(30, 200)
    ref = sps.binomtest(30, 200).proportion_ci(0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)
    xs = [float(x) for x in range(1, 41)]
    ref2 = sps.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 40, scale=sps.sem(xs))
    assert mean_interval(moments(xs)) == pytest.approx(ref2, rel=1e-9)


def test_srm_matches_scipy_chisquare() -> None:
    observed = [5200, 4800]
    p = sample_ratio_mismatch(observed, [0.5, 0.5])
    assert p == pytest.approx(sps.chisquare(observed, [5000, 5000]).pvalue, rel=1e-9)
    assert sample_ratio_mismatch([8000, 2000], [0.8, 0.2]) == pytest.approx(1.0)


def test_ten_point_difference_on_5000_calls_is_significant() -> None:
    rng = random.Random(7)
    a = sum(rng.random() < 0.80 for _ in range(5000))
    b = sum(rng.random() < 0.90 for _ in range(5000))
    res = two_proportions(a, 5000, b, 5000)
    assert res.verdict is Verdict.better
    assert res.p_value < 1e-10
    assert res.low < 0.10 < res.high


def test_aa_false_positive_rate_is_near_five_percent() -> None:
    rng = random.Random(11)
    runs, hits = 2000, 0
    for _ in range(runs):
        a = sum(rng.random() < 0.85 for _ in range(1000))
        b = sum(rng.random() < 0.85 for _ in range(1000))
        hits += two_proportions(a, 1000, b, 1000).verdict is not Verdict.no_difference
    rate = hits / runs
    # Binomial(2000, 0.05): 3 standard deviations is about +-1.5 points.
    assert 0.035 <= rate <= 0.065, rate


def test_not_enough_data() -> None:
    assert two_proportions(5, 10, 9, 10).verdict is Verdict.not_enough_data
    assert welch(Moments(3, 3, 5), Moments(100, 100, 200), higher_is_better=True).verdict is (
        Verdict.not_enough_data
    )
