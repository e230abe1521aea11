"""Tests for camegrad_mini.problems: gradients, Pareto sets and the linear-scalarization minimiser.

The problems are listed explicitly (not discovered), because other chapters append problems with
other shapes to the module; each such problem brings its own tests.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camegrad_mini.problems import FonsecaFleming, QuadraticPair, rotation

PROBLEMS = {
    "quadratic": QuadraticPair(),
    "ill_conditioned": QuadraticPair.ill_conditioned(),
    "ill_conditioned_100": QuadraticPair.ill_conditioned(ratio=100.0, angle=0.3),
    "shifted": QuadraticPair(c0=(0.5, -1.0), c1=(-0.3, 1.2), A0=((2.0, 0.5), (0.5, 1.0))),
    "fonseca_fleming": FonsecaFleming(),
}
QUADRATICS = {k: v for k, v in PROBLEMS.items() if isinstance(v, QuadraticPair)}

coords = st.floats(min_value=-2.5, max_value=2.5, allow_nan=False)


def finite_difference_grads(problem, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of every task loss, shape (T, 2)."""
    out = np.zeros((problem.n_tasks, 2))
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        out[:, j] = (problem.losses(x + e) - problem.losses(x - e)) / (2 * h)
    return out


@pytest.mark.parametrize("name", list(PROBLEMS))
@settings(max_examples=40, deadline=None)
@given(x1=coords, x2=coords)
def test_grads_match_finite_differences(name, x1, x2):
    p = PROBLEMS[name]
    x = np.array([x1, x2])
    fd = finite_difference_grads(p, x)
    scale = max(1.0, np.abs(fd).max())
    np.testing.assert_allclose(p.grads(x), fd, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_shapes_broadcast_over_grids(name):
    p = PROBLEMS[name]
    X = np.random.default_rng(0).uniform(-2, 2, size=(4, 3, 2))
    assert p.losses(X).shape == (4, 3, 2)
    assert p.grads(X).shape == (4, 3, 2, 2)
    # a grid evaluation equals point-by-point evaluation
    np.testing.assert_allclose(p.grads(X)[2, 1], p.grads(X[2, 1]))
    np.testing.assert_allclose(p.losses(X)[3, 0], p.losses(X[3, 0]))


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_weighted_loss_and_grad_are_linear_scalarization(name):
    p = PROBLEMS[name]
    x = np.array([0.3, -0.7])
    w = np.array([1.0, 4.0])
    assert p.weighted_loss(x, w) == pytest.approx(p.losses(x) @ w)
    np.testing.assert_allclose(p.weighted_grad(x, w), w[0] * p.grads(x)[0] + w[1] * p.grads(x)[1])


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_pareto_set_points_are_pareto_stationary(name):
    """0 is in the convex hull of {g_0, g_1}: the two gradients are antiparallel or one is zero."""
    p = PROBLEMS[name]
    ps = p.pareto_set(41)
    G = p.grads(ps)
    g0, g1 = G[:, 0], G[:, 1]
    n0, n1 = np.linalg.norm(g0, axis=1), np.linalg.norm(g1, axis=1)
    inner = (n0 > 1e-9) & (n1 > 1e-9)  # elsewhere one gradient vanishes: stationary by definition
    assert inner.sum() >= 39
    cross = g0[:, 0] * g1[:, 1] - g0[:, 1] * g1[:, 0]
    np.testing.assert_allclose(cross[inner] / (n0 * n1)[inner], 0.0, atol=1e-9)  # parallel
    assert ((g0 * g1).sum(1) <= 1e-12).all()  # ... and opposite
    # the end points are the task minimisers
    np.testing.assert_allclose(G[0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(G[-1, 1], 0.0, atol=1e-12)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_points_off_the_pareto_set_are_not_pareto_stationary(name):
    """A check that the previous test can fail: shift the set sideways and stationarity breaks."""
    p = PROBLEMS[name]
    ps = p.pareto_set(11)[1:-1] + np.array([0.05, -0.1])
    G = p.grads(ps)
    cross = G[:, 0, 0] * G[:, 1, 1] - G[:, 0, 1] * G[:, 1, 0]
    assert (np.abs(cross) > 1e-4).all()


def test_fonseca_fleming_pareto_set_is_the_segment_and_dominates_neighbours():
    p = FonsecaFleming()
    ps = p.pareto_set(5)
    np.testing.assert_allclose(ps[0], p.a)
    np.testing.assert_allclose(ps[-1], -p.a)
    np.testing.assert_allclose(ps[2], 0.0, atol=1e-15)
    # moving perpendicular to the segment increases both losses (Pareto optimality, locally)
    perp = np.array([1.0, -1.0]) / np.sqrt(2)
    for x in ps[1:-1]:
        for eps in (0.05, -0.05):
            assert (p.losses(x + eps * perp) > p.losses(x)).all()


@pytest.mark.parametrize("name", list(QUADRATICS))
@settings(max_examples=30, deadline=None)
@given(w0=st.floats(0.0, 10.0), w1=st.floats(0.0, 10.0))
def test_ls_minimizer_is_a_stationary_point_of_the_weighted_sum(name, w0, w1):
    if w0 + w1 < 1e-3:
        return
    p = QUADRATICS[name]
    x = p.ls_minimizer((w0, w1))
    g = p.weighted_grad(x, (w0, w1))
    assert np.linalg.norm(g) <= 1e-9 * max(1.0, w0 + w1) * 100
    # and a minimum: nearby points are not better (the weighted Hessian is positive definite)
    for d in np.random.default_rng(0).normal(size=(5, 2)) * 1e-2:
        assert p.weighted_loss(x + d, (w0, w1)) >= p.weighted_loss(x, (w0, w1))


def test_ls_minimizer_scale_invariance_and_closed_forms():
    p = QuadraticPair()
    np.testing.assert_allclose(p.ls_minimizer((1.0, 1.0)), p.ls_minimizer((3.0, 3.0)))
    np.testing.assert_allclose(p.ls_minimizer((1.0, 1.0)), [0.0, 0.0], atol=1e-15)  # equal curvatures: midpoint
    np.testing.assert_allclose(p.ls_minimizer((1.0, 4.0)), [0.6, 0.0])  # (1*(-1) + 4*1) / 5
    q = QuadraticPair.ill_conditioned()
    np.testing.assert_allclose(q.ls_minimizer((1.0, 0.0)), q.c0, atol=1e-12)
    np.testing.assert_allclose(q.ls_minimizer((0.0, 2.0)), q.c1, atol=1e-12)


def test_ill_conditioned_has_the_requested_curvatures():
    q = QuadraticPair.ill_conditioned(ratio=25.0, angle=0.4)
    np.testing.assert_allclose(np.linalg.eigvalsh(q.hessians[0]), [1.0, 25.0])
    np.testing.assert_allclose(np.linalg.eigvalsh(q.hessians[1]), [1.0, 25.0])
    v = rotation(0.4) @ np.array([1.0, 0.0])  # the stiff axis of A1 is the rotated x axis
    np.testing.assert_allclose(q.hessians[1] @ v, 25.0 * v)
    assert "ill-conditioned" in q.name


def test_ill_conditioned_pareto_set_is_bent():
    """Unequal curvatures bend the Pareto set away from the straight segment c0 -> c1."""
    q = QuadraticPair.ill_conditioned()
    assert np.abs(q.pareto_set(51)[:, 1]).max() > 0.05
    np.testing.assert_allclose(QuadraticPair().pareto_set(51)[:, 1], 0.0, atol=1e-12)


def test_rotation_is_orthogonal():
    R = rotation(0.7)
    np.testing.assert_allclose(R @ R.T, np.eye(2), atol=1e-15)
    np.testing.assert_allclose(rotation(np.pi / 2) @ [1.0, 0.0], [0.0, 1.0], atol=1e-15)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(A0=((1.0, 0.0), (0.0, -1.0))),  # indefinite
        dict(A1=((1.0, 0.5), (0.0, 1.0))),  # not symmetric
        dict(A0=((0.0, 0.0), (0.0, 0.0))),  # singular
    ],
)
def test_quadratic_pair_rejects_bad_matrices(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        QuadraticPair(**kwargs)


def test_quadratic_pair_rejects_wrong_shape():
    with pytest.raises(ValueError, match="A0"):
        QuadraticPair(A0=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def test_ill_conditioned_rejects_non_positive_ratio():
    with pytest.raises(ValueError, match="A0"):
        QuadraticPair.ill_conditioned(ratio=0.0)


@pytest.mark.parametrize("weights", [(-1.0, 1.0), (0.0, 0.0), (1.0, 2.0, 3.0), (1.0,)])
def test_ls_minimizer_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        QuadraticPair().ls_minimizer(weights)
