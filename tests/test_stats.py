"""Tests for camegrad_mini.stats: t intervals over seeds, checked against scipy and by simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sst

from camegrad_mini.stats import TInterval, mean_interval, paired_difference

# Per-seed metric values of the size the book handles (gaps, positions, escape indicators).
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=2, max_size=30)


@st.composite
def pairs(draw, min_size=2, max_size=30):
    n = draw(st.integers(min_size, max_size))
    a = draw(st.lists(finite, min_size=n, max_size=n))
    b = draw(st.lists(finite, min_size=n, max_size=n))
    return a, b


# ------------------------------------------------------------------------------------ known values
def test_paired_difference_matches_scipy_ttest_rel():
    gen = np.random.default_rng(0)
    a = gen.normal(1.0, 0.3, 8)
    b = a - 0.1 + gen.normal(0.0, 0.05, 8)
    d = paired_difference(a, b)
    ref = sst.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert d.lo == pytest.approx(ci.low, rel=1e-12) and d.hi == pytest.approx(ci.high, rel=1e-12)
    assert d.mean / d.se == pytest.approx(ref.statistic, rel=1e-12)
    assert d.df == ref.df == 7 and d.n == 8
    diff = a - b
    assert d.mean == pytest.approx(diff.mean()) and d.sd == pytest.approx(diff.std(ddof=1))
    assert d.se == pytest.approx(diff.std(ddof=1) / math.sqrt(8))
    assert d.t_crit == pytest.approx(sst.t.ppf(0.975, 7))
    assert d.per_seed == pytest.approx(tuple(diff))
    assert d.wins == int((a > b).sum())
    # the interval excludes 0 exactly when the two-sided p-value is below 5%
    assert d.excludes_zero == (ref.pvalue < 0.05)


def test_mean_interval_matches_scipy_t_interval_and_hand_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    m = mean_interval(x, level=0.9)
    lo, hi = sst.t.interval(0.9, 4, loc=3.0, scale=sst.sem(x))
    assert (m.lo, m.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert m.mean == 3.0 and m.sd == pytest.approx(math.sqrt(2.5)) and m.se == pytest.approx(math.sqrt(0.5))
    assert m.t_crit == pytest.approx(2.131847, abs=1e-6)  # t_{0.95, 4}
    assert m.wins == 5 and m.level == 0.9 and m.df == 4
    # textbook value: n = 8 at 95% uses 2.365, not 2
    assert mean_interval(np.arange(8.0)).t_crit == pytest.approx(2.364624, abs=1e-6)


def test_format_and_str():
    d = paired_difference([0.30, 0.32, 0.29, 0.35], [0.28, 0.31, 0.28, 0.31])
    assert str(d) == "+0.020 [-0.003, +0.043] (n=4, t-CI 95%)"
    assert d.format(2, details=False) == "+0.02 [-0.00, +0.04]"
    m = mean_interval([1.0, 2.0, 3.0], level=0.9)
    assert m.format(1, signed=False) == "2.0 [0.3, 3.7] (n=3, t-CI 90%)"
    assert mean_interval([1.0, 2.0, 3.0], level=0.995).format(0).endswith("t-CI 99.5%)")
    with pytest.raises(ValueError, match="digits"):
        d.format(-1)


def test_identical_differences_give_a_degenerate_interval():
    d = paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert d.mean == pytest.approx(0.5) and d.sd == pytest.approx(0.0, abs=1e-15)
    assert d.lo == pytest.approx(0.5) and d.hi == pytest.approx(0.5) and d.excludes_zero
    z = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert (z.lo, z.hi, z.wins) == (0.0, 0.0, 0) and z.covers(0.0) and not z.excludes_zero


def test_interval_is_frozen():
    d = mean_interval([1.0, 2.0])
    assert isinstance(d, TInterval)
    with pytest.raises(AttributeError):
        d.mean = 3.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------ errors
def test_errors_are_clear():
    with pytest.raises(ValueError, match="at least two seeds.*n=1"):
        mean_interval([1.0])
    with pytest.raises(ValueError, match="at least two seeds.*n=0"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="same length.*3 and 2"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"a\[2\] is nan"):
        paired_difference([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"b\[0\] is inf"):
        paired_difference([1.0, 2.0], [float("inf"), 2.0])
    with pytest.raises(ValueError, match=r"x\[1\] is -inf.*1 more"):
        mean_interval([1.0, -math.inf, math.nan])
    with pytest.raises(ValueError, match="1-D"):
        mean_interval(np.ones((2, 3)))
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="level"):
        paired_difference([1.0, 2.0], [1.0, 2.0], level=0.0)


# ------------------------------------------------------------------------------------ properties
@given(samples)
def test_interval_contains_the_mean_and_is_symmetric(x):
    m = mean_interval(x)
    assert m.lo <= m.mean <= m.hi
    tol = 1e-9 * (1.0 + abs(m.mean) + m.half_width)
    assert (m.mean - m.lo) == pytest.approx(m.hi - m.mean, abs=tol)
    assert m.hi - m.lo == pytest.approx(2 * m.half_width, abs=tol)
    assert m.n == len(x) and m.df == len(x) - 1 and m.sd >= 0
    assert m.wins == sum(v > 0 for v in x)


@given(pairs())
def test_paired_difference_is_the_interval_of_the_differences(ab):
    a, b = ab
    d = paired_difference(a, b)
    m = mean_interval(np.subtract(a, b))
    assert (d.mean, d.lo, d.hi, d.se) == (m.mean, m.lo, m.hi, m.se)
    assert d.wins == sum(x > y for x, y in zip(a, b, strict=True))
    # swapping a and b mirrors the interval
    r = paired_difference(b, a)
    tol = 1e-9 * (1.0 + abs(d.mean) + d.half_width)
    assert r.mean == pytest.approx(-d.mean, abs=tol) and r.lo == pytest.approx(-d.hi, abs=tol)


@given(pairs(), finite)
def test_translation_invariance(ab, c):
    """Adding the same constant to both methods' values changes nothing; shifting one shifts the interval."""
    a, b = np.array(ab[0]), np.array(ab[1])
    d = paired_difference(a, b)
    shifted = paired_difference(a + c, b + c)
    tol = 1e-8 * (1.0 + np.abs(a).max() + np.abs(b).max() + abs(c))
    assert shifted.mean == pytest.approx(d.mean, abs=tol)
    assert shifted.half_width == pytest.approx(d.half_width, abs=tol)
    moved = mean_interval(a + c)
    base = mean_interval(a)
    assert moved.lo == pytest.approx(base.lo + c, abs=tol) and moved.hi == pytest.approx(base.hi + c, abs=tol)


