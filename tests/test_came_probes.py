"""Tests for camegrad_mini.came_probes: chapter 4's experiments on CAME-Grad's stages."""
from __future__ import annotations

import numpy as np
import pytest

from camegrad_mini import came_probes
from camegrad_mini import optim as O


def test_polar_pair_geometry_and_validation():
    G = came_probes.polar_pair(np.radians(120), 2.0)
    assert np.allclose(np.linalg.norm(G, axis=1), [1.0, 2.0])
    assert G[0] @ G[1] / 2.0 == pytest.approx(np.cos(np.radians(120)))
    with pytest.raises(ValueError, match="r must"):
        came_probes.polar_pair(1.0, 0.0)
    with pytest.raises(ValueError, match="theta"):
        came_probes.polar_pair(np.nan, 1.0)


def test_method_directions_match_the_package_and_known_closed_forms():
    G = came_probes.polar_pair(np.radians(120), 1.0)
    dirs = came_probes.method_directions(G, [1.0, 4.0], rho=0.5, kappa=1.5, nu=0.2)
    assert set(came_probes.METHOD_NAMES) <= set(dirs)
    assert np.allclose(dirs["LS"], G[0] + 4 * G[1])
    assert np.allclose(dirs["mu"], G.mean(axis=0))
    # equal norms, raw S1: alpha* = (1/2, 1/2), so u* = (1 + rho) mu
    assert np.allclose(dirs["u*"], 1.5 * G.mean(axis=0))
    # S2: |u_en| = kappa |g_joint| (relative eps is tiny)
    assert np.linalg.norm(dirs["u_en"]) == pytest.approx(1.5 * np.linalg.norm(dirs["LS"]), rel=1e-6)
    assert np.allclose(dirs["g_final"], 0.8 * dirs["u_en"] + 0.2 * 1.5 * dirs["LS"])
    # every direction but LS helps both tasks here
    for name in came_probes.METHOD_NAMES:
        assert ((G @ dirs[name]) > 0).all() == (name != "LS"), name


def test_direction_table_rows():
    G = came_probes.polar_pair(np.radians(150), 3.0)
    rows = came_probes.direction_table(G, [1.0, 4.0])
    assert [r[0] for r in rows] == list(came_probes.METHOD_NAMES)
    table = {name: (inner, norm) for name, inner, norm in rows}
    assert table["u*"][0][0] < 0 < table["u*"][0][1]  # S1's ball cannot reach the cone here
    assert (table["MGDA"][0] > 0).all()
    assert table["LS"][1] == pytest.approx(np.linalg.norm(G[0] + 4 * G[1]))
    with pytest.raises(ValueError, match="grads"):
        came_probes.direction_table(np.ones(3))


def test_sample_conflicting_pairs_conflict_and_are_reproducible():
    P = came_probes.sample_conflicting_pairs(200, seed=3, r_range=(0.5, 2.0))
    assert P.shape == (200, 2, 2)
    assert (np.einsum("nd,nd->n", P[:, 0], P[:, 1]) < 0).all()
    ratio = np.linalg.norm(P[:, 1], axis=1) / np.linalg.norm(P[:, 0], axis=1)
    assert ratio.min() >= 0.5 - 1e-12 and ratio.max() <= 2.0 + 1e-12
    assert np.array_equal(P, came_probes.sample_conflicting_pairs(200, seed=3, r_range=(0.5, 2.0)))
    with pytest.raises(ValueError, match="n must"):
        came_probes.sample_conflicting_pairs(0)
    with pytest.raises(ValueError, match="r_range"):
        came_probes.sample_conflicting_pairs(5, r_range=(2.0, 1.0))


def _direct_fraction(pairs, nu, rho, weights):
    bad = []
    for G in pairs:
        d = O.came_grad(G @ G.T, weights, rho=rho, nu=nu).coefficients @ G
        bad.append(bool((G @ d < -1e-9 * np.linalg.norm(d) * np.linalg.norm(G, axis=1)).any()))
    return np.mean(bad)


def test_fusion_conflict_fraction_matches_direct_computation():
    P = came_probes.sample_conflicting_pairs(120, seed=1)
    nus = [0.0, 0.35, 1.0]
    frac = came_probes.fusion_conflict_fraction(P, nus, [0.5], [1.0, 4.0])
    assert frac.shape == (1, 3)
    for k, nu in enumerate(nus):
        assert frac[0, k] == pytest.approx(_direct_fraction(P, nu, 0.5, [1.0, 4.0]))
    # at rho = 0 with equal weights every nu gives the same direction
    flat = came_probes.fusion_conflict_fraction(P, nus, [0.0], [1.0, 1.0])
    assert np.ptp(flat) == 0.0
    # conditioned on a conflict-free u*, nothing conflicts at nu = 0
    cond = came_probes.fusion_conflict_fraction(P, nus, [0.5], [1.0, 4.0], given_s1_ok=True)
    assert cond[0, 0] == 0.0 and cond[0, 2] > 0.0
    cond_no_zero = came_probes.fusion_conflict_fraction(P, nus[1:], [0.5], [1.0, 4.0], given_s1_ok=True)
    assert np.allclose(cond_no_zero[0], cond[0, 1:])
    with pytest.raises(ValueError, match="nus"):
        came_probes.fusion_conflict_fraction(P, [1.5], [0.5])
    with pytest.raises(ValueError, match="pairs"):
        came_probes.fusion_conflict_fraction(P[0], [0.5], [0.5])


def test_kappa_is_a_learning_rate_multiplier_under_sgd_and_nearly_nothing_under_adamw():
    sgd = came_probes.kappa_runs("sgd", [1.0, 1.5], lr=0.05, steps=8)
    assert sgd.shape[:2] == (2, 9)
    assert np.abs(sgd[1] - sgd[0]).max() > 1e-3
    faster = came_probes.kappa_runs("sgd", [1.0], lr=0.075, steps=8)
    assert np.allclose(faster[0], sgd[1], atol=1e-12)
    adamw = came_probes.kappa_runs("adamw", [1.0, 1.5], lr=0.01, steps=8)
    moved = np.abs(adamw[0, -1] - adamw[0, 0]).max()
    assert np.abs(adamw[1] - adamw[0]).max() < 1e-6 * moved
    # with the default shared="auto", the heads are not scaled by kappa: the runs differ
    # differently from shared="all"
    auto = came_probes.kappa_runs("sgd", [1.0, 1.5], lr=0.05, steps=8, shared="auto")
    assert not np.allclose(auto[1], sgd[1])
    with pytest.raises(ValueError, match="optimizer"):
        came_probes.kappa_runs("adam", [1.0])
    with pytest.raises(ValueError, match="steps"):
        came_probes.kappa_runs("sgd", [1.0], steps=0)
