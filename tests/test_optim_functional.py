"""Tests of camegrad_mini.optim.functional and .simplex: the numerics of every method.

Property tests draw random gradient families at scales from 1e-8 to 1e8 (hypothesis, derandomised
so that every run checks the same examples) and compare with independent references: brute-force
search over the trust-region sphere for S1, KKT conditions and scipy for the simplex problems,
and the papers' two-task formulas written out on explicit vectors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, minimize_scalar

from camegrad_mini.optim import functional as F
from camegrad_mini.optim.simplex import minimize_on_segment, min_norm_weights, solve_simplex_dual

PROPS = settings(
    max_examples=250, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# ------------------------------------------------------------------------------ strategies
@st.composite
def gradient_family(draw, tasks=(2, 3), dims=(2, 3), scale_exp=(-8, 8)):
    """T gradients in D dimensions at a common scale 10**k (k in scale_exp), with structure."""
    t = draw(st.sampled_from(tasks))
    d = draw(st.sampled_from(dims))
    seed = draw(st.integers(0, 2**31 - 1))
    k = draw(st.integers(*scale_exp))
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(t, d)) * rng.uniform(0.1, 3.0, size=(t, 1))
    kind = draw(st.sampled_from(["random", "conflict", "aligned"]))
    if kind == "conflict":  # push the second gradient against the first
        j[1] = -rng.uniform(0.2, 5.0) * j[0] + 0.3 * rng.normal(size=d)
    elif kind == "aligned":
        j[1:] = j[0] * rng.uniform(0.5, 2.0, size=(t - 1, 1)) + 0.1 * rng.normal(size=(t - 1, d))
    return j * 10.0**k


def sphere_points(d: int, n: int) -> np.ndarray:
    if d == 2:
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([np.cos(th), np.sin(th)], 1)
    i = np.arange(n) + 0.5  # Fibonacci sphere
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)


def worst_inner(j: np.ndarray, u: np.ndarray) -> np.ndarray:
    return (np.atleast_2d(u) @ j.T).min(axis=1)


# ------------------------------------------------------------------------------ S1: rectify
@PROPS
@given(j=gradient_family(), rho=st.floats(0.05, 0.95))
def test_rectify_matches_bruteforce_maxmin(j, rho):
    """u* lies on the trust-region sphere and no sampled point of the ball beats its worst inner product."""
    res = F.rectify(F.gram_matrix(j), rho)
    assume(res.degenerate is None)
    mu = j.mean(0)
    u = F.combine(j, res.u_star)
    radius = rho * np.linalg.norm(mu)
    s = np.abs(j).max() * j.shape[1] ** 0.5
    assert abs(np.linalg.norm(u - mu) - radius) <= 1e-9 * s
    cand = mu + radius * sphere_points(j.shape[1], 20000 if j.shape[1] == 2 else 40000)
    brute = worst_inner(j, np.vstack([cand, mu])).max()
    ours = worst_inner(j, u)[0]
    assert ours >= brute - 1e-9 * s * s
    # The grid comes close to the optimum (it is a lower bound, ours the exact value).
    assert ours - brute <= 2e-3 * s * s
    # Where a common non-conflicting direction exists in the ball, u* is one.
    if brute >= 0:
        assert ours >= -1e-9 * s * s


@PROPS
@given(j=gradient_family(tasks=(2, 3, 4), dims=(2, 3, 5)))
def test_rho_zero_gives_mean_gradient(j):
    res = F.rectify(F.gram_matrix(j), 0.0)
    assert np.array_equal(res.u_star, np.full(len(j), 1 / len(j))) or res.degenerate
    out = F.came_grad(F.gram_matrix(j), rho=0.0, nu=0.0, kappa=1.0)
    if out.degenerate is None:
        d = F.combine(j, out.coefficients)
        mu = j.mean(0)
        cos = d @ mu / (np.linalg.norm(d) * np.linalg.norm(mu))
        assert cos == pytest.approx(1.0, abs=1e-9)


def test_rectify_known_1d_example_from_method_note():
    """g_1 = 1, g_2 = -10, rho = 0.5: u* = -2.25, which still conflicts with g_1 (method note)."""
    j = np.array([[1.0], [-10.0]])
    res = F.rectify(F.gram_matrix(j), 0.5)
    assert F.combine(j, res.u_star)[0] == pytest.approx(-2.25)
    assert np.allclose(res.alpha, [1.0, 0.0])


# ------------------------------------------------------------------------------ S2, S3, composed
@PROPS
@given(
    j=gradient_family(tasks=(2, 3, 4), dims=(2, 3, 6)),
    w=st.lists(st.floats(0.1, 10.0), min_size=4, max_size=4),
    rho=st.floats(0.0, 0.99),
    kappa=st.floats(1.0, 5.0),
    nu=st.floats(0.0, 1.0),
)
def test_came_grad_finite_and_s2_hits_target_norm(j, w, rho, kappa, nu):
    w = np.array(w[: len(j)])
    out = F.came_grad(F.gram_matrix(j), w, rho=rho, kappa=kappa, nu=nu)
    assert np.all(np.isfinite(out.coefficients))
    for fn in (F.cagrad, F.mgda, F.pcgrad):
        assert np.all(np.isfinite(fn(F.gram_matrix(j), w).coefficients))
    assert all(math.isfinite(v) for k, v in out.norms.items() if k != "g_alpha")
    g_joint = np.linalg.norm(w @ j)
    u_en = F.combine(j, out.extras["u_en"])  # measured on the vectors, not the Gram matrix
    if out.degenerate is None:
        # S2 gives u* the norm kappa ||g_joint|| up to its epsilon: exactly
        # kappa ||g_joint|| ||u*|| / (||u*|| + eps). With rho near 1, ||u*|| can be small against
        # the gradients' scale (the relative eps's unit), so the eps shortfall is part of the spec.
        u_norm, eps_eff = out.norms["u_star"], out.extras["eps_effective"]
        assert np.linalg.norm(u_en) == pytest.approx(kappa * g_joint * u_norm / (u_norm + eps_eff), rel=1e-6)
        assert np.linalg.norm(u_en) == pytest.approx(kappa * g_joint, rel=1e-6 + eps_eff / u_norm)
        # S3 is the stated convex mix
        expected = (1 - nu) * u_en + nu * kappa * (w @ j)
        assert np.allclose(F.combine(j, out.coefficients), expected, rtol=1e-9, atol=1e-12 * g_joint)


@PROPS
@given(j=gradient_family(tasks=(2, 3)), kappa=st.floats(1.0, 20.0), nu=st.floats(0.0, 1.0))
def test_kappa_factors_out(j, kappa, nu):
    g = F.gram_matrix(j)
    base = F.came_grad(g, [1.0, 4.0, 2.0][: len(j)], kappa=1.0, nu=nu)
    scaled = F.came_grad(g, [1.0, 4.0, 2.0][: len(j)], kappa=kappa, nu=nu)
    assert np.allclose(scaled.coefficients, kappa * base.coefficients, rtol=1e-12, atol=0)


@PROPS
@given(j=gradient_family(tasks=(2, 3, 4), dims=(2, 4)), data=st.data())
def test_permutation_invariance(j, data):
    t = len(j)
    perm = np.array(data.draw(st.permutations(range(t))))
    w = np.arange(1.0, t + 1.0)
    g = F.gram_matrix(j)
    for method in ("came", "cagrad", "mgda", "ls"):
        fn = {"came": F.came_grad, "cagrad": F.cagrad, "mgda": F.mgda, "ls": F.linear_scalarization}[method]
        a = F.combine(j, fn(g, w).coefficients)
        b = F.combine(j[perm], fn(g[np.ix_(perm, perm)], w[perm]).coefficients)
        scale = np.linalg.norm(a) + np.abs(j).max()
        assert np.allclose(a, b, rtol=1e-6, atol=1e-6 * scale), method
    if t == 2:  # PCGrad's random order is irrelevant for two tasks
        a = F.combine(j, F.pcgrad(g, w).coefficients)
        b = F.combine(j[perm], F.pcgrad(g[np.ix_(perm, perm)], w[perm]).coefficients)
        assert np.allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(j).max())


@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e4, 1e8])
def test_scale_equivariance(scale):
    """All methods are positively homogeneous: gradients x s -> direction x s (relative eps)."""
    j = np.array([[1.0, 0.3, -0.2], [-0.9, 0.5, 0.1], [0.2, -0.1, 1.0]])
    for fn in (F.came_grad, F.cagrad, F.mgda, F.pcgrad, F.linear_scalarization):
        a = fn(F.gram_matrix(j), [1.0, 4.0, 2.0]).coefficients
        b = fn(F.gram_matrix(j * scale), [1.0, 4.0, 2.0]).coefficients
        assert np.allclose(a, b, rtol=1e-7), fn.__name__


def test_came_eps_absolute_vs_relative():
    j = np.array([[1.0, 0.0], [-0.5, 1.0]]) * 1e-8
    rel = F.came_grad(F.gram_matrix(j), eps=1e-8, eps_mode="relative")
    ab = F.came_grad(F.gram_matrix(j), eps=1e-8, eps_mode="absolute")
    # With an absolute epsilon tiny gradients no longer reach the target norm kappa ||g_joint||.
    assert rel.norms["u_en"] == pytest.approx(1.5 * rel.norms["g_joint"], rel=1e-6)
    assert ab.norms["u_en"] < 0.8 * 1.5 * ab.norms["g_joint"]


def test_rectify_on_weighted_differs_and_uses_weighted_mean():
    j = np.array([[1.0, 0.0], [-0.6, 0.8]])
    w = np.array([1.0, 4.0])
    raw = F.came_grad(F.gram_matrix(j), w, rectify_on="raw")
    wtd = F.came_grad(F.gram_matrix(j), w, rectify_on="weighted")
    assert np.allclose(raw.extras["mu"], [0.5, 0.5])
    assert np.allclose(wtd.extras["mu"], [0.5, 2.0])  # mean of omega_i g_i, in raw coefficients
    assert not np.allclose(raw.coefficients, wtd.coefficients)


# ------------------------------------------------------------------------------ degenerate cases
def test_mu_zero_opposite_gradients():
    j = np.array([[1.0, 2.0], [-1.0, -2.0]])
    out = F.came_grad(F.gram_matrix(j), [1.0, 4.0], kappa=1.5, nu=0.2)
    assert out.degenerate == "mu_zero"
    # u* = 0, so u_en = 0 and g_final = nu * kappa * g_joint
    assert np.allclose(F.combine(j, out.coefficients), 0.2 * 1.5 * (j[0] + 4 * j[1]))


def test_g_alpha_zero_uses_mean():
    j = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    res = F.rectify(F.gram_matrix(j), 0.5)
    assert res.degenerate == "g_alpha_zero"
    assert np.allclose(res.u_star, 1 / 3)
    # u* = mu is optimal here: the max-min value 0 is attained
    assert worst_inner(j, F.combine(j, res.u_star))[0] == pytest.approx(0.0, abs=1e-12)


def test_zero_gradients_and_single_task():
    z = F.came_grad(np.zeros((2, 2)))
    assert z.degenerate == "zero_gradients" and np.all(np.isfinite(z.coefficients))
    assert np.allclose(z.coefficients, 0.2 * 1.5)  # only the fused nu*kappa*g_joint term (= 0 here)
    for fn in (F.cagrad, F.mgda, F.pcgrad):
        assert np.all(np.isfinite(fn(np.zeros((3, 3))).coefficients))
    one = F.came_grad(np.array([[4.0]]), [2.0], kappa=1.5)
    assert one.degenerate == "single_task"
    assert one.coefficients[0] == pytest.approx(1.5 * 2.0)  # kappa * omega * g


def test_g_joint_zero():
    j = np.array([[4.0, 0.0], [-1.0, 0.0]])
    out = F.came_grad(F.gram_matrix(j), [1.0, 4.0])
    assert out.degenerate == "g_joint_zero"
    assert np.allclose(F.combine(j, out.coefficients), 0.0, atol=1e-12)


# ------------------------------------------------------------------------------ baselines
@PROPS
@given(j=gradient_family(tasks=(2, 3, 4), dims=(2, 3, 5)))
def test_mgda_is_min_norm_point_of_hull(j):
    g = F.gram_matrix(j)
    out = F.mgda(g)
    alpha = out.alpha
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0)
    d = alpha @ j
    s2 = np.abs(g).max()
    # KKT: d is the min-norm point of the hull iff <g_i, d> >= ||d||^2 for every i
    assert np.all(j @ d >= d @ d - 1e-8 * s2)
    # and it matches a dense search over the simplex
    grid = np.linspace(0, 1, 201)
    if len(j) == 2:
        pts = np.stack([grid, 1 - grid], 1)
    else:
        a, b = np.meshgrid(grid, grid)
        pts = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], 1)
        pts = pts[pts[:, 2] >= 0]
        pts = np.hstack([pts, np.zeros((len(pts), len(j) - 3))])
    best = np.min(np.linalg.norm(pts @ j, axis=1))
    assert np.linalg.norm(d) <= best + 1e-9 * math.sqrt(s2)
    # direction at sum scale; exactly 0 where the min-norm point is 0 up to rounding
    if out.degenerate == "pareto_stationary":
        assert not np.any(out.coefficients)
    else:
        assert np.allclose(F.combine(j, out.coefficients), len(j) * d)


def test_mgda_two_task_closed_form():
    j = np.array([[2.0, 0.0], [-1.0, 1.0]])
    g = F.gram_matrix(j)
    t = np.clip((g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1]), 0, 1)
    assert np.allclose(F.mgda(g).alpha, [t, 1 - t])
    assert np.allclose(min_norm_weights(g / g.max()), [t, 1 - t])


@PROPS
@given(j=gradient_family(tasks=(2,), dims=(2, 3, 4)), w=st.tuples(st.floats(0.1, 5), st.floats(0.1, 5)))
def test_pcgrad_two_task_formula(j, w):
    h = np.array(w)[:, None] * j
    d01 = h[0] @ h[1]
    if d01 < 0:
        expected = h[0] - d01 / (h[1] @ h[1]) * h[1] + h[1] - d01 / (h[0] @ h[0]) * h[0]
    else:
        expected = h[0] + h[1]
    got = F.combine(j, F.pcgrad(F.gram_matrix(j), w).coefficients)
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(h).max())


def test_pcgrad_three_tasks_matches_vector_implementation():
    rng = np.random.default_rng(3)
    j = rng.normal(size=(3, 6))
    j[1] -= 2 * j[0]
    order_rng = np.random.default_rng(7)
    expected = np.zeros(6)
    for i in range(3):
        v = j[i].copy()
        for k in order_rng.permutation([x for x in range(3) if x != i]):
            dot = v @ j[k]
            if dot < 0:
                v = v - dot / (j[k] @ j[k]) * j[k]
        expected += v
    got = F.combine(j, F.pcgrad(F.gram_matrix(j), rng=np.random.default_rng(7)).coefficients)
    assert np.allclose(got, expected)


def _cagrad_reference(j: np.ndarray, c: float, rescale: int) -> np.ndarray:
    """The official recipe on explicit vectors: scipy for the dual, then rescale and x T."""
    t = len(j)
    g0 = j.mean(0)
    gg = j @ j.T
    cn = c * np.linalg.norm(g0)
    obj = lambda a: a @ (j @ g0) + cn * math.sqrt(max(a @ gg @ a, 0.0))  # noqa: E731
    if t == 2:
        x = minimize_scalar(lambda x: obj(np.array([x, 1 - x])), bounds=(0, 1), method="bounded",
                            options={"xatol": 1e-12}).x
        a = np.array([x, 1 - x])
    else:
        a = minimize(obj, np.full(t, 1 / t), method="SLSQP", bounds=[(0, 1)] * t,
                     constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}], options={"ftol": 1e-15}).x
    gw = a @ j
    d = g0 + cn * gw / np.linalg.norm(gw)
    return t * d / {0: 1.0, 1: 1 + c * c, 2: 1 + c}[rescale]


@pytest.mark.parametrize("rescale", [0, 1, 2])
@pytest.mark.parametrize("tasks", [2, 3])
def test_cagrad_matches_reference(rescale, tasks):
    rng = np.random.default_rng(10 + tasks)
    j = rng.normal(size=(tasks, 5))
    j[1] = -0.7 * j[0] + 0.5 * rng.normal(size=5)
    for c in (0.2, 0.5, 0.9):
        got = F.combine(j, F.cagrad(F.gram_matrix(j), c=c, rescale=rescale).coefficients)
        assert np.allclose(got, _cagrad_reference(j, c, rescale), rtol=1e-5, atol=1e-6)


def test_cagrad_without_rescale_equals_came_s1_direction():
    j = np.array([[1.0, 0.2], [-0.8, 0.6]])
    g = F.gram_matrix(j)
    assert np.allclose(F.cagrad(g, c=0.5, rescale=0).coefficients, 2 * F.rectify(g, 0.5).u_star)


def test_linear_scalarization_and_diagnostics():
    j = np.array([[1.0, 0.0], [-1.0, 1.0]])
    out = F.linear_scalarization(F.gram_matrix(j), [1.0, 4.0])
    assert np.allclose(out.coefficients, [1.0, 4.0])
    assert out.conflict
    assert out.cosines[0, 1] == pytest.approx(-1 / math.sqrt(2))
    assert out.norms["g_joint"] == pytest.approx(np.linalg.norm(j[0] + 4 * j[1]))
    assert not F.conflict_indicator(np.eye(2))
    assert np.allclose(F.pairwise_cosines(np.diag([1.0, 0.0])), [[1, 0], [0, 0]])


# ------------------------------------------------------------------------------ solver
def test_minimize_on_segment_against_grid():
    rng = np.random.default_rng(0)
    ts = np.linspace(-0.5, 1.5, 40001)
    for _ in range(200):
        x, d = rng.normal(size=3), rng.normal(size=3)
        beta, r = rng.normal(), abs(rng.normal())
        lo, hi = sorted(rng.uniform(-0.5, 1.5, size=2))
        f = lambda t, beta=beta, r=r, x=x, d=d: (  # noqa: E731
            beta * t + r * np.linalg.norm(x[None] + np.asarray(t)[:, None] * d[None], axis=1))
        t_star = minimize_on_segment(beta, d @ d, x @ d, x @ x, r, lo, hi)
        grid = ts[(ts >= lo) & (ts <= hi)]
        assert f(np.array([t_star]))[0] <= f(grid).min() + 1e-12


def test_simplex_dual_against_slsqp():
    rng = np.random.default_rng(1)
    for _ in range(40):
        t, d = rng.integers(3, 6), rng.integers(2, 6)
        j = rng.normal(size=(t, d)) * rng.uniform(0.1, 3, size=(t, 1))
        g = j @ j.T
        g /= g.diagonal().max()
        b = g @ np.full(t, 1 / t)
        r = 0.7 * math.sqrt(np.full(t, 1 / t) @ b)
        sol = solve_simplex_dual(g, b, r)
        obj = lambda a, b=b, r=r, g=g: a @ b + r * math.sqrt(max(a @ g @ a, 0))  # noqa: E731
        ref = minimize(obj, np.full(t, 1 / t), method="SLSQP", bounds=[(0, 1)] * t,
                       constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}], options={"ftol": 1e-15})
        assert sol.value <= ref.fun + 1e-10
        assert sol.alpha.min() >= 0 and sol.alpha.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------------------ helpers, errors
def test_gram_and_combine_per_tensor_equal_stacked():
    torch.manual_seed(0)
    a = [torch.randn(3, 2), torch.randn(4)]
    b = [torch.randn(3, 2), None]  # task 1 does not reach the second tensor
    stacked = torch.stack([torch.cat([a[0].flatten(), a[1]]), torch.cat([b[0].flatten(), torch.zeros(4)])])
    assert np.allclose(F.gram_matrix([a, b]), F.gram_matrix(stacked), rtol=1e-6)
    parts = F.combine([a, b], [2.0, -1.0])
    flat = F.combine(stacked, [2.0, -1.0])
    assert torch.allclose(torch.cat([parts[0].flatten(), parts[1]]), flat, atol=1e-6)
    d, res = F.aggregate(stacked, "came", [1.0, 4.0])
    assert d.shape == (10,) and res.method == "came"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": 1.0}, "rho"),
        ({"rho": -0.1}, "rho"),
        ({"kappa": 0.5}, "kappa"),
        ({"nu": 1.5}, "nu"),
        ({"nu": float("nan")}, "nu"),
        ({"eps": -1.0}, "eps"),
        ({"rectify_on": "both"}, "rectify_on"),
        ({"eps_mode": "x"}, "eps_mode"),
        ({"task_weights": [1.0, 2.0, 3.0]}, "task_weights"),
        ({"task_weights": [1.0, -2.0]}, "task_weights"),
    ],
)
def test_came_grad_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.came_grad(np.eye(2), **kwargs)


def test_other_value_errors():
    F.came_grad(np.eye(2), kappa=0.5, allow_kappa_below_one=True)  # allowed with the flag
    with pytest.raises(ValueError, match="gram"):
        F.came_grad(np.ones((2, 3)))
    with pytest.raises(ValueError, match="gram"):
        F.mgda(np.array([[np.nan, 0], [0, 1.0]]))
    with pytest.raises(ValueError, match="rescale"):
        F.cagrad(np.eye(2), rescale=3)
    with pytest.raises(ValueError, match="c must"):
        F.cagrad(np.eye(2), c=-1.0)
    with pytest.raises(ValueError, match="method"):
        F.aggregate(torch.eye(2), "nash")


def test_mgda_returns_exactly_zero_at_a_pareto_stationary_point():
    """Opposite gradients: the min-norm point is 0 up to rounding; MGDA must return exactly 0 so
    that Adam does not turn rounding noise into a full-size step (found by the chapter 4 author)."""
    j = np.array([[1.0, 0.3], [-3.0, -0.9]], dtype=np.float32).astype(np.float64)
    for w in ([1.0, 1.0], [0.2, 0.8]):
        res = F.mgda(F.gram_matrix(j), w)
        assert res.degenerate == "pareto_stationary"
        assert np.array_equal(F.combine(j, res.coefficients), np.zeros(2))
