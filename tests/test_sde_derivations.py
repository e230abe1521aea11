"""Tests for camegrad_mini.sde_derivations: each derivation is checked against an independent route."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from camegrad_mini import sde
from camegrad_mini import sde_derivations
from camegrad_mini.sde_derivations import B, eta


def _zero(expr) -> bool:
    return sp.expand(expr) == 0


def test_expectation_rules():
    x1, x2 = sp.symbols("x1 x2")
    cov = sp.Matrix([[2, 3], [3, 5]])
    a = sp.Symbol("a")
    assert sde_derivations.expectation(a + x1, [x1, x2], cov) == a
    assert sde_derivations.expectation((a + x1) * (1 + x2), [x1, x2], cov) == a + 3
    assert sde_derivations.expectation(x2**2 - x1 * x1, [x1, x2], cov) == 3
    with pytest.raises(ValueError, match="order 3"):
        sde_derivations.expectation(x1**3, [x1, x2], cov)
    with pytest.raises(ValueError, match="cov"):
        sde_derivations.expectation(x1, [x1, x2], sp.eye(3))


def test_sgd_step_moments():
    m = sde_derivations.sgd_step_moments(2)
    assert m["mean"] == -eta * m["g"]
    assert (m["cov"] - eta**2 * m["Sigma"] / B).applyfunc(sp.expand) == sp.zeros(2, 2)
    # E[Delta Delta^T] contains the drift's outer product, the covariance does not
    assert _zero(m["second_moment"][0, 1] - eta**2 * (m["g"][0] * m["g"][1] + m["Sigma"][0, 1] / B))


def test_euler_maruyama_step_with_dt_eta_has_sgd_moments():
    e = sde_derivations.euler_maruyama_step_moments(2)
    m = sde_derivations.sgd_step_moments(2)
    assert e["mean_at_eta"] == m["mean"]
    sgd_cov_through_F = m["cov"].subs({m["Sigma"][i, j]: e["Sigma_from_F"][i, j] for i in range(2) for j in range(2)})
    assert (e["cov_at_eta"] - sgd_cov_through_F).applyfunc(sp.expand) == sp.zeros(2, 2)
    # the book's letter for the noise factor (notation page): F, lower-triangular
    assert {v.name for v in e["Sigma_from_F"].free_symbols} == {"F_11", "F_21", "F_22"}
    # before the substitution the covariance scales with dt, not dt^2
    assert sp.degree(sp.expand(e["cov"][0, 0]), e["dt"]) == 1


def test_dynkin_expansion_reproduces_the_exact_ou_moments():
    k, s2, hh = sp.Symbol("k", positive=True), sp.Symbol("sigma2", positive=True), sde_derivations.Dt
    m1, m2 = sde_derivations.dynkin_moments_1d(-k * sde_derivations.y, s2 + 0 * sde_derivations.y, order=3)
    x = sde_derivations.x
    exact_m1 = x * (sp.exp(-k * hh) - 1)
    # E[(X_h - x)^2] = Var + mean^2, Var = s2 (1 - exp(-2kh)) / (2k)
    exact_m2 = s2 * (1 - sp.exp(-2 * k * hh)) / (2 * k) + exact_m1**2
    for got, ref in ((m1, exact_m1), (m2, exact_m2)):
        ser = sp.series(ref, hh, 0, 4).removeO()
        assert _zero(got - ser)
    with pytest.raises(ValueError, match="order"):
        sde_derivations.dynkin_moments_1d(-k * sde_derivations.y, s2, order=0)


def test_plain_sde_is_weak_order_one_and_sme_weak_order_two():
    Lp = sp.diff(sde_derivations.Lf(sde_derivations.x), sde_derivations.x)
    Lpp = sp.diff(sde_derivations.Lf(sde_derivations.x), sde_derivations.x, 2)
    plain = sde_derivations.one_step_moment_gap_1d(corrected=False)
    assert _zero(plain["mean_gap"] - eta**2 / 2 * Lp * Lpp)
    assert _zero(plain["second_gap"])
    sme = sde_derivations.one_step_moment_gap_1d(corrected=True)
    assert _zero(sme["mean_gap"])
    assert _zero(sme["second_gap"])
    assert _zero(sme["sgd_second"] - eta**2 * (Lp**2 + sde_derivations.sf(sde_derivations.x) / B))


def test_sme_correction_identity():
    out = sde_derivations.sme_correction_identity()
    assert out["difference"] == sp.zeros(2, 1)
    assert out["lhs"] != out["rhs"]  # different expressions, equal after expansion


def test_quadratic_mean_rates():
    r = sde_derivations.quadratic_mean_rates(order=3)
    hc = r["curvature"]
    assert _zero(r["sgd_series"] - r["sme"] + eta**2 * hc**3 / 3)
    assert _zero(r["sgd_series"].coeff(eta, 0) - r["sde"])


def _num_subs(H, Sigma, vals):
    return {**{H[0, 0]: vals["a"], H[0, 1]: vals["b"], H[1, 1]: vals["c"]},
            Sigma[0, 0]: vals["s11"], Sigma[0, 1]: vals["s12"], Sigma[1, 1]: vals["s22"]}


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_symbolic_lyapunov_matches_scipy(kind):
    out = sde_derivations.lyapunov_2x2(kind)
    vals = dict(a=3.0, b=-0.7, c=1.2, s11=1.0, s12=0.3, s22=2.0)
    sub = _num_subs(out["H"], out["Sigma"], vals) | {eta: 0.4, B: 8}
    got = np.array(out["solution"].subs(sub).evalf(), dtype=float)
    Hn = np.array([[3.0, -0.7], [-0.7, 1.2]])
    Sn = np.array([[1.0, 0.3], [0.3, 2.0]])
    ref = sde.stationary_cov_ou(Hn, 0.4, Sn, 8) if kind == "continuous" else sde.stationary_cov_sgd(Hn, 0.4, Sn, 8)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    with pytest.raises(ValueError, match="kind"):
        sde_derivations.lyapunov_2x2("implicit")


def test_diagonal_lyapunov_closed_forms():
    c = sde_derivations.lyapunov_2x2("continuous", diagonal=True)
    d = sde_derivations.lyapunov_2x2("discrete", diagonal=True)
    l1, l2 = c["H"][0, 0], c["H"][1, 1]
    Sg = c["Sigma"]
    assert _zero(sp.cancel(c["solution"][0, 1] - eta * Sg[0, 1] / (B * (l1 + l2))))
    assert _zero(sp.cancel(d["solution"][0, 0] - eta * Sg[0, 0] / (B * l1 * (2 - eta * l1))))


def test_gap_series_starts_at_eta_squared_and_matches_direct_series():
    g = sde_derivations.lyapunov_gap_series(order=3)
    gap = g["gap"]
    for e in gap:
        assert sp.expand(e).coeff(eta, 0) == 0 and sp.expand(e).coeff(eta, 1) == 0
        assert sp.expand(e).coeff(eta, 2) != 0
    # the eta^1 term is the OU covariance itself
    cont = sde_derivations.lyapunov_2x2("continuous")["solution"]
    assert (eta * g["terms"][0] - cont).applyfunc(sp.cancel) == sp.zeros(2, 2)
    # independent route: series of the exact discrete solution, one entry
    disc = sde_derivations.lyapunov_2x2("discrete")["solution"]
    direct = sp.series(disc[0, 0] - cont[0, 0], eta, 0, 4).removeO()
    assert sp.cancel(direct - gap[0, 0]) == 0
    with pytest.raises(ValueError, match="order"):
        sde_derivations.lyapunov_gap_series(order=1)


def test_gap_series_numerically():
    g = sde_derivations.lyapunov_gap_series(order=3)
    vals = dict(a=2.0, b=0.5, c=1.0, s11=1.0, s12=-0.2, s22=0.5)
    Hn = np.array([[2.0, 0.5], [0.5, 1.0]])
    Sn = np.array([[1.0, -0.2], [-0.2, 0.5]])
    errs = []
    for e in (0.02, 0.01):
        num = sde.stationary_cov_sgd(Hn, e, Sn, 1) - sde.stationary_cov_ou(Hn, e, Sn, 1)
        ser = np.array(g["gap"].subs(_num_subs(g["H"], g["Sigma"], vals) | {eta: e, B: 1}).evalf(), dtype=float)
        errs.append(np.abs(num - ser).max())
    assert errs[0] / errs[1] > 12  # the remainder is O(eta^4)


def test_ito_lemma_matches_the_generator_and_a_known_case():
    x1, x2 = sp.symbols("x1 x2", real=True)
    f = sp.Function("f")(x1, x2)
    b = sp.Matrix(sp.symbols("b1 b2", real=True))
    F = sp.Matrix(2, 3, sp.symbols("F1:7", real=True))      # more noise sources than dimensions
    out = sde_derivations.ito_lemma(f, [x1, x2], b, F)
    assert out["check"] == 0
    grad = sp.Matrix([sp.diff(f, x1), sp.diff(f, x2)])
    assert (out["noise_terms"] - (F.T * grad)).applyfunc(sp.expand) == sp.zeros(3, 1)
    # geometric Brownian motion: d log X = (mu - s^2/2) dt + s dW
    X, mu, s = sp.symbols("X mu s", positive=True)
    gbm = sde_derivations.ito_lemma(sp.log(X), [X], sp.Matrix([mu * X]), sp.Matrix([[s * X]]))
    assert _zero(gbm["drift_term"] - (mu - s**2 / 2))
    assert _zero(gbm["noise_terms"][0] - s)
    with pytest.raises(ValueError, match="drift"):
        sde_derivations.ito_lemma(f, [x1, x2], sp.Matrix([1]), F)


def test_task_loss_ito_and_a_quadratic_instance():
    out = sde_derivations.task_loss_ito(2)
    assert all(d == 0 for d in out["differences"])
    # quadratic tasks: the noise term is (eta/2) tr(H_i Sigma) with H_i the constant Hessian
    th = out["theta"]
    L0 = sp.Rational(3, 2) * th[0] ** 2 + th[0] * th[1] + th[1] ** 2 / 2
    sub = {out["losses"][0]: L0}
    term = out["claimed"][0].subs(sub).doit()
    noise = sp.expand(term).coeff(eta)
    Hq = sp.hessian(L0, th)
    assert _zero(noise - (Hq * out["Sigma_omega"]).trace() / 2)
    with pytest.raises(ValueError, match="n_tasks"):
        sde_derivations.task_loss_ito(0)


def test_minibatch_covariance_symbolic_and_numeric():
    out = sde_derivations.minibatch_covariance()
    N, M2, ggT = out["N"], out["M2"], out["ggT"]
    assert ggT.name == r"g g^{\top}"  # written out, as in the book (G is the Gram matrix there)
    assert _zero(out["cov_with"] - (M2 - ggT) / B)
    assert _zero(sp.cancel(out["ratio"] - (N - B) / (N - 1)))
    assert out["cov_without"].subs(B, N) == 0          # the whole data set: no noise
    assert _zero(sp.cancel(out["cov_without"].subs(B, 1) - (M2 - ggT)))
    # brute force on a small data set: enumerate every ordered batch of 2 distinct examples
    import itertools
    v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 1.0]])
    means = np.array([(v[a] + v[b]) / 2 for a, b in itertools.permutations(range(4), 2)])
    emp = np.cov(means.T, bias=True)
    Sig = np.cov(v.T, bias=True)
    ratio = float(out["ratio"].subs({N: 4, B: 2}))
    np.testing.assert_allclose(emp, ratio * Sig / 2, atol=1e-12)
