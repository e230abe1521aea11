"""Tests for camegrad_mini.sde (chapter 2's simulators and formulas) and the 1-D double well."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camegrad_mini import sde
from camegrad_mini.problems import SharpFlatDoubleWell, rotation

H2 = rotation(np.pi / 6) @ np.diag([4.0, 1.0]) @ rotation(np.pi / 6).T
SIGMA2 = np.array([[1.0, 0.5], [0.5, 2.0]])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ------------------------------------------------------------------ closed forms
def test_sde_diffusion_and_temperature():
    np.testing.assert_allclose(sde.sde_diffusion(0.1, SIGMA2, 4), 0.1 * SIGMA2 / 4)
    assert sde.noise_temperature(0.02, 64.0, 4) == pytest.approx(0.16)
    # only eta / B matters
    assert sde.noise_temperature(0.01, 64.0, 2) == pytest.approx(sde.noise_temperature(0.02, 64.0, 4))


@pytest.mark.parametrize("bad", [dict(eta=0.0), dict(eta=-1.0), dict(batch_size=0), dict(batch_size=1.5)])
def test_sde_diffusion_rejects_bad_arguments(bad):
    kw = dict(eta=0.1, noise_cov=SIGMA2, batch_size=2) | bad
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        sde.sde_diffusion(**kw)


def test_noise_cov_must_be_psd_and_symmetric():
    with pytest.raises(ValueError, match="symmetric"):
        sde.sde_diffusion(0.1, [[1.0, 0.2], [0.0, 1.0]], 1)
    with pytest.raises(ValueError, match="semi-definite"):
        sde.sde_diffusion(0.1, [[1.0, 2.0], [2.0, 1.0]], 1)


@settings(max_examples=30, deadline=None)
@given(h=st.floats(0.1, 10.0), x=st.floats(0.01, 1.95), s=st.floats(0.1, 5.0), B=st.integers(1, 64))
def test_one_dimensional_closed_forms(h, x, s, B):
    eta = x / h
    ou = sde.stationary_cov_ou([[h]], eta, [[s]], B)[0, 0]
    sgd = sde.stationary_cov_sgd([[h]], eta, [[s]], B)[0, 0]
    assert ou == pytest.approx(eta * s / (2 * B * h), rel=1e-9)
    assert sgd == pytest.approx(eta * s / (B * h * (2 - eta * h)), rel=1e-9)
    assert sgd / ou == pytest.approx(1.0 / (1.0 - x / 2.0), rel=1e-9)


def test_lyapunov_residuals_2d():
    eta, B = 0.3, 4
    S_ou = sde.stationary_cov_ou(H2, eta, SIGMA2, B)
    np.testing.assert_allclose(H2 @ S_ou + S_ou @ H2, eta * SIGMA2 / B, atol=1e-12)
    S = sde.stationary_cov_sgd(H2, eta, SIGMA2, B)
    A = np.eye(2) - eta * H2
    np.testing.assert_allclose(A @ S @ A.T + eta**2 * SIGMA2 / B, S, atol=1e-12)
    assert np.linalg.eigvalsh(S - S_ou).min() > 0  # SGD is always wider than the OU picture


def test_beyond_the_stability_limit_there_is_no_stationary_covariance():
    lim = sde.stability_limit(H2)
    assert lim == pytest.approx(0.5)
    sde.stationary_cov_sgd(H2, 0.99 * lim, SIGMA2, 1)
    with pytest.raises(ValueError, match="stability limit"):
        sde.stationary_cov_sgd(H2, 1.01 * lim, SIGMA2, 1)


def test_euler_maruyama_covariance_interpolates_between_sgd_and_ou():
    eta, B = 0.25, 4
    D = sde.sde_diffusion(eta, SIGMA2, B)
    np.testing.assert_allclose(sde.stationary_cov_euler_maruyama(H2, eta, D),
                               sde.stationary_cov_sgd(H2, eta, SIGMA2, B), rtol=1e-10)
    gaps = [_rel(sde.stationary_cov_euler_maruyama(H2, eta / m, D), sde.stationary_cov_ou(H2, eta, SIGMA2, B))
            for m in (1, 10, 100)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.01 * gaps[0] * 1.5  # the bias is O(dt)


def test_ou_requires_positive_definite_hessian():
    with pytest.raises(ValueError, match="positive definite"):
        sde.stationary_cov_ou(np.diag([1.0, 0.0]), 0.1, SIGMA2, 1)


# ------------------------------------------------------------------ simulators
def test_sgd_is_euler_maruyama_with_step_eta_pathwise():
    eta, B = 0.2, 4
    grad = lambda th: th @ H2.T  # noqa: E731
    th0 = np.zeros((50, 2))
    a = sde.simulate_sgd(grad, th0, eta=eta, noise_cov=SIGMA2, batch_size=B, n_steps=30, burn_in=0,
                         rng=np.random.default_rng(3))
    b = sde.simulate_euler_maruyama(lambda th: -grad(th), th0, dt=eta, diffusion=sde.sde_diffusion(eta, SIGMA2, B),
                                    n_steps=30, burn_in=0, rng=np.random.default_rng(3))
    np.testing.assert_allclose(a.final, b.final, atol=1e-12)


def test_sgd_stationary_covariance_matches_the_discrete_formula_not_the_ou_one():
    eta, B = 0.25, 4  # eta * lambda_max = 1
    grad = lambda th: th @ H2.T  # noqa: E731
    rng = np.random.default_rng(0)
    r = sde.simulate_sgd(grad, np.zeros((1000, 2)), eta=eta, noise_cov=SIGMA2, batch_size=B, n_steps=160,
                         burn_in=40, rng=rng)
    assert r.n_records == 120 and r.final.shape == (1000, 2)
    assert _rel(r.cov, sde.stationary_cov_sgd(H2, eta, SIGMA2, B)) < 0.03
    assert _rel(r.cov, sde.stationary_cov_ou(H2, eta, SIGMA2, B)) > 0.2
    assert np.abs(r.mean).max() < 0.01


def test_fine_euler_maruyama_matches_the_ou_formula():
    eta, B, dt = 0.25, 4, 0.25 / 20
    D = sde.sde_diffusion(eta, SIGMA2, B)
    S_ou = sde.stationary_cov_ou(H2, eta, SIGMA2, B)
    rng = np.random.default_rng(1)
    th0 = rng.multivariate_normal(np.zeros(2), S_ou, size=500)
    r = sde.simulate_euler_maruyama(lambda th: -th @ H2.T, th0, dt=dt, diffusion=D, n_steps=1600, burn_in=160, rng=rng)
    assert _rel(r.cov, sde.stationary_cov_euler_maruyama(H2, dt, D)) < 0.04
    assert _rel(r.cov, S_ou) < 0.06


@pytest.mark.parametrize("kw, match", [(dict(n_steps=0), "n_steps"), (dict(burn_in=10), "burn_in"),
                                       (dict(theta0=np.zeros(2)), "theta0"),
                                       (dict(noise_cov=np.eye(3)), "must be 2x2")])
def test_simulators_validate(kw, match):
    base = dict(theta0=np.zeros((4, 2)), eta=0.1, noise_cov=np.eye(2), batch_size=1, n_steps=10, burn_in=0,
                rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        sde.simulate_sgd(lambda th: th, **(base | kw))


# ------------------------------------------------------------------ escapes
def test_censored_exponential_mean_recovers_the_mean():
    rng = np.random.default_rng(0)
    t = rng.exponential(10.0, size=20000)
    t_max = 15.0
    t = np.where(t <= t_max, t, np.nan)
    mean, n = sde.censored_exponential_mean(t, t_max)
    assert n == np.isfinite(t).sum()
    assert mean == pytest.approx(10.0, rel=0.03)
    assert np.nanmean(t) < 7.0  # the naive mean of the escapes is badly biased
    assert sde.censored_exponential_mean([np.nan, np.nan], 1.0) == (float("inf"), 0)
    assert sde.censored_exponential_mean([1.0, 3.0, np.nan], 4.0) == (4.0, 2)
    with pytest.raises(ValueError, match="exceeds"):
        sde.censored_exponential_mean([5.0], 4.0)


def test_kramers_formula_and_validation():
    assert sde.kramers_escape_time(4.0, -1.0, 1.0, 0.5) == pytest.approx(np.pi * np.exp(2.0))
    with pytest.raises(ValueError, match="h_saddle"):
        sde.kramers_escape_time(4.0, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        sde.kramers_escape_time(4.0, -1.0, 1.0, 0.0)


def test_mfpt_of_free_diffusion_with_a_reflecting_wall():
    # dX = sqrt(2T) dW, reflecting at 0, absorbing at b: tau = (b^2 - x0^2) / (2T)
    flat = lambda x: np.zeros_like(x)  # noqa: E731
    assert sde.mean_first_passage_time_1d(flat, 0.5, 2.0, 0.25, far=0.0) == pytest.approx((4 - 0.25) / 0.5, rel=1e-3)
    # mirrored problem, same answer
    assert sde.mean_first_passage_time_1d(flat, -0.5, -2.0, 0.25, far=0.0) == pytest.approx((4 - 0.25) / 0.5, rel=1e-3)
    with pytest.raises(ValueError, match="far"):
        sde.mean_first_passage_time_1d(flat, 0.5, 2.0, 0.25, far=1.0)


def test_kramers_becomes_exact_as_temperature_drops():
    p = SharpFlatDoubleWell()
    cp = p.critical_points()
    k_s, k_b = float(p.hess(cp["sharp"])), float(p.hess(cp["saddle"]))
    ratios = []
    for T in (0.3, 0.15, 0.075):
        exact = sde.mean_first_passage_time_1d(p.loss, cp["sharp"], cp["flat"], T, far=cp["sharp"] - 3.0)
        ratios.append(exact / sde.kramers_escape_time(k_s, k_b, p.barrier("sharp"), T))
    assert ratios[0] > ratios[1] > ratios[2] > 1.0
    assert ratios[2] < 1.15


def test_simulated_escape_matches_the_exact_first_passage_time():
    p = SharpFlatDoubleWell()
    cp = p.critical_points()
    eta, var, B = 0.02, 64.0, 3
    T = sde.noise_temperature(eta, var, B)
    exact = sde.mean_first_passage_time_1d(p.loss, cp["sharp"], cp["flat"], T, far=cp["sharp"] - 3.0)
    r = sde.simulate_escape(p.grad, cp["sharp"], cp["flat"], eta=eta, noise_var=var, batch_size=B, n_chains=600,
                            t_max=3 * exact, rng=np.random.default_rng(0))
    assert r.n_escaped > 500
    assert abs(r.mean_time - exact) < 4 * r.stderr
    assert np.all(r.times[np.isfinite(r.times)] > 0)
    with pytest.raises(ValueError, match="boundary"):
        sde.simulate_escape(p.grad, 0.0, 0.0, eta=eta, noise_var=var, batch_size=B, n_chains=2, t_max=1.0,
                            rng=np.random.default_rng(0))


def test_quadratic_weak_error_orders():
    etas = np.array([0.2, 0.1, 0.05, 0.025])
    e = sde.quadratic_mean_weak_errors(1.0, etas, t_end=2.0)
    s1 = np.diff(np.log(e["error_sde"])) / np.diff(np.log(etas))
    s2 = np.diff(np.log(e["error_sme"])) / np.diff(np.log(etas))
    np.testing.assert_allclose(s1, 1.0, atol=0.05)
    np.testing.assert_allclose(s2, 2.0, atol=0.05)
    with pytest.raises(ValueError, match="integer"):
        sde.quadratic_mean_weak_errors(1.0, [0.3], t_end=1.0)


# ------------------------------------------------------------------ the double well
def test_double_well_derivatives_and_critical_points():
    p = SharpFlatDoubleWell()
    x = np.linspace(-3, 4, 57).reshape(3, 19)
    e = 1e-6
    np.testing.assert_allclose(p.grad(x), (p.loss(x + e) - p.loss(x - e)) / (2 * e), atol=1e-7)
    np.testing.assert_allclose(p.hess(x), (p.grad(x + e) - p.grad(x - e)) / (2 * e), atol=1e-6)
    assert p.grad(x).shape == x.shape
    cp = p.critical_points()
    assert cp["sharp"] < cp["saddle"] < cp["flat"]
    for v in cp.values():
        assert abs(float(p.grad(v))) < 1e-10
    k = {n: float(p.hess(v)) for n, v in cp.items()}
    assert k["saddle"] < 0 < k["flat"] < k["sharp"]
    assert k["sharp"] / k["flat"] > 4  # sharp really is sharper
    assert p.barrier("sharp") > 0 and p.barrier("flat") > 0
    with pytest.raises(ValueError, match="well"):
        p.barrier("middle")


def test_double_well_validation():
    with pytest.raises(ValueError, match="sharp_width"):
        SharpFlatDoubleWell(sharp_width=2.0)
    with pytest.raises(ValueError, match="confinement"):
        SharpFlatDoubleWell(confinement=0.0)
    with pytest.raises(ValueError, match="double well"):
        SharpFlatDoubleWell(sharp_depth=0.01).critical_points()


def test_state_dependent_noise_equals_constant_noise_when_constant():
    p = SharpFlatDoubleWell()
    cp = p.critical_points()
    kw = dict(eta=0.02, batch_size=2, n_chains=50, t_max=40.0)
    a = sde.simulate_escape(p.grad, cp["sharp"], cp["flat"], noise_var=64.0, rng=np.random.default_rng(5), **kw)
    b = sde.simulate_escape(p.grad, cp["sharp"], cp["flat"], noise_var=lambda x: np.full_like(x, 64.0),
                            rng=np.random.default_rng(5), **kw)
    np.testing.assert_allclose(a.times, b.times)
    assert a.n_escaped > 10


def test_curvature_dependent_noise_escapes_the_sharp_well_faster():
    p = SharpFlatDoubleWell()
    cp = p.critical_points()
    k_flat = float(p.hess(cp["flat"]))
    var = lambda x: 64.0 * np.maximum(p.hess(x), k_flat) / k_flat  # noqa: E731
    kw = dict(eta=0.02, batch_size=4, n_chains=200, t_max=300.0)
    const = sde.simulate_escape(p.grad, cp["sharp"], cp["flat"], noise_var=64.0, rng=np.random.default_rng(6), **kw)
    aniso = sde.simulate_escape(p.grad, cp["sharp"], cp["flat"], noise_var=var, rng=np.random.default_rng(6), **kw)
    # the noise is only high near the bottom of the well, so the gain is a few-fold, not exponential
    assert aniso.mean_time < 0.5 * const.mean_time
    with pytest.raises(ValueError, match="non-negative"):
        sde.simulate_escape(p.grad, cp["sharp"], cp["flat"], noise_var=lambda x: -np.ones_like(x),
                            rng=np.random.default_rng(6), **kw)


# ------------------------------------------------------------------ transients of a linear SDE
def test_linear_sde_moments_limits_and_ode():
    A = H2
    D = sde.sde_diffusion(0.2, SIGMA2, 2)
    star, start = np.array([0.5, -1.0]), np.array([2.0, 1.0])
    m, S = sde.linear_sde_moments(A, star, D, start, [0.0, 1e-3, 50.0])
    np.testing.assert_allclose(m[0], start)
    np.testing.assert_allclose(S[0], 0.0, atol=1e-14)
    np.testing.assert_allclose(m[2], star, atol=1e-10)
    np.testing.assert_allclose(S[2], sde.stationary_cov_ou(A, 0.2, SIGMA2, 2), rtol=1e-8)
    # S' = -A S - S A^T + D at t = 0 (central difference between tiny times)
    _, S2 = sde.linear_sde_moments(A, star, D, start, [1e-4, 3e-4])
    dS = S2[1] - S2[0]
    np.testing.assert_allclose(dS / 2e-4, D - A @ S2[0] - S2[0] @ A.T - (A @ dS + dS @ A.T) / 2, atol=1e-3)
    with pytest.raises(ValueError, match="stable"):
        sde.linear_sde_moments(-A, star, D, start, [1.0])


def test_path_averages_follow_the_exact_moments():
    A = H2
    D = sde.sde_diffusion(0.2, SIGMA2, 2)
    star, start = np.array([0.5, -1.0]), np.array([2.0, 1.0])
    rng = np.random.default_rng(4)
    obs = lambda th: np.column_stack([th, th[:, 0] ** 2])  # noqa: E731
    pa = sde.simulate_path_averages(lambda th: -(th - star) @ A.T, np.tile(start, (4000, 1)), dt=0.005, diffusion=D,
                                    n_steps=400, record_every=100, observables=obs, rng=rng)
    assert pa.times.shape == (5,) and pa.mean.shape == (5, 3) and pa.times[-1] == pytest.approx(2.0)
    m, S = sde.linear_sde_moments(A, star, D, start, pa.times)
    ref = np.column_stack([m, S[:, 0, 0] + m[:, 0] ** 2])
    z = np.abs(pa.mean[1:] - ref[1:]) / pa.stderr[1:]
    assert z.max() < 4.5
    with pytest.raises(ValueError, match="record_every"):
        sde.simulate_path_averages(lambda th: th, np.zeros((2, 2)), dt=0.1, diffusion=np.eye(2), n_steps=3,
                                   record_every=0, observables=obs, rng=rng)
