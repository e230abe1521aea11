"""One contract for every aggregator (in the manner of torchjd's aggregator tests).

Each aggregator in :data:`AGGREGATORS` is checked against the same properties and the same
table of expected values. The properties, and where one does not hold:

- **permutation**: permuting the tasks permutes the coefficients and leaves the direction
  ``d = sum_i c_i g_i`` unchanged. PCGrad draws a random projection order from three tasks on,
  so it is checked on two tasks only (its order does not matter there).
- **positive homogeneity**: scaling every gradient by ``s > 0`` scales ``d`` by ``s`` (the
  coefficients are scale free). CAME-Grad holds it with the default relative epsilon; with
  ``eps_mode="absolute"`` it does not (the epsilon of S2 is a fixed number), which
  :func:`test_came_with_absolute_eps_is_not_homogeneous` shows. kappa is not a homogeneity: it
  multiplies the direction (Chapter 4, §4.5) and is part of the expected scale below.
- **no conflict** (``<d, g_i> >= 0`` for every task) only where the method promises it: MGDA
  always, PCGrad for two tasks. LS, CAGrad and CAME-Grad do not promise it (Chapter 4, §4.6).
- **agreement with LS**: when every task has the same gradient, ``d`` is LS's direction times a
  known factor: 1 for LS, PCGrad and MGDA, ``(1 + c) / (1 + c**2)`` for CAGrad (rescale=1),
  ``kappa`` for CAME-Grad.
- **degenerate input**: zero gradients, identical gradients and exactly opposite gradients give
  finite coefficients.
- **expected values**: one table of small two-task inputs, with directions computed here
  independently (closed forms, and a scalar minimisation for the duals).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from camegrad_mini.optim import CAME, MGDA, Aggregator, CAGrad, LinearScalarization, PCGrad
from camegrad_mini.optim.aggregators import AGGREGATORS

RHO, KAPPA, NU, C = 0.5, 1.5, 0.2, 0.5

#: name -> (factory, scale against LS on identical gradients, promises no conflict for T tasks)
CASES: dict[str, tuple[Callable[[], Aggregator], float, Callable[[int], bool]]] = {
    "ls": (LinearScalarization, 1.0, lambda t: False),
    "pcgrad": (lambda: PCGrad(seed=0), 1.0, lambda t: t == 2),
    "mgda": (MGDA, 1.0, lambda t: True),
    "cagrad": (lambda: CAGrad(c=C, rescale=1), (1 + C) / (1 + C * C), lambda t: False),
    "came": (lambda: CAME(rho=RHO, kappa=KAPPA, nu=NU), KAPPA, lambda t: False),
}
NAMES = sorted(CASES)


def test_the_contract_covers_every_aggregator() -> None:
    assert set(CASES) == set(AGGREGATORS)


def _direction(agg: Aggregator, grads: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    coef = agg(grads @ grads.T, weights).coefficients
    assert np.all(np.isfinite(coef))
    return coef @ grads


def _grads(min_tasks: int = 2, max_tasks: int = 4) -> st.SearchStrategy[np.ndarray]:
    entries = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 2))
    return st.integers(min_tasks, max_tasks).flatmap(
        lambda t: st.integers(2, 5).flatmap(
            lambda d: st.lists(entries, min_size=t * d, max_size=t * d).map(
                lambda xs: np.array(xs, dtype=np.float64).reshape(t, d))))


def _close(a: np.ndarray, b: np.ndarray, unit: float) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * max(unit, 1e-12))


CONTRACT = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", NAMES)
@CONTRACT
@given(grads=_grads(), data=st.data())
def test_permutation(name: str, grads: np.ndarray, data: st.DataObject) -> None:
    t = grads.shape[0]
    if name == "pcgrad" and t > 2:
        grads = grads[:2]
        t = 2
    perm = np.array(data.draw(st.permutations(range(t))))
    weights = np.linspace(1.0, 2.0, t)
    unit = float(np.abs(grads).sum(axis=1).max() * weights.max() * t * 2)
    _close(_direction(CASES[name][0](), grads[perm], weights[perm]),
           _direction(CASES[name][0](), grads, weights), unit)


@pytest.mark.parametrize("name", NAMES)
@CONTRACT
@given(grads=_grads(), scale=st.sampled_from([1e-6, 0.5, 3.0, 1e6]))
def test_positive_homogeneity(name: str, grads: np.ndarray, scale: float) -> None:
    unit = float(np.abs(grads).sum(axis=1).max() * len(grads) * 2)
    _close(_direction(CASES[name][0](), scale * grads) / scale, _direction(CASES[name][0](), grads), unit)


def test_came_with_absolute_eps_is_not_homogeneous() -> None:
    grads = np.array([[1e-9, 0.0], [0.0, 1e-9]])
    agg = CAME(eps=1e-8, eps_mode="absolute")
    small, large = _direction(agg, grads), _direction(agg, grads * 1e9) / 1e9
    assert not np.allclose(small, large, rtol=1e-3, atol=0.0)


@pytest.mark.parametrize("name", NAMES)
@CONTRACT
@given(grads=_grads())
def test_no_conflict_where_promised(name: str, grads: np.ndarray) -> None:
    if name == "pcgrad":
        grads = grads[:2]
    factory, _, promises = CASES[name]
    if not promises(grads.shape[0]):
        pytest.skip(f"{name} does not promise non-conflict for {grads.shape[0]} tasks")
    d = _direction(factory(), grads)
    unit = float(np.abs(grads).sum(axis=1).max()) ** 2 * len(grads) * 2
    assert np.all(grads @ d >= -1e-7 * max(unit, 1e-12))


@pytest.mark.parametrize("name", NAMES)
@CONTRACT
@given(grads=_grads(1, 1), t=st.integers(1, 4))
def test_equals_ls_when_gradients_agree(name: str, grads: np.ndarray, t: int) -> None:
    factory, scale, _ = CASES[name]
    same = np.repeat(grads, t, axis=0)
    unit = float(np.abs(grads).sum()) * t * 2
    _close(_direction(factory(), same), scale * _direction(LinearScalarization(), same), unit)


DEGENERATE = {
    "zero": np.zeros((2, 3)),
    "identical": np.array([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0]]),
    "opposite": np.array([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0]]),
    "zero and nonzero": np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
    "three, one opposite": np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_finite_on_degenerate_input(name: str, case: str) -> None:
    grads = DEGENERATE[case]
    result = CASES[name][0]()(grads @ grads.T)
    assert np.all(np.isfinite(result.coefficients))
    assert result.coefficients.shape == (grads.shape[0],)


# ------------------------------------------------------------------ expected values, computed here
def _dual_direction(g: np.ndarray, radius_factor: float) -> np.ndarray:
    """u* = mu + r ||mu|| g_a / ||g_a|| with a = argmin over [0, 1] of <g_a, mu> + r ||mu|| ||g_a||,
    g_a = a g_0 + (1 - a) g_1 (two tasks; the dual of CAGrad and of CAME-Grad's S1)."""
    mu = g.mean(axis=0)
    radius = radius_factor * np.linalg.norm(mu)

    def objective(a: float) -> float:
        ga = a * g[0] + (1 - a) * g[1]
        return float(ga @ mu + radius * np.linalg.norm(ga))

    a = minimize_scalar(objective, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-12}).x
    ga = a * g[0] + (1 - a) * g[1]
    return mu + radius * ga / np.linalg.norm(ga)


