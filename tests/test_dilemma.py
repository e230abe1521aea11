"""Tests for camegrad_mini.dilemma, camegrad_mini.dilemma_derivations and SharpFlatWells.

The symbolic derivations and the numeric closed forms are checked against each other and
against direct computation on vectors; the noise model against empirical covariances; the
simulator against the exact stationary variance of noisy gradient descent on a quadratic.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from camegrad_mini import dilemma
from camegrad_mini import dilemma_derivations
from camegrad_mini.problems import FonsecaFleming, QuadraticPair, SharpFlatWells

RNG_SEED = 1234


# ------------------------------------------------------------------ closed forms and statistics
def test_two_task_weights_and_validation():
    np.testing.assert_allclose(dilemma.two_task_weights(0.8), [0.2, 0.8])
    with pytest.raises(ValueError, match="w must lie"):
        dilemma.two_task_weights(1.5)
    with pytest.raises(ValueError, match="weights"):
        dilemma.joint_gradient(np.ones((2, 2)), [1.0, -1.0])


def test_polar_gradients_have_the_requested_angle_and_ratio():
    G = dilemma.polar_gradients(np.radians(135), 3.0, n0=2.0)
    n = np.linalg.norm(G, axis=-1)
    np.testing.assert_allclose(n, [2.0, 6.0])
    np.testing.assert_allclose(dilemma.gradient_cosine(G), np.cos(np.radians(135)))


def test_energy_ratio_special_cases():
    w = [0.5, 0.5]
    assert dilemma.energy_ratio(np.array([[1.0, 0.0], [0.0, 1.0]]), w) == pytest.approx(1.0)  # orthogonal
    assert dilemma.energy_ratio(np.array([[1.0, 0.0], [1.0, 0.0]]), w) == pytest.approx(2.0)  # aligned, balanced
    assert dilemma.energy_ratio(np.array([[1.0, 0.0], [-1.0, 0.0]]), w) == pytest.approx(0.0)  # exact cancellation
    assert np.isnan(dilemma.energy_ratio(np.zeros((2, 2)), w))


@settings(max_examples=60, deadline=None)
@given(phi=st.floats(0, np.pi), gamma=st.floats(0.05, 20), w=st.floats(0.01, 0.99))
def test_energy_ratio_closed_form_matches_vectors(phi, gamma, w):
    G = dilemma.polar_gradients(phi, gamma)
    wts = dilemma.two_task_weights(w)
    gamma_w = wts[1] * gamma / wts[0]
    assert dilemma.energy_ratio(G, wts) == pytest.approx(dilemma.energy_ratio_closed_form(phi, gamma_w),
                                                         rel=1e-9, abs=1e-12)


def test_energy_ratio_is_rotation_invariant_in_higher_dimension():
    rng = np.random.default_rng(RNG_SEED)
    G = rng.normal(size=(5, 2, 7))  # 5 stacks of two 7-D gradients
    Q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    w = [0.3, 0.7]
    np.testing.assert_allclose(dilemma.energy_ratio(G, w), dilemma.energy_ratio(G @ Q.T, w))


def test_task_alignment_is_the_inner_product_with_the_joint_gradient():
    rng = np.random.default_rng(RNG_SEED)
    G = rng.normal(size=(4, 2, 3))
    w = np.array([0.25, 0.75])
    gj = w[0] * G[:, 0] + w[1] * G[:, 1]
    np.testing.assert_allclose(dilemma.task_alignment(G, w), np.einsum("sij,sj->si", G, gj))


def test_deviation_region_matches_direct_inner_products():
    rng = np.random.default_rng(RNG_SEED)
    phi = rng.uniform(0, np.pi, 20000)
    w = rng.uniform(0, 1, 20000)
    gamma = 10 ** rng.uniform(-1.5, 1.5, 20000)
    G = dilemma.polar_gradients(phi, gamma)
    al = np.einsum("sij,sj->si", G, (1 - w)[:, None] * G[:, 0] + w[:, None] * G[:, 1])
    direct = (al < 0).any(-1)
    closed = dilemma.deviation_region(phi, w, gamma)
    assert direct.mean() > 0.2  # the sample does hit the region
    np.testing.assert_array_equal(closed, direct)


def test_deviation_needs_conflict_and_balanced_weights_avoid_it_at_opposition():
    assert not dilemma.deviation_region(np.radians(89), 0.99, 0.01).any()
    gamma = 3.0
    assert not dilemma.deviation_region(np.pi, 1 / (1 + gamma), gamma)  # balance point
    assert dilemma.deviation_region(np.pi, 1 / (1 + gamma) + 0.01, gamma)
    assert dilemma.deviation_region(np.pi, 1 / (1 + gamma) - 0.01, gamma)


@settings(max_examples=40, deadline=None)
@given(w=st.floats(0.02, 0.98), gamma=st.floats(0.05, 20))
def test_deviation_angle_threshold_is_the_boundary(w, gamma):
    t = float(dilemma.deviation_angle_threshold(w, gamma))
    assert np.pi / 2 <= t <= np.pi
    if t < np.pi - 1e-3:
        assert dilemma.deviation_region(t + 1e-4, w, gamma)
    assert not dilemma.deviation_region(t - 1e-4, w, gamma)


def test_paper_weights_threshold():
    # omega = (1, 4) with equal gradient norms: gamma_w = 4, threshold arccos(-1/4)
    assert np.degrees(dilemma.deviation_angle_threshold(0.8, 1.0)) == pytest.approx(np.degrees(np.arccos(-0.25)))


def test_deviation_area_fraction_against_monte_carlo_and_symmetry():
    rng = np.random.default_rng(RNG_SEED)
    phi, w = rng.uniform(0, np.pi, 200000), rng.uniform(0, 1, 200000)
    for gamma in (1.0, 4.0):
        mc = dilemma.deviation_region(phi, w, gamma).mean()
        assert dilemma.deviation_area_fraction(gamma) == pytest.approx(mc, abs=0.005)
    # swapping the tasks maps (phi, w, gamma) to (phi, 1 - w, 1/gamma)
    assert dilemma.deviation_area_fraction(4.0) == pytest.approx(dilemma.deviation_area_fraction(0.25), abs=1e-9)


def test_weighted_noise_variance_formula():
    assert dilemma.weighted_noise_variance([0.5, 0.5], [1.0, 1.0], -1.0) == pytest.approx(0.0)
    assert dilemma.weighted_noise_variance([0.2, 0.8], [1.0, 1.0], -1.0) == pytest.approx(0.36)
    assert dilemma.weighted_noise_variance([0.5, 0.5], [2.0, 2.0], 1.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="corr"):
        dilemma.weighted_noise_variance([0.5, 0.5], [1.0, 1.0], 1.5)


# ------------------------------------------------------------------ the noise model
@pytest.mark.parametrize("kind,problem", [
    ("isotropic", dilemma.conflict_pair(2.0)),
    ("hessian", dilemma.conflict_pair(2.0, condition=5.0)),
    ("gradient", dilemma.conflict_pair(2.0, condition=5.0)),
])
@pytest.mark.parametrize("corr", [-0.7, 0.4])
def test_weighted_cov_matches_empirical_covariance(kind, problem, corr):
    noise = dilemma.TaskNoise(sigma=(0.7, 1.3), corr=corr, kind=kind)
    w = np.array([0.35, 0.65])
    x = np.array([0.2, -0.3])
    xs = np.broadcast_to(x, (200000, 2))
    xi = noise.sample(problem, xs, np.random.default_rng(RNG_SEED))
    weighted = w[0] * xi[:, 0] + w[1] * xi[:, 1]
    emp = np.cov(weighted.T)
    cov = noise.weighted_cov(problem, x, w)
    np.testing.assert_allclose(emp, cov, atol=0.02 * np.abs(cov).max() + 1e-12)
    # and the two task noises really have correlation corr (first coordinate of the z's)
    L = noise.factors(problem, x)
    cross = np.mean(xi[:, 0, :, None] * xi[:, 1, None, :], axis=0)
    np.testing.assert_allclose(cross, corr * L[0] @ L[1].T, atol=0.02 * np.abs(L).max() ** 2 + 1e-12)


def test_gradient_aligned_noise_with_full_correlation_is_the_energy():
    prob = dilemma.conflict_pair(2.5)
    x = np.array([0.1, 0.4])
    w = np.array([0.4, 0.6])
    noise = dilemma.TaskNoise(sigma=0.9, corr=1.0, kind="gradient")
    gj = prob.weighted_grad(x, w)
    np.testing.assert_allclose(noise.weighted_cov(prob, x, w), 0.81 * np.outer(gj, gj), atol=1e-12)
    assert np.trace(noise.weighted_cov(prob, x, w)) == pytest.approx(0.81 * dilemma.joint_energy(prob.grads(x), w))


def test_isotropic_cov_has_no_angle_dependence():
    w = [0.5, 0.5]
    covs = [dilemma.TaskNoise(1.0, 0.3).weighted_cov(dilemma.conflict_pair(t), np.zeros(2), w) for t in (0.3, 1.5, 3.0)]
    for cov in covs[1:]:
        np.testing.assert_allclose(cov, covs[0])
    np.testing.assert_allclose(covs[0], dilemma.weighted_noise_variance(w, [1.0, 1.0], 0.3) * np.eye(2))


def test_task_noise_validation():
    with pytest.raises(ValueError, match="corr"):
        dilemma.TaskNoise(corr=-1.2)
    with pytest.raises(ValueError, match="kind"):
        dilemma.TaskNoise(kind="pink")
    with pytest.raises(ValueError, match="sigma"):
        dilemma.TaskNoise(sigma=-0.1)
    with pytest.raises(ValueError, match="hessian"):
        dilemma.TaskNoise(kind="hessian").factors(FonsecaFleming(), np.zeros(2))


# ------------------------------------------------------------------ the diffusion against the conflict angle
KINDS = dilemma.NOISE_KINDS


@settings(max_examples=60, deadline=None)
@given(phi=st.floats(0, np.pi), gamma=st.floats(0.1, 10), w=st.floats(0.0, 1.0), corr=st.floats(-1, 1),
       s0=st.floats(0.05, 3), s1=st.floats(0.05, 3), condition=st.floats(1, 20))
def test_ellipse_and_covariance_trace_equal_the_closed_form(phi, gamma, w, corr, s0, s1, condition):
    wts = dilemma.two_task_weights(w)
    G = dilemma.polar_gradients(phi, gamma)
    H = dilemma.curvature_pair(condition)
    for kind in KINDS:
        cov = dilemma.TaskNoise((s0, s1), corr, kind).weighted_cov_from(G, wts, H)
        closed = dilemma.weighted_noise_trace(phi, gamma, wts, (s0, s1), corr, kind, hessians=H)
        assert np.trace(cov) == pytest.approx(float(closed), rel=1e-9, abs=1e-12)
        assert np.linalg.eigvalsh(cov).min() > -1e-10  # a covariance
        width, height, _ = dilemma.ellipse_axes(cov, n_sd=1.5)
        assert (width / 2) ** 2 + (height / 2) ** 2 == pytest.approx(1.5**2 * np.trace(cov), rel=1e-9, abs=1e-12)
        assert width >= height >= 0


def test_ellipse_axes_orientation_and_rank_one():
    width, height, angle = dilemma.ellipse_axes(np.array([[4.0, 0.0], [0.0, 1.0]]), n_sd=1.0)
    assert (width, height) == pytest.approx((4.0, 2.0)) and angle % 180 == pytest.approx(0.0, abs=1e-9)
    g = np.array([1.0, 1.0])
    width, height, angle = dilemma.ellipse_axes(np.outer(g, g), n_sd=2.0)  # rank one: a segment along g
    assert height == pytest.approx(0.0, abs=1e-7) and angle % 180 == pytest.approx(45.0)


@pytest.mark.parametrize("gamma", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("w", [0.2, 0.5, 0.8])
def test_aligned_noise_follows_the_energy_only_for_positive_correlation(gamma, w):
    phi = np.radians(np.linspace(0, 180, 91))
    wts = dilemma.two_task_weights(w)
    for corr in (0.3, 0.7, 1.0):
        a = dilemma.angle_diffusion(phi, gamma, wts, 1.0, corr)
        assert np.all(np.diff(a.energy) < 0)  # the energy falls as the angle opens, whatever the weights
        assert a.falls_with_energy("gradient") and a.trend("gradient") == "falls with the energy"
        # tr = (1 - c)(w0^2 + w1^2 gamma^2) + c |g_joint|^2 (sigma = 1): affine in the energy, slope c
        np.testing.assert_allclose(a.trace["gradient"],
                                   (1 - corr) * (wts[0] ** 2 + wts[1] ** 2 * gamma**2) + corr * a.energy, atol=1e-12)
    for corr in (-1.0, -0.4):
        a = dilemma.angle_diffusion(phi, gamma, wts, 1.0, corr)
        assert not a.falls_with_energy("gradient") and a.trend("gradient") == "rises as the energy falls"
    for corr in (-0.5, 0.0, 0.5):
        a = dilemma.angle_diffusion(phi, gamma, wts, 1.0, corr)
        for kind in ("isotropic", "hessian"):
            assert np.ptp(a.trace[kind]) < 1e-12 and a.trend(kind) == "ignores the angle"
    assert dilemma.angle_diffusion(phi, gamma, wts, 1.0, 0.0).trend("gradient") == "ignores the angle"


def test_aligned_noise_with_full_correlation_is_the_energy_along_the_joint_gradient():
    a = dilemma.angle_diffusion(np.radians([30.0, 120.0, 170.0]), 2.0, [0.3, 0.7], sigma=0.5, corr=1.0)
    np.testing.assert_allclose(a.trace["gradient"], 0.25 * a.energy)
    np.testing.assert_allclose(a.cov["gradient"], 0.25 * np.einsum("ni,nj->nij", a.g_joint, a.g_joint), atol=1e-12)


def test_curvature_noise_matches_isotropic_size_at_zero_correlation():
    H = dilemma.curvature_pair(5.0)
    np.testing.assert_allclose(np.trace(H, axis1=1, axis2=2), [2.0, 2.0])
    np.testing.assert_allclose(H, np.swapaxes(H, 1, 2))
    a = dilemma.angle_diffusion([1.0], 1.0, [0.5, 0.5], 1.0, 0.0)
    assert a.trace["hessian"][0] == pytest.approx(a.trace["isotropic"][0])
    with pytest.raises(ValueError, match="condition"):
        dilemma.curvature_pair(0.5)
    with pytest.raises(ValueError, match="Hessians"):
        dilemma.weighted_noise_trace(1.0, 1.0, [0.5, 0.5], 1.0, 0.0, "hessian")
    with pytest.raises(ValueError, match="kind"):
        dilemma.weighted_noise_trace(1.0, 1.0, [0.5, 0.5], 1.0, 0.0, "pink")


def test_weighted_cov_from_gradients_agrees_with_the_problem_form():
    prob = dilemma.conflict_pair(2.0, condition=5.0)
    x = np.array([[0.1, -0.3], [0.5, 0.2]])
    for kind in KINDS:
        nz = dilemma.TaskNoise((0.4, 0.9), -0.3, kind)
        np.testing.assert_allclose(nz.weighted_cov(prob, x, [0.3, 0.7]),
                                   nz.weighted_cov_from(prob.grads(x), [0.3, 0.7], prob.hessians))


# ------------------------------------------------------------------ simulator
def test_noise_free_ls_converges_to_the_ls_minimizer():
    prob = dilemma.conflict_pair(2.0, condition=5.0)
    w = dilemma.two_task_weights(0.3)
    run = dilemma.simulate_ls(prob, w, dilemma.TaskNoise(0.0), lr=0.1, steps=400, x0=(0, 0), n_seeds=3, seed=0)
    np.testing.assert_allclose(run.final, np.broadcast_to(prob.ls_minimizer(w), (3, 2)), atol=1e-8)
    assert run.xs.shape == (3, 401, 2) and run.grads.shape == (3, 400, 2, 2)
    np.testing.assert_array_equal(run.grads, run.noisy_grads)


def test_simulation_is_reproducible_and_seeded():
    prob = dilemma.conflict_pair(2.0)
    kw = dict(lr=0.1, steps=20, x0=(0, 0), n_seeds=4)
    a = dilemma.simulate_ls(prob, [0.5, 0.5], dilemma.TaskNoise(0.5, 0.2), seed=7, **kw)
    b = dilemma.simulate_ls(prob, [0.5, 0.5], dilemma.TaskNoise(0.5, 0.2), seed=7, **kw)
    c = dilemma.simulate_ls(prob, [0.5, 0.5], dilemma.TaskNoise(0.5, 0.2), seed=8, **kw)
    np.testing.assert_array_equal(a.xs, b.xs)
    assert not np.allclose(a.xs, c.xs)
    assert not np.allclose(a.xs[0], a.xs[1])  # seeds within one call differ


@pytest.mark.parametrize("corr", [-0.6, 0.0, 0.8])
def test_stationary_spread_is_set_by_the_weighted_noise_variance(corr):
    # identity Hessians: e_{k+1} = (1 - eta) e_k - eta * noise, so Var_inf = eta * V / (2 - eta)
    prob = dilemma.conflict_pair(2.0)
    w = dilemma.two_task_weights(0.5)
    eta, sigma = 0.2, 1.0
    run = dilemma.simulate_ls(prob, w, dilemma.TaskNoise(sigma, corr), lr=eta, steps=150, x0=prob.ls_minimizer(w),
                        n_seeds=4000, seed=3, record_grads=False)
    tail = run.xs[:, 50:] - prob.ls_minimizer(w)
    V = dilemma.weighted_noise_variance(w, [sigma, sigma], corr)
    assert tail.var() == pytest.approx(eta * V / (2 - eta), rel=0.06)


def test_stationary_cov_matches_simulation_on_an_ill_conditioned_pair():
    prob = dilemma.conflict_pair(2.0, condition=5.0)
    w = dilemma.two_task_weights(0.3)
    noise = dilemma.TaskNoise((0.6, 0.9), -0.4, kind="hessian")
    X = dilemma.stationary_cov(prob, w, noise, lr=0.08)
    run = dilemma.simulate_ls(prob, w, noise, lr=0.08, steps=200, x0=prob.ls_minimizer(w), n_seeds=3000, seed=5,
                        record_grads=False)
    e = (run.xs[:, 60:] - prob.ls_minimizer(w)).reshape(-1, 2)
    np.testing.assert_allclose(np.cov(e.T), X, atol=0.06 * np.abs(X).max())
    # the isotropic, identity-Hessian case reduces to eta * Var / (2 - eta)
    iso = dilemma.stationary_cov(dilemma.conflict_pair(2.0), [0.5, 0.5], dilemma.TaskNoise(1.0, 0.2), lr=0.2)
    np.testing.assert_allclose(iso, 0.2 * dilemma.weighted_noise_variance([0.5, 0.5], [1, 1], 0.2) / 1.8 * np.eye(2))
    with pytest.raises(ValueError, match="stationary"):
        dilemma.stationary_cov(prob, w, noise, lr=5.0)


def test_deviation_and_conflict_fractions_on_a_run():
    prob = dilemma.conflict_pair(np.radians(170))
    run = dilemma.simulate_ls(prob, dilemma.two_task_weights(0.8), dilemma.TaskNoise(0.0), lr=0.1, steps=30,
                              x0=(0, 0), seed=0)
    # balanced start weights would not deviate; w = 0.8 makes task 0 lose from the first step on
    assert run.deviation_fraction(observed=False) == pytest.approx(1.0)
    assert run.conflict_fraction(observed=False) == pytest.approx(1.0)
    assert np.all(run.energy_ratio() < 1)


def test_simulate_ls_validation():
    prob = dilemma.conflict_pair(1.0)
    with pytest.raises(ValueError, match="lr"):
        dilemma.simulate_ls(prob, [0.5, 0.5], dilemma.TaskNoise(), lr=0.0, steps=3, x0=(0, 0))
    with pytest.raises(ValueError, match="steps"):
        dilemma.simulate_ls(prob, [0.5, 0.5], dilemma.TaskNoise(), lr=0.1, steps=0, x0=(0, 0))
    with pytest.raises(ValueError, match="x0"):
        dilemma.simulate_ls(prob, [0.5, 0.5], dilemma.TaskNoise(), lr=0.1, steps=3, x0=(0, 0, 0))
    with pytest.raises(ValueError, match="phi0"):
        dilemma.conflict_pair(4.0)


def test_conflict_pair_start_angle_and_pareto_ends():
    for t in (0.5, 2.0, np.pi):
        p = dilemma.conflict_pair(t)
        assert dilemma.gradient_cosine(p.grads(np.zeros(2))) == pytest.approx(np.cos(t))
        ps = p.pareto_set(5)
        np.testing.assert_allclose(ps[0], p.c0)
        np.testing.assert_allclose(ps[-1], p.c1)
    assert isinstance(dilemma.conflict_pair(1.0, condition=5.0), QuadraticPair)


# ------------------------------------------------------------------ the sharp/flat wells and escapes
def test_sharp_flat_wells_gradients_match_finite_differences():
    p = SharpFlatWells()
    rng = np.random.default_rng(RNG_SEED)
    x = rng.uniform(-1.5, 1.5, size=(6, 2))
    h = 1e-6
    fd = np.stack([(p.losses(x + h * e) - p.losses(x - h * e)) / (2 * h) for e in np.eye(2)], -1)
    np.testing.assert_allclose(p.grads(x), fd, atol=1e-6)


def test_sharp_flat_wells_geometry_and_validation():
    p = SharpFlatWells()
    w = dilemma.two_task_weights(0.5)
    s = dilemma.descend(p, w, p.sharp_center, lr=0.01, steps=3000)
    f = dilemma.descend(p, w, p.flat_center, lr=0.01, steps=3000)
    assert np.linalg.norm(s - f) > 1.0  # two distinct minima
    assert p.weighted_loss(f, w) < p.weighted_loss(s, w)  # the flat one is deeper

    def curvature(x):
        h = 1e-4
        return np.linalg.eigvalsh(np.array([(p.weighted_grad(x + h * e, w) - p.weighted_grad(x - h * e, w)) / (2 * h)
                                            for e in np.eye(2)])).max()

    assert curvature(s) > 3 * curvature(f)
    assert dilemma.gradient_cosine(p.grads(s)) == pytest.approx(-1.0)  # tasks conflict at the LS minimum
    with pytest.raises(ValueError, match="sharp_width"):
        SharpFlatWells(sharp_width=1.0, flat_width=0.5)
    with pytest.raises(ValueError, match="pull"):
        SharpFlatWells(pull=0.0)


def test_escape_counts_follow_the_weighted_noise_not_the_energy():
    p = SharpFlatWells()
    w = dilemma.two_task_weights(0.5)
    s = dilemma.descend(p, w, p.sharp_center, lr=0.01, steps=3000)
    f = dilemma.descend(p, w, p.flat_center, lr=0.01, steps=3000)
    kw = dict(lr=0.05, steps=400, sharp_min=s, flat_min=f, n_seeds=60, seed=0)
    counts = dilemma.escape_counts(p, w, [dilemma.TaskNoise(0.0), dilemma.TaskNoise(4.0, -1.0),
                                          dilemma.TaskNoise(2.5, 0.0), dilemma.TaskNoise(2.5, 1.0)], **kw)
    assert counts[0] == 0
    assert counts[1] == 0  # perfectly anti-correlated, balanced noise cancels exactly
    assert counts[3] > counts[2] > 0
    assert dilemma.escape_counts(p, w, [dilemma.TaskNoise(2.0, 0.0)], step_scale=2.0, **kw)[0] > \
        dilemma.escape_counts(p, w, [dilemma.TaskNoise(2.0, 0.0)], step_scale=1.0, **kw)[0]


def test_escaped_uses_nearest_minimum():
    out = dilemma.escaped(np.array([[0.9, 0.0], [-0.8, 0.1]]), [-1.0, 0.0], [1.0, 0.0])
    np.testing.assert_array_equal(out, [True, False])


# ------------------------------------------------------------------ symbolic derivations
def _rand_subs(rng):
    Y = dilemma_derivations.SYMBOLS
    return {Y["w0"]: rng.uniform(0.1, 1), Y["w1"]: rng.uniform(0.1, 1), Y["n0"]: rng.uniform(0.1, 3),
            Y["n1"]: rng.uniform(0.1, 3), Y["phi"]: rng.uniform(0, np.pi), Y["c"]: rng.uniform(-1, 1),
            Y["sigma0"]: rng.uniform(0.1, 2), Y["sigma1"]: rng.uniform(0.1, 2), Y["sigma"]: rng.uniform(0.1, 2)}


def test_symbolic_joint_energy_and_cross_term():
    Y = dilemma_derivations.SYMBOLS
    E = dilemma_derivations.joint_energy()
    expected = ((Y["w0"] * Y["n0"]) ** 2 + (Y["w1"] * Y["n1"]) ** 2
                + 2 * Y["w0"] * Y["w1"] * Y["n0"] * Y["n1"] * sp.cos(Y["phi"]))
    assert sp.simplify(E - expected) == 0
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(5):
        v = _rand_subs(rng)
        G = dilemma.polar_gradients(float(v[Y["phi"]]), float(v[Y["n1"]] / v[Y["n0"]]), n0=float(v[Y["n0"]]))
        assert float(E.subs(v)) == pytest.approx(float(dilemma.joint_energy(G, [v[Y["w0"]], v[Y["w1"]]])))


def test_symbolic_energy_ratio_and_its_minimum():
    Y = dilemma_derivations.SYMBOLS
    f = sp.lambdify((Y["phi"], Y["gamma_w"]), dilemma_derivations.energy_ratio(), "numpy")
    t, gamma_w = np.linspace(0, np.pi, 7), np.array([0.1, 0.5, 1.0, 2.0, 7.0])
    T, R = np.meshgrid(t, gamma_w)
    np.testing.assert_allclose(f(T, R), dilemma.energy_ratio_closed_form(T, R))
    rho_star, value = dilemma_derivations.energy_ratio_minimum()
    assert rho_star == 1
    assert sp.simplify(value - (1 + sp.cos(Y["phi"]))) == 0


def test_symbolic_noise_variances():
    Y = dilemma_derivations.SYMBOLS
    rng = np.random.default_rng(RNG_SEED)
    var = dilemma_derivations.weighted_noise_variance()
    for _ in range(5):
        v = _rand_subs(rng)
        num = dilemma.weighted_noise_variance([v[Y["w0"]], v[Y["w1"]]], [v[Y["sigma0"]], v[Y["sigma1"]]], v[Y["c"]])
        assert float(var.subs(v)) == pytest.approx(float(num))
    assert sp.simplify(dilemma_derivations.observed_energy() - dilemma_derivations.joint_energy() - Y["p"] * var) == 0
    assert Y["p"].name == "p"  # the number of parameters, theta in R^p (notation page)
    tr = dilemma_derivations.gradient_noise_diffusion_trace()
    assert sp.simplify(tr.subs(Y["c"], 1) - Y["sigma"] ** 2 * dilemma_derivations.joint_energy()) == 0
    assert sp.simplify(tr.subs(Y["c"], 0).diff(Y["phi"])) == 0  # independent noise: no angle


def test_symbolic_deviation_thresholds_match_numeric():
    Y = dilemma_derivations.SYMBOLS
    w_lo, w_hi = dilemma_derivations.deviation_weight_thresholds()
    f_lo = sp.lambdify((Y["phi"], Y["gamma"]), w_lo, "numpy")
    f_hi = sp.lambdify((Y["phi"], Y["gamma"]), w_hi, "numpy")
    phi = np.linspace(np.pi / 2 + 0.05, np.pi, 9)
    for gamma in (0.3, 1.0, 5.0):
        lo, hi = dilemma.deviation_weight_thresholds(phi, gamma)
        np.testing.assert_allclose(f_lo(phi, gamma), lo)
        np.testing.assert_allclose(f_hi(phi, gamma), hi)
    c0, c1 = dilemma_derivations.deviation_cosine_thresholds()
    assert sp.simplify(c0 + 1 / Y["gamma_w"]) == 0 and sp.simplify(c1 + Y["gamma_w"]) == 0
    a0, a1 = dilemma_derivations.drift_alignments()
    assert sp.simplify(a0 - ((1 - Y["w"]) + Y["w"] * Y["gamma"] * sp.cos(Y["phi"]))) == 0


def test_kappa_decomposition_matches_escape_counts_and_separates_time_from_temperature():
    p = SharpFlatWells()
    w = dilemma.two_task_weights(0.5)
    s = dilemma.descend(p, w, p.sharp_center, lr=0.01, steps=3000)
    f = dilemma.descend(p, w, p.flat_center, lr=0.01, steps=3000)
    kw = dict(lr=0.05, sharp_min=s, flat_min=f, n_seeds=40, seed=0)
    out = dilemma.kappa_escape_decomposition(p, w, sigma=2.0, corr=0.0, kappas=[1.0, 2.0], steps=200, **kw)
    assert set(out) == {"fixed steps", "matched time", "matched temperature", "matched both"}
    # kappa = 1 is the same run in every setting
    assert len({int(d["counts"][0]) for d in out.values()}) == 1
    # the settings do what their names say
    np.testing.assert_allclose(out["matched time"]["time"], [10.0, 10.0])
    np.testing.assert_allclose(out["matched temperature"]["temperature"], out["matched temperature"]["temperature"][0])
    np.testing.assert_allclose(out["fixed steps"]["time"], [10.0, 20.0])
    np.testing.assert_allclose(out["fixed steps"]["temperature"][1], 2 * out["fixed steps"]["temperature"][0])
    np.testing.assert_array_equal(out["matched both"]["steps"], [200, 100])
    # each count is escape_counts with the listed steps, noise and step scale
    d = out["matched both"]
    assert d["counts"][1] == dilemma.escape_counts(p, w, [dilemma.TaskNoise(d["sigma"][1], 0.0)], steps=100,
                                                   step_scale=2.0, **kw)[0]
    with pytest.raises(ValueError, match="kappas"):
        dilemma.kappa_escape_decomposition(p, w, sigma=2.0, corr=0.0, kappas=[0.0], steps=10, **kw)
