"""Tests for camegrad_mini.geometry (chapter 1's two-task, 2-D helpers)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camegrad_mini import geometry as geo
from camegrad_mini.problems import FonsecaFleming, QuadraticPair

angles = st.floats(min_value=-np.pi, max_value=np.pi, allow_nan=False)
lengths = st.floats(min_value=0.1, max_value=10.0)


def unit(a: float) -> np.ndarray:
    return np.array([np.cos(a), np.sin(a)])


def _inside(arc, a: float) -> bool:
    start, end = arc
    rel = (a - start) % (2 * np.pi)
    return 0 < rel < end - start


# --- cosine ---------------------------------------------------------------------------------

def test_cosine_known_values_and_nan_for_zero():
    assert geo.cosine([1, 0], [0, 2]) == pytest.approx(0.0)
    assert geo.cosine([1, 0], [-3, 0]) == pytest.approx(-1.0)
    assert geo.cosine([1, 1], [2, 2]) == pytest.approx(1.0)
    assert np.isnan(geo.cosine([0, 0], [1, 0]))
    c = geo.cosine(np.ones((3, 4, 2)), np.ones((3, 4, 2)))
    assert c.shape == (3, 4)


def test_cosine_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="g0 and g1"):
        geo.cosine([1, 0, 0], [1, 0])


# --- common-descent arc ---------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(a0=angles, a1=angles, r0=lengths, r1=lengths)
def test_arc_of_two_vectors_has_width_pi_minus_angle_and_contains_exactly_common_descent(a0, a1, r0, r1):
    g0, g1 = r0 * unit(a0), r1 * unit(a1)
    between = abs((a0 - a1 + np.pi) % (2 * np.pi) - np.pi)  # exact, unlike arccos near 0
    arc = geo.common_descent_arc([g0, g1])
    if np.pi - between < 1e-6:  # (nearly) opposite: empty or a sliver
        assert arc is None or arc[1] - arc[0] < 1e-5
        return
    assert arc is not None
    assert arc[1] - arc[0] == pytest.approx(np.pi - between, abs=1e-9)
    # membership agrees with the definition <d, g_i> > 0 on a ring of test directions
    for a in np.linspace(-np.pi, np.pi, 73):
        d = unit(a)
        margin = min(d @ g0 / r0, d @ g1 / r1)
        if abs(margin) > 1e-6:
            assert _inside(arc, a) == (margin > 0)


def test_arc_is_empty_at_pareto_stationary_points():
    assert geo.common_descent_arc([[1.0, 0.0], [-2.0, 0.0]]) is None  # opposite
    assert geo.common_descent_arc([[0.0, 0.0], [1.0, 0.0]]) is None  # one task already stationary
    # three vectors whose hull contains 0 (Gordan's theorem: no common descent direction)
    assert geo.common_descent_arc([unit(0.0), unit(2.2), unit(-2.2)]) is None


def test_arc_of_one_vector_is_its_half_plane_and_three_vectors_intersect():
    arc = geo.common_descent_arc([[0.0, 1.0]])
    assert arc[1] - arc[0] == pytest.approx(np.pi)
    assert _inside(arc, np.pi / 2) and not _inside(arc, -np.pi / 2)
    arc3 = geo.common_descent_arc([unit(0.0), unit(0.5), unit(1.2)])
    assert arc3[1] - arc3[0] == pytest.approx(np.pi - 1.2)
    assert _inside(arc3, 0.6)
    assert not _inside(arc3, -0.5)


def test_arc_handles_angles_across_the_branch_cut():
    arc = geo.common_descent_arc([unit(np.pi - 0.1), unit(-np.pi + 0.1)])  # both point left
    assert arc[1] - arc[0] == pytest.approx(np.pi - 0.2)
    assert _inside(arc, np.pi)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros(2), np.zeros((0, 2)), [[np.nan, 1.0]]])
def test_arc_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="grads"):
        geo.common_descent_arc(bad)


# --- Pareto-stationarity gap ----------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(a0=angles, a1=angles, r0=lengths, r1=lengths)
def test_gap_equals_brute_force_min_over_the_segment(a0, a1, r0, r1):
    g0, g1 = r0 * unit(a0), r1 * unit(a1)
    a = np.linspace(0, 1, 20001)[:, None]
    brute = np.linalg.norm(a * g0 + (1 - a) * g1, axis=1).min()
    assert geo.pareto_stationarity_gap(g0, g1) == pytest.approx(brute, abs=1e-3 * max(r0, r1))


def test_gap_known_cases():
    assert geo.pareto_stationarity_gap([1.0, 0.0], [-3.0, 0.0]) == pytest.approx(0.0)
    assert geo.pareto_stationarity_gap([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.sqrt(0.5))
    assert geo.pareto_stationarity_gap([2.0, 1.0], [2.0, 1.0]) == pytest.approx(np.sqrt(5.0))
    assert geo.pareto_stationarity_gap([1.0, 0.0], [3.0, 0.0]) == pytest.approx(1.0)  # nearest end


def test_gap_vanishes_on_the_pareto_set_and_not_off_it():
    for p in (QuadraticPair.ill_conditioned(), FonsecaFleming()):
        G = p.grads(p.pareto_set(21))
        assert geo.pareto_stationarity_gap(G[:, 0], G[:, 1]).max() < 1e-10
        G = p.grads(p.pareto_set(21)[1:-1] + np.array([0.1, -0.1]))  # across the set, not along it
        assert geo.pareto_stationarity_gap(G[:, 0], G[:, 1]).min() > 1e-4


# --- conflict map ---------------------------------------------------------------------------

def test_conflict_map_of_the_isotropic_pair_is_the_thales_disk():
    """For L_i = |x - c_i|^2 / 2 the gradients conflict exactly inside the circle on [c_0, c_1]."""
    m = geo.conflict_map(QuadraticPair(), (1.0, 1.0), n=81)
    inside = m.X**2 + m.Y**2 < 1.0
    off_circle = np.abs(m.X**2 + m.Y**2 - 1.0) > 0.05
    np.testing.assert_array_equal((m.dot < 0)[off_circle], inside[off_circle])
    assert m.conflict_fraction == pytest.approx(np.pi / 16, abs=0.02)  # disk area / box area
    # with equal weights on equal curvatures g_joint = 2x - (c0 + c1) never leaves the cone
    # outside the conflict disk
    assert not (m.joint_leaves_cone & ~inside & off_circle).any()


def test_conflict_map_leave_region_grows_with_unbalanced_weights():
    p = QuadraticPair()
    balanced = geo.conflict_map(p, (1.0, 1.0), n=61).leave_fraction
    official = geo.conflict_map(p, (1.0, 4.0), n=61).leave_fraction
    assert official > balanced
    m = geo.conflict_map(p, (1.0, 4.0), n=61)
    i, j = np.unravel_index(np.argmin((m.X + 0.9) ** 2 + m.Y**2), m.X.shape)
    assert m.joint_leaves_cone[i, j]  # near task 0's minimum the heavy task-1 gradient dominates


def test_conflict_map_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        geo.conflict_map(QuadraticPair(), (1.0, -4.0))


def test_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        geo.grid(n=1)
    with pytest.raises(ValueError, match="xlim"):
        geo.grid(xlim=(1.0, -1.0))


# --- LS from many starts --------------------------------------------------------------------

def test_ls_minimize_matches_the_closed_form_on_quadratics():
    q = QuadraticPair.ill_conditioned()
    starts = np.random.default_rng(0).uniform(-2, 2, size=(6, 2))
    for w in [(1.0, 0.0), (0.7, 0.3), (1.0, 4.0)]:
        r = geo.ls_minimize(q, w, starts)
        assert r.converged.all()
        np.testing.assert_allclose(r.x, np.broadcast_to(q.ls_minimizer(w), r.x.shape), atol=1e-6)
        assert len(r.distinct(1e-4)) == 1


def test_ls_minimize_on_fonseca_fleming_finds_two_end_minima_not_the_middle():
    p = FonsecaFleming()
    starts = np.random.default_rng(1).uniform(-2, 2, size=(16, 2))
    r = geo.ls_minimize(p, (0.5, 0.5), starts)
    ends = r.distinct(1e-4)
    assert len(ends) == 2
    s = geo.polyline_coordinate(ends, p.pareto_set(201))
    assert (np.minimum(s, 1 - s) < 0.1).all()  # both near an end of the Pareto set
    # the middle of the Pareto set is a stationary point of the weighted sum, but a maximum along it
    mid = np.zeros(2)
    np.testing.assert_allclose(p.weighted_grad(mid, (0.5, 0.5)), 0.0, atol=1e-12)
    assert p.weighted_loss(mid, (0.5, 0.5)) > r.value.max()


def test_ls_minimize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        geo.ls_minimize(QuadraticPair(), (0.0, 0.0), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="starts"):
        geo.ls_minimize(QuadraticPair(), (1.0, 1.0), np.zeros((2, 3)))


# --- polyline coordinate --------------------------------------------------------------------

def test_polyline_coordinate_on_a_bent_line():
    V = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]])  # length 4
    s = geo.polyline_coordinate(np.array([[0.0, 0.0], [0.5, 0.2], [1.2, 2.0], [5.0, 9.0]]), V)
    np.testing.assert_allclose(s, [0.0, 0.125, 0.75, 1.0])


def test_polyline_coordinate_rejects_bad_polyline():
    with pytest.raises(ValueError, match="polyline"):
        geo.polyline_coordinate(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="zero length"):
        geo.polyline_coordinate(np.zeros((1, 2)), np.zeros((3, 2)))


def test_hull_nearest_point_is_on_the_segment_and_orthogonal_to_it():
    g0, g1 = np.array([2.0, 1.0]), np.array([-1.0, 2.0])
    p = geo.hull_nearest_point(g0, g1)
    # p lies on the line through g0 and g1 ...
    cross = (p - g1)[0] * (g0 - g1)[1] - (p - g1)[1] * (g0 - g1)[0]
    assert cross == pytest.approx(0.0, abs=1e-12)
    assert p @ (g0 - g1) == pytest.approx(0.0, abs=1e-12)  # ... and is the foot of the perpendicular
    np.testing.assert_allclose(geo.hull_nearest_point([1.0, 0.0], [3.0, 0.0]), [1.0, 0.0])  # clipped to an end
    np.testing.assert_allclose(geo.hull_nearest_point(np.ones((4, 2)), np.ones((4, 2))), np.ones((4, 2)))


# --- the weight that makes a point stationary -----------------------------------------------

@settings(max_examples=60, deadline=None)
@given(a=angles, r0=lengths, gamma=st.floats(min_value=0.01, max_value=100.0))
def test_stationary_weight_cancels_opposite_gradients(a, r0, gamma):
    g0 = r0 * unit(a)
    g1 = -gamma * g0  # a Pareto-stationary pair: |g1| / |g0| = gamma
    a1 = float(geo.stationary_weight(g0, g1))
    assert a1 == pytest.approx(1.0 / (1.0 + gamma), rel=1e-9)  # = |g0| / (|g0| + |g1|)
    assert np.linalg.norm((1 - a1) * g0 + a1 * g1) <= 1e-9 * r0 * (1 + gamma)


@settings(max_examples=60, deadline=None)
@given(a0=angles, a1=angles, r0=lengths, r1=lengths)
def test_stationary_weight_is_the_hull_point_and_swaps_with_the_tasks(a0, a1, r0, r1):
    g0, g1 = r0 * unit(a0), r1 * unit(a1)
    w = float(geo.stationary_weight(g0, g1))
    assert 0.0 <= w <= 1.0
    np.testing.assert_allclose((1 - w) * g0 + w * g1, geo.hull_nearest_point(g0, g1), atol=1e-12)
    if np.linalg.norm(g0 - g1) > 1e-6:
        assert float(geo.stationary_weight(g1, g0)) == pytest.approx(1.0 - w, abs=1e-9)
    # nothing on the segment is shorter (brute force)
    grid_w = np.linspace(0, 1, 201)[:, None]
    best_on_grid = np.linalg.norm((1 - grid_w) * g0 + grid_w * g1, axis=1).min()
    assert np.linalg.norm((1 - w) * g0 + w * g1) <= best_on_grid + 1e-12


def test_stationary_weight_vectorises_and_handles_equal_gradients():
    G = np.random.default_rng(0).normal(size=(3, 4, 2, 2))
    w = geo.stationary_weight(G[..., 0, :], G[..., 1, :])
    assert w.shape == (3, 4)
    assert float(geo.stationary_weight([1.0, 2.0], [1.0, 2.0])) == 0.5
    assert float(geo.stationary_weight([1.0, 0.0], [2.0, 0.0])) == 0.0  # the shorter one alone
    with pytest.raises(ValueError, match="same shape"):
        geo.stationary_weight(np.zeros((2, 2)), np.zeros(2))


# --- Hessian of a weighted sum --------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(w0=st.floats(min_value=0.0, max_value=5.0), w1=st.floats(min_value=0.1, max_value=5.0),
       x1=st.floats(min_value=-2, max_value=2), x2=st.floats(min_value=-2, max_value=2))
def test_weighted_hessian_of_quadratics_is_the_weighted_curvature(w0, w1, x1, x2):
    q = QuadraticPair.ill_conditioned()
    H = geo.weighted_hessian(q, np.array([x1, x2]), (w0, w1))
    np.testing.assert_allclose(H, w0 * q.hessians[0] + w1 * q.hessians[1], atol=1e-7 * (1 + w0 + w1) * 10)


def test_weighted_hessian_is_symmetric_linear_in_the_weights_and_vectorised():
    p = FonsecaFleming()
    X = np.random.default_rng(2).uniform(-1.5, 1.5, size=(5, 3, 2))
    H0, H1 = geo.weighted_hessian(p, X, (1, 0)), geo.weighted_hessian(p, X, (0, 1))
    H = geo.weighted_hessian(p, X, (0.3, 0.7))
    assert H.shape == (5, 3, 2, 2)
    np.testing.assert_allclose(H, np.swapaxes(H, -1, -2))
    np.testing.assert_allclose(H, 0.3 * H0 + 0.7 * H1, atol=1e-9)


def test_weighted_hessian_matches_the_closed_form_on_the_fonseca_fleming_set():
    # At x = s a, with the weight that makes it stationary, the Hessian in the basis (a, b) is
    # exp(-(1 - s)^2) / D(s) * diag(4 (2 s^2 - 1), 4), D(s) = (1 - s) e^{4s} + 1 + s (chapter 1).
    p = FonsecaFleming()
    b = np.array([1.0, -1.0]) / np.sqrt(2.0)
    for s in (-0.9, -0.5, 0.0, 0.3, 0.70, 0.72, 0.95):
        x = s * p.a
        g0, g1 = p.grads(x)
        a1 = float(geo.stationary_weight(g0, g1))
        D = (1 - s) * np.exp(4 * s) + 1 + s
        assert a1 == pytest.approx((1 - s) * np.exp(4 * s) / D, rel=1e-9)
        H = geo.weighted_hessian(p, x, (1 - a1, a1))
        scale = np.exp(-(1 - s) ** 2) / D
        assert p.a @ H @ p.a == pytest.approx(4 * (2 * s * s - 1) * scale, abs=1e-7)
        assert b @ H @ b == pytest.approx(4 * scale, abs=1e-7)
        assert p.a @ H @ b == pytest.approx(0.0, abs=1e-7)


def test_weighted_hessian_rejects_bad_arguments():
    q = QuadraticPair()
    with pytest.raises(ValueError, match="weights"):
        geo.weighted_hessian(q, np.zeros(2), (0.0, 0.0))
    with pytest.raises(ValueError, match="weights"):
        geo.weighted_hessian(q, np.zeros(2), (-1.0, 2.0))
    with pytest.raises(ValueError, match="step"):
        geo.weighted_hessian(q, np.zeros(2), (1.0, 1.0), step=0.0)


# --- sweeping the weight along a sampled Pareto set ----------------------------------------

def _ff_curve(n=2001):
    p = FonsecaFleming()
    s = np.linspace(1.0, -1.0, n)  # from task 0's minimiser to task 1's
    return s, p.losses(s[:, None] * p.a)


def test_scalarization_sweep_on_a_convex_front_has_one_minimiser_per_weight_moving_monotonically():
    q = QuadraticPair()
    F = q.losses(q.pareto_set(501))
    sweep = geo.scalarization_sweep(F, np.linspace(0, 1, 101))
    assert len(sweep.local_index) == 101  # one local minimum per weight ...
    np.testing.assert_array_equal(sweep.local_weight, np.arange(101))
    np.testing.assert_array_equal(sweep.local_index, sweep.global_index)  # ... and it is the global one
    assert (np.diff(sweep.global_index) >= 0).all()  # more weight on task 1 moves towards its end
    assert sweep.global_index[0] == 0 and sweep.global_index[-1] == 500
    assert sweep.reached("global").mean() > 0.15  # the isotropic pair's weights spread over the set


def test_scalarization_sweep_on_fonseca_fleming_never_reaches_the_concave_middle():
    s, F = _ff_curve()
    sweep = geo.scalarization_sweep(F, np.linspace(0, 1, 1001))
    assert (np.abs(s[sweep.local_index]) > 1 / np.sqrt(2)).all()
    from_end = np.minimum(1 - s, 1 + s) / 2
    assert from_end[sweep.local_index].max() < (1 - 1 / np.sqrt(2)) / 2
    assert from_end[sweep.local_index].max() > 0.13  # the end pieces are reached almost to the inflection
    assert from_end[sweep.global_index].max() < 0.03  # global minimisers hug the two ends
    # a weight that has two local minima along the set has its global one among them
    for k in np.unique(sweep.local_weight):
        assert sweep.global_index[k] in sweep.local_index[sweep.local_weight == k]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), m=st.integers(1, 15))
def test_scalarization_sweep_properties_on_random_curves(seed, n, m):
    rng = np.random.default_rng(seed)
    F = rng.uniform(0, 1, size=(n, 2))
    ws = rng.uniform(0, 1, size=m)
    sweep = geo.scalarization_sweep(F, ws)
    V = (1 - ws)[:, None] * F[:, 0] + ws[:, None] * F[:, 1]
    np.testing.assert_array_equal(sweep.global_index, V.argmin(1))
    # every listed local minimum is lower than its neighbours, and every weight has at least one
    for k, j in zip(sweep.local_weight, sweep.local_index, strict=True):
        assert (j == 0 or V[k, j] < V[k, j - 1]) and (j == n - 1 or V[k, j] < V[k, j + 1])
    assert set(sweep.local_weight) == set(range(m))
    # relabelling the tasks and reversing the curve mirrors the answer
    mirror = geo.scalarization_sweep(F[::-1, ::-1], 1 - ws)
    np.testing.assert_array_equal(np.sort(n - 1 - mirror.local_index), np.sort(sweep.local_index))
    assert sweep.reached("local").sum() >= sweep.reached("global").sum()


def test_scalarization_sweep_rejects_bad_input():
    F = np.zeros((5, 2))
    with pytest.raises(ValueError, match="losses"):
        geo.scalarization_sweep(np.zeros((5, 3)), [0.5])
    with pytest.raises(ValueError, match="losses"):
        geo.scalarization_sweep(np.full((5, 2), np.nan), [0.5])
    with pytest.raises(ValueError, match="weights"):
        geo.scalarization_sweep(F, [1.5])
    with pytest.raises(ValueError, match="weights"):
        geo.scalarization_sweep(F, [])
    with pytest.raises(ValueError, match="kind"):
        geo.scalarization_sweep(F + np.arange(5)[:, None], [0.5]).reached("best")
