"""Tests for camegrad_mini.problem_runs: the chapter 5 runner, its optimizers and its metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from camegrad_mini import problem_runs
from camegrad_mini.dilemma import TaskNoise
from camegrad_mini.geometry import hull_nearest_point
from camegrad_mini.optim import functional as F
from camegrad_mini.optim.simplex import min_norm_weights
from camegrad_mini.problems import FonsecaFleming, QuadraticPair

W = (1.0, 4.0)


def _grams(n=25, seed=0):
    gen = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = gen.standard_normal((2, 3))
        out.append(a @ a.T)
    return out


# ------------------------------------------------------------------------------------ methods
@pytest.mark.parametrize("name", ["ls", "pcgrad", "mgda", "cagrad", "came"])
def test_methods_return_the_package_functions_coefficients(name):
    fn = {"ls": F.linear_scalarization, "pcgrad": F.pcgrad, "mgda": F.mgda, "cagrad": F.cagrad,
          "came": F.came_grad}[name]
    m = problem_runs.make_method(name)
    for g in _grams():
        np.testing.assert_allclose(m.coefficients(g, np.array(W)), fn(g, W).coefficients, rtol=1e-12, atol=1e-12)


def test_stage_ablations_match_their_definitions():
    s1, s12, s23, full = (problem_runs.make_method(n) for n in ("s1", "s1+s2", "s2+s3", "s1+s2+s3"))
    w = np.array(W)
    for g in _grams():
        np.testing.assert_allclose(s1.coefficients(g, w), 2 * F.rectify(g, 0.5).u_star, atol=1e-12)
        np.testing.assert_allclose(s12.coefficients(g, w), F.came_grad(g, W, nu=0.0).coefficients, atol=1e-12)
        np.testing.assert_allclose(s23.coefficients(g, w), F.came_grad(g, W, rho=0.0).coefficients, atol=1e-12)
        np.testing.assert_allclose(full.coefficients(g, w), F.came_grad(g, W).coefficients, atol=1e-12)
    # rho=0: no rectification, the direction is the mean g_0 + g_1 (positive multiple)
    g = _grams(1, 5)[0]
    c = s23.coefficients(g, w) - 0.2 * 1.5 * w
    assert c[0] > 0 and abs(c[0] - c[1]) < 1e-12


def test_make_method_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        problem_runs.make_method("adam")
    with pytest.raises(ValueError, match="nu"):
        problem_runs.make_method("s1+s2", nu=0.3)
    with pytest.raises(ValueError, match="rho"):
        problem_runs.make_method("came", rho=1.5)
    with pytest.raises(ValueError, match="only rho"):
        problem_runs.make_method("s1", kappa=2.0)
    with pytest.raises(ValueError, match="no hyperparameters"):
        problem_runs.make_method("ls", rho=0.5)


def test_backward_passes_per_method():
    assert problem_runs.make_method("ls").backward_passes(2) == 1
    assert problem_runs.make_method("came").backward_passes(3) == 3


# ------------------------------------------------------------------------------------ optimizers
def test_adam_matches_torch_adam():
    gen = np.random.default_rng(1)
    ds = gen.standard_normal((30, 4, 2))
    step = problem_runs.Adam(0.05).start((4, 2))
    x = np.zeros((4, 2))
    p = torch.zeros(4, 2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.05)
    for d in ds:
        x = x + step(d)
        p.grad = torch.as_tensor(d)
        opt.step()
    np.testing.assert_allclose(x, p.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_sgd_and_optimizer_validation():
    np.testing.assert_allclose(problem_runs.SGD(0.1).start((1, 2))(np.array([[1.0, -2.0]])), [[-0.1, 0.2]])
    with pytest.raises(ValueError, match="lr"):
        problem_runs.SGD(0.0)
    with pytest.raises(ValueError, match="betas"):
        problem_runs.Adam(0.1, betas=(1.0, 0.9))


# ------------------------------------------------------------------------------------ simulate
def test_noise_free_ls_run_reaches_the_ls_minimizer():
    quad = QuadraticPair.ill_conditioned(10.0)
    run = problem_runs.simulate(
        quad,
        problem_runs.make_method("ls"),
        problem_runs.SGD(0.01),
        TaskNoise(0.0),
        x0=(0.0, 2.0),
        steps=2000,
        n_seeds=2,
        weights=W,
    )
    np.testing.assert_allclose(run.final, np.tile(quad.ls_minimizer(W), (2, 1)), atol=1e-6)
    assert run.xs.shape == (2, 2001, 2) and run.grads.shape == (2, 2000, 2, 2)
    assert not run.diverged.any()


def test_simulate_steps_along_the_method_direction():
    """One SGD step from x0 is exactly -lr * sum_i c_i ghat_i with the noisy gradients recorded."""
    ff = FonsecaFleming()
    run = problem_runs.simulate(
        ff,
        problem_runs.make_method("came"),
        problem_runs.SGD(0.3),
        TaskNoise(0.2),
        x0=(0.3, -0.4),
        steps=3,
        n_seeds=3,
        seed=7,
        weights=W,
    )
    for s in range(3):
        gn = run.observed[s, 1]
        coef = F.came_grad(gn @ gn.T, W).coefficients
        np.testing.assert_allclose(run.xs[s, 2] - run.xs[s, 1], -0.3 * coef @ gn, atol=1e-12)
        np.testing.assert_allclose(run.directions[s, 1], coef @ gn, atol=1e-12)
    np.testing.assert_allclose(run.grads[:, 2], ff.grads(run.xs[:, 2]))


def test_runs_are_paired_and_reproducible():
    quad = QuadraticPair()
    kw = dict(x0=(0.0, 1.0), steps=20, n_seeds=3, seed=4, weights=W)
    a = problem_runs.simulate(quad, problem_runs.make_method("ls"), problem_runs.SGD(0.05), TaskNoise(0.3), **kw)
    b = problem_runs.simulate(quad, problem_runs.make_method("mgda"), problem_runs.SGD(0.05), TaskNoise(0.3), **kw)
    again = problem_runs.simulate(quad, problem_runs.make_method("ls"), problem_runs.SGD(0.05), TaskNoise(0.3), **kw)
    np.testing.assert_array_equal(a.xs, again.xs)
    # isotropic noise does not depend on x: both methods saw the same draws
    np.testing.assert_allclose(a.observed - a.grads, b.observed - b.grads, atol=1e-12)
    assert not np.allclose(a.xs, b.xs)


def test_per_seed_starts_and_divergence_is_frozen():
    quad = QuadraticPair.ill_conditioned(10.0)
    starts = np.array([[0.0, 1.0], [1.0, 0.0]])
    run = problem_runs.simulate(
        quad,
        problem_runs.make_method("ls"),
        problem_runs.SGD(1.0),
        TaskNoise(0.0),
        x0=starts,
        steps=400,
        n_seeds=2,
        weights=W,
    )
    np.testing.assert_array_equal(run.xs[:, 0], starts)
    assert run.diverged.all()
    assert np.isfinite(run.xs).all()


def test_simulate_validates_arguments():
    quad = QuadraticPair()
    ok = dict(x0=(0.0, 1.0), steps=5, n_seeds=2)
    with pytest.raises(ValueError, match="steps"):
        problem_runs.simulate(
            quad, problem_runs.make_method("ls"), problem_runs.SGD(0.1), TaskNoise(0.1), **{**ok, "steps": 0}
        )
    with pytest.raises(ValueError, match="x0"):
        problem_runs.simulate(
            quad,
            problem_runs.make_method("ls"),
            problem_runs.SGD(0.1),
            TaskNoise(0.1),
            **{**ok, "x0": np.zeros((3, 2))},
        )
    with pytest.raises(ValueError, match="weights"):
        problem_runs.simulate(
            quad, problem_runs.make_method("ls"), problem_runs.SGD(0.1), TaskNoise(0.1), weights=(1.0, -1.0), **ok
        )
    with pytest.raises(ValueError, match="distinct"):
        problem_runs.run_methods(
            quad,
            [problem_runs.make_method("ls"), problem_runs.make_method("ls")],
            problem_runs.SGD(0.1),
            TaskNoise(0.1),
            **ok,
        )


def test_kappa_is_a_no_op_under_adam_and_a_step_multiplier_under_sgd():
    quad = QuadraticPair.ill_conditioned(10.0)
    kw = dict(x0=(0.0, 2.0), steps=60, n_seeds=2, seed=0, weights=W)
    a1 = problem_runs.simulate(
        quad, problem_runs.make_method("came", kappa=1.0), problem_runs.Adam(0.02), TaskNoise(0.5), **kw
    )
    a3 = problem_runs.simulate(
        quad, problem_runs.make_method("came", kappa=3.0), problem_runs.Adam(0.02), TaskNoise(0.5), **kw
    )
    np.testing.assert_allclose(a1.xs, a3.xs, atol=1e-7)
    s3 = problem_runs.simulate(
        quad, problem_runs.make_method("came", kappa=3.0), problem_runs.SGD(0.01), TaskNoise(0.5), **kw
    )
    s1 = problem_runs.simulate(
        quad, problem_runs.make_method("came", kappa=1.0), problem_runs.SGD(0.03), TaskNoise(0.5), **kw
    )
    np.testing.assert_allclose(s1.xs, s3.xs, atol=1e-9)
    assert not np.allclose(
        s3.xs,
        problem_runs.simulate(
            quad, problem_runs.make_method("came", kappa=1.0), problem_runs.SGD(0.01), TaskNoise(0.5), **kw
        ).xs,
    )


# ------------------------------------------------------------------------------------ metrics
def test_stationarity_gap_is_the_min_norm_point():
    gen = np.random.default_rng(2)
    g = gen.standard_normal((50, 2, 2))
    gap = problem_runs.stationarity_gap(g)
    for k in range(50):
        a = min_norm_weights(g[k] @ g[k].T)
        assert gap[k] == pytest.approx(np.linalg.norm(a @ g[k]), abs=1e-9)
    assert problem_runs.stationarity_gap(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(0.0)
    assert problem_runs.stationarity_gap(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(np.sqrt(0.5))
    with pytest.raises(ValueError, match="grads"):
        problem_runs.stationarity_gap(np.zeros((3, 2)))
    assert np.allclose(hull_nearest_point(g[:, 0], g[:, 1]).shape, (50, 2))


def test_pareto_position_on_a_straight_set():
    ps = QuadraticPair().pareto_set(11)  # from (-1, 0) to (1, 0)
    dist, pos = problem_runs.pareto_position(np.array([[0.0, 0.5], [-2.0, 0.0], [0.5, -0.1], [1.0, 0.0]]), ps)
    np.testing.assert_allclose(dist, [0.5, 1.0, 0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(pos, [0.5, 0.0, 0.75, 1.0], atol=1e-12)
    d2, p2 = problem_runs.pareto_position(np.zeros((3, 4, 2)), ps)
    assert d2.shape == p2.shape == (3, 4)
    with pytest.raises(ValueError, match="pareto_set"):
        problem_runs.pareto_position(np.zeros(2), np.zeros((1, 2)))


def test_update_conflict():
    g = np.array([[1.0, 0.0], [-1.0, 0.1]])
    # moving along -g_0 decreases task 0 and increases task 1 (their gradients conflict)
    assert problem_runs.update_conflict(np.array([-1.0, 0.0]), g)
    assert not problem_runs.update_conflict(np.array([0.0, -1.0]), g)
    assert problem_runs.update_conflict(np.array([0.0, 1.0]), g)


def test_summaries_and_statistics():
    v = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]])
    np.testing.assert_allclose(problem_runs.tail_mean(v, 0.5), [3.5, 4.0])
    np.testing.assert_allclose(problem_runs.tail_mean(v, 0.01), [4.0, 6.0])
    m, s = problem_runs.mean_sd(np.array([1.0, 3.0]))
    assert (m, s) == (2.0, pytest.approx(np.sqrt(2.0)))
    assert problem_runs.mean_sd_text(np.array([1.0, 3.0]), 2) == "2.00 ± 1.41"
    with pytest.raises(ValueError, match="two seeds"):
        problem_runs.mean_sd(np.array([1.0]))
    with pytest.raises(ValueError, match="fraction"):
        problem_runs.tail_mean(v, 0.0)


def test_paired_difference_is_the_stats_helper():
    """problem_runs re-exports camegrad_mini.stats: one t interval for chapters 5 and 6."""
    from camegrad_mini import stats

    assert (
        problem_runs.paired_difference is stats.paired_difference and problem_runs.mean_interval is stats.mean_interval
    )
    base = np.array([1.0, 2.0, 3.0, 4.0])
    clear = problem_runs.paired_difference(base + 0.5 + np.array([0.01, -0.01, 0.02, -0.02]), base)
    assert clear.mean == pytest.approx(0.5) and clear.excludes_zero and clear.wins == 4
    noisy = problem_runs.paired_difference(base + np.array([0.3, -0.3, 0.2, -0.1]), base)
    assert noisy.covers(0.0) and noisy.df == 3
    with pytest.raises(ValueError, match="same length"):
        problem_runs.paired_difference(base, base[:3])


def test_paired_runs_give_narrower_intervals_than_unpaired_spreads():
    """Common random numbers: the paired interval of LS vs LS at a larger learning rate is far
    narrower than what the two methods' own standard deviations would suggest."""
    quad = QuadraticPair.ill_conditioned(10.0)
    kw = dict(x0=(0.0, 2.0), steps=200, n_seeds=6, seed=0, weights=W)
    a = problem_runs.summarize(
        problem_runs.simulate(quad, problem_runs.make_method("ls"), problem_runs.SGD(0.015), TaskNoise(0.5), **kw)
    )["gap"]
    b = problem_runs.summarize(
        problem_runs.simulate(quad, problem_runs.make_method("ls"), problem_runs.SGD(0.01), TaskNoise(0.5), **kw)
    )["gap"]
    d = problem_runs.paired_difference(a, b)
    assert d.excludes_zero and d.mean > 0
    assert d.sd < 0.5 * min(a.std(ddof=1), b.std(ddof=1))