@given(samples, st.floats(min_value=0.5, max_value=0.99))
def test_higher_level_gives_a_wider_interval(x, level):
    lo_level, hi_level = mean_interval(x, level=level - 0.4), mean_interval(x, level=level)
    assert hi_level.t_crit > lo_level.t_crit
    assert hi_level.lo <= lo_level.lo and lo_level.hi <= hi_level.hi


@given(st.lists(finite, min_size=2, max_size=10).filter(lambda v: max(v) - min(v) > 1e-3),
       st.integers(2, 6))
def test_repeating_the_same_data_shrinks_the_interval(x, k):
    """k copies of the same sample: same mean, about the same sd, smaller se and t quantile."""
    one, many = mean_interval(x), mean_interval(np.tile(x, k))
    assert many.mean == pytest.approx(one.mean, abs=1e-9 * (1 + np.abs(x).max()))
    assert many.t_crit < one.t_crit and many.se < one.se
    assert many.half_width < one.half_width


def test_interval_shrinks_with_more_data_from_the_same_distribution():
    gen = np.random.default_rng(1)
    widths = {n: np.mean([mean_interval(gen.normal(0.0, 1.0, n)).half_width for _ in range(400)])
              for n in (4, 16, 64)}
    assert widths[4] > widths[16] > widths[64]
    # the expected width falls roughly like t_crit / sqrt(n)
    assert widths[16] / widths[64] == pytest.approx(2.0 * sst.t.ppf(0.975, 15) / sst.t.ppf(0.975, 63), rel=0.15)


# ------------------------------------------------------------------------------------ coverage
def test_coverage_by_simulation():
    """2000 simulated paired experiments with n=5 seeds: the 95% interval covers the true difference
    in 93-97% of them (the normal rule mean ± 2 se would cover clearly less)."""
    gen = np.random.default_rng(2024)
    true_diff, n, reps = 0.3, 5, 2000
    hits = normal_hits = 0
    for _ in range(reps):
        seed_effect = gen.normal(0.0, 1.0, n)  # shared by both methods: cancels in the pairs
        a = 1.0 + true_diff + seed_effect + gen.normal(0.0, 0.2, n)
        b = 1.0 + seed_effect + gen.normal(0.0, 0.2, n)
        d = paired_difference(a, b)
        hits += d.covers(true_diff)
        normal_hits += abs(d.mean - true_diff) <= 2.0 * d.se
    assert 0.93 <= hits / reps <= 0.97
    assert normal_hits / reps < 0.93