def expected(name: str, g: np.ndarray) -> np.ndarray:
    """The direction of each method on two raw gradients with unit task weights."""
    ls = g[0] + g[1]
    if name == "ls":
        return ls
    if name == "pcgrad":
        dot = g[0] @ g[1]
        if dot >= 0:
            return ls
        return g[0] - dot / (g[1] @ g[1]) * g[1] + g[1] - dot / (g[0] @ g[0]) * g[0]
    if name == "mgda":  # closed form of the min-norm point of the segment
        diff = g[0] - g[1]
        a = min(max(float((g[1] @ g[1] - g[0] @ g[1]) / (diff @ diff)), 0.0), 1.0)
        return 2 * (a * g[0] + (1 - a) * g[1])
    if name == "cagrad":
        return 2 * _dual_direction(g, C) / (1 + C * C)
    u = _dual_direction(g, RHO)  # CAME-Grad: S1, S2 (eps relative, negligible), S3
    u_en = u * KAPPA * np.linalg.norm(ls) / np.linalg.norm(u)
    return (1 - NU) * u_en + NU * KAPPA * ls


TABLE = {
    "orthogonal": np.array([[1.0, 0.0], [0.0, 2.0]]),
    "conflicting": np.array([[1.0, 0.0], [-0.5, 1.0]]),
    "obtuse, unequal": np.array([[3.0, 1.0], [-1.0, 0.2]]),
    "acute": np.array([[1.0, 1.0], [2.0, 0.5]]),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(TABLE))
def test_expected_values(name: str, case: str) -> None:
    g = TABLE[case]
    got = _direction(CASES[name][0](), g)
    np.testing.assert_allclose(got, expected(name, g), rtol=1e-6, atol=1e-7)


def test_expected_values_by_hand() -> None:
    """A few entries of the table in closed form, so that the table's own code is checked too."""
    g = TABLE["orthogonal"]
    np.testing.assert_allclose(expected("mgda", g), [1.6, 0.8])  # 2 (4/5 g_0 + 1/5 g_1)
    np.testing.assert_allclose(expected("pcgrad", g), [1.0, 2.0])
    c = TABLE["conflicting"]
    np.testing.assert_allclose(expected("pcgrad", c), [0.8, 1.4])  # (0.8, 0.4) + (0, 1)
    same = np.array([[1.0, 2.0], [1.0, 2.0]])  # CAME-Grad on agreeing gradients: kappa * LS
    assert math.isclose(float(np.linalg.norm(expected("came", same))), KAPPA * 2 * math.sqrt(5.0), rel_tol=1e-6)