def test_summarize_keys_and_shapes():
    ff = FonsecaFleming()
    run = problem_runs.simulate(
        ff,
        problem_runs.make_method("mgda"),
        problem_runs.SGD(0.1),
        TaskNoise(0.05),
        x0=(0.5, -0.5),
        steps=40,
        n_seeds=3,
        weights=W,
    )
    out = problem_runs.summarize(run, ff.pareto_set(101))
    assert set(out) == {"gap", "final_gap", "conflict_exact", "conflict_observed", "distance", "position"}
    assert all(v.shape == (3,) for v in out.values())
    # MGDA never conflicts with the gradients it saw under SGD
    assert (out["conflict_observed"] == 0).all()
    assert set(problem_runs.summarize(run)) == {"gap", "final_gap", "conflict_exact", "conflict_observed"}


def test_format_table():
    text = problem_runs.format_table({"LS": {"a": 0.12345, "b": "x"}, "MGDA": {"a": 1.0, "b": "yy"}}, digits=2, width=6)
    lines = text.splitlines()
    assert lines[1].startswith("LS") and lines[1].endswith("  0.12     x")
    assert lines[2].endswith("  1.00    yy")
    with pytest.raises(ValueError, match="rows"):
        problem_runs.format_table({})


# ------------------------------------------------------------------------------------ cost invariant
def test_count_backward_passes():
    assert problem_runs.count_backward_passes("ls-backward") == {"shared": 1, "head": 1}
    assert problem_runs.count_backward_passes("came") == {"shared": 2, "head": 2}
    assert problem_runs.count_backward_passes("mgda", two_heads=True) == {"shared": 2, "head 0": 1, "head 1": 1}
    assert problem_runs.count_backward_passes("ls-backward", two_heads=True) == {"shared": 1, "head 0": 1, "head 1": 1}
