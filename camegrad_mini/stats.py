r"""Honest statistics over seeds: t-based confidence intervals for a mean and for a paired difference.

The book compares optimizers over a handful of seeds (chapter 5: 8 to 16 simulated seeds;
chapter 6: a few training runs). With so few seeds the normal rule "mean ± 2 standard errors" is
too narrow: the standard error is itself estimated from the same few values, and the right
multiplier is Student's t quantile with ``n - 1`` degrees of freedom (2.365 for ``n = 8``,
2.776 for ``n = 5``, at 95%). This module is the one place where that interval is computed.

Vocabulary, used the same way in every chapter:

* **standard deviation** (``sd``): the sample standard deviation of the per-seed values
  (``ddof=1``), i.e. how much one seed differs from another;
* **standard error** (``se``): ``sd / sqrt(n)``, the estimated standard deviation of the *mean*;
* **t interval**: ``mean ± t_{(1+level)/2, n-1} * se``, a ``level`` confidence interval for the
  population mean under the usual assumption that the per-seed values are independent draws
  from a normal distribution (for a paired comparison: that the per-seed *differences* are).

A **paired** comparison (:func:`paired_difference`) uses runs that share their seeds (in
chapter 5: the same noise draws), takes the per-seed differences ``a_s - b_s`` and builds the
one-sample interval on them. It is the same computation as ``scipy.stats.ttest_rel`` and is far
narrower than comparing two unpaired spreads when the seeds affect both methods alike.

Example::

    >>> from camegrad_mini.stats import paired_difference
    >>> d = paired_difference([0.30, 0.32, 0.29, 0.35], [0.28, 0.31, 0.28, 0.31])
    >>> str(d)
    '+0.020 [-0.003, +0.043] (n=4, t-CI 95%)'
    >>> d.covers(0.0), d.wins
    (True, 4)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

__all__ = ["TInterval", "mean_interval", "paired_difference"]

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class TInterval:
    """A t-based confidence interval for a mean over seeds.

    For :func:`paired_difference` the values are the per-seed differences ``a - b``; for
    :func:`mean_interval` they are the sample itself.

    Attributes:
        mean: Mean of the per-seed values.
        sd: Their sample standard deviation (``ddof=1``): the spread between seeds.
        se: Standard error of the mean, ``sd / sqrt(n)``.
        n: Number of seeds (values).
        df: Degrees of freedom, ``n - 1``.
        t_crit: Student's t quantile ``t_{(1+level)/2, df}`` (from ``scipy.stats.t``).
        lo: Lower end of the interval, ``mean - t_crit * se``.
        hi: Upper end, ``mean + t_crit * se``.
        level: Confidence level, e.g. 0.95.
        wins: Number of seeds with a positive value; for a paired difference, the number of
            seeds on which ``a > b``.
        per_seed: The per-seed values, in seed order.
    """

    mean: float
    sd: float
    se: float
    n: int
    df: int
    t_crit: float
    lo: float
    hi: float
    level: float
    wins: int
    per_seed: tuple[float, ...]

    @property
    def half_width(self) -> float:
        """``t_crit * se``: the distance from the mean to either end of the interval."""
        return self.t_crit * self.se

    def covers(self, value: float = 0.0) -> bool:
        """True when ``lo <= value <= hi`` (for a difference and ``value=0``: not resolved)."""
        return self.lo <= value <= self.hi

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely on one side of 0: the seeds resolve the sign."""
        return not self.covers(0.0)

    def format(self, digits: int = 3, *, signed: bool = True, details: bool = True) -> str:
        """The interval as text, e.g. ``"+0.012 [+0.004, +0.020] (n=8, t-CI 95%)"``.

        Args:
            digits: Decimals of the mean and the two ends.
            signed: Print an explicit ``+`` on non-negative numbers (natural for differences).
            details: Append ``"(n=..., t-CI ..%)"``.
        """
        if int(digits) != digits or digits < 0:
            raise ValueError(f"digits must be a non-negative integer, got {digits}")
        spec = f"{'+' if signed else ''}.{int(digits)}f"
        text = f"{self.mean:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"
        if details:
            text += f" (n={self.n}, t-CI {_percent(self.level)})"
        return text

    def __str__(self) -> str:
        return self.format()


def _percent(level: float) -> str:
    p = 100.0 * level
    return f"{p:.0f}%" if abs(p - round(p)) < 1e-9 else f"{p:g}%"


def _as_values(x: ArrayLike, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-seed values, got shape {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        i = int(bad[0])
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise ValueError(f"{name}[{i}] is {v[i]}, not a finite number{more}")
    return v


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return level


def _interval(values: np.ndarray, level: float, wins: int) -> TInterval:
    n = int(values.size)
    if n < 2:
        raise ValueError(f"need at least two seeds for an interval (the spread is undefined for one), got n={n}")
    mean = float(values.mean())
    sd = float(values.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    t_crit = float(_st.t.ppf(0.5 + level / 2.0, df))
    half = t_crit * se
    return TInterval(mean=mean, sd=sd, se=se, n=n, df=df, t_crit=t_crit, lo=mean - half, hi=mean + half,
                     level=level, wins=wins, per_seed=tuple(float(v) for v in values))


def mean_interval(x: ArrayLike, level: float = 0.95) -> TInterval:
    """t confidence interval for the mean of one sample of per-seed values.

    Args:
        x: Per-seed values, 1-D, at least two, all finite.
        level: Confidence level in (0, 1).

    Returns:
        A :class:`TInterval` (``wins`` counts the positive values).

    Raises:
        ValueError: fewer than two values, a non-finite value (its index is named), a level
            outside (0, 1), or input that is not 1-D.

    Explained in: Chapter 5, Exercises.
    """
    level = _check_level(level)
    v = _as_values(x, "x")
    return _interval(v, level, int(np.count_nonzero(v > 0)))


def paired_difference(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> TInterval:
    """t confidence interval for the mean of the per-seed differences ``a - b``.

    ``a[s]`` and ``b[s]`` must come from the same seed ``s`` (in chapter 5: the same noise
    draws), so that the differences cancel what the seed does to both. Equivalent to
    ``scipy.stats.ttest_rel(a, b)``: the interval excludes 0 exactly when that two-sided test's
    p-value is below ``1 - level``.

    Args:
        a: Per-seed metric of method A, 1-D, at least two values, all finite.
        b: Per-seed metric of method B on the same seeds, same length.
        level: Confidence level in (0, 1).

    Returns:
        A :class:`TInterval` of ``a - b``; ``wins`` is the number of seeds with ``a > b``.

    Raises:
        ValueError: mismatched lengths, fewer than two seeds, a non-finite value (its index is
            named), a level outside (0, 1), or input that is not 1-D.

    Explained in: Chapter 5, §5.2 (the main comparison), §5.4, §5.5 and §5.7.
    """
    level = _check_level(level)
    av, bv = _as_values(a, "a"), _as_values(b, "b")
    if av.size != bv.size:
        raise ValueError(f"a and b must have the same length (one value per seed), got {av.size} and {bv.size}")
    return _interval(av - bv, level, int(np.count_nonzero(av > bv)))
