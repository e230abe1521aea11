"""Tests for camegrad_mini.minibatch: finite-data-set gradient noise and mini-batch SGD."""
from __future__ import annotations

import numpy as np
import pytest

from camegrad_mini import minibatch, sde


def _problem(seed=0, n=48, tasks=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) @ np.array([[1.2, 0.3], [0.0, 0.7]])
    Y = np.column_stack([X @ rng.normal(size=2) + 0.5 * rng.normal(size=n) for _ in range(tasks)])
    return minibatch.LinearRegressionTasks(X, Y, tuple(1.0 + np.arange(tasks)))


def test_trace_identity_and_factor():
    v = np.random.default_rng(1).normal(size=(30, 3)) + np.array([1.0, -2.0, 0.5])
    st = minibatch.per_example_statistics(v)
    assert st["trace"] == pytest.approx(st["second_moment"] - st["mean_norm2"])
    c_with = minibatch.minibatch_covariance(v, 5)
    c_wo = minibatch.minibatch_covariance(v, 5, replacement=False)
    np.testing.assert_allclose(c_wo, c_with * 25 / 29)
    np.testing.assert_allclose(minibatch.minibatch_covariance(v, 30, replacement=False), 0.0, atol=1e-15)
    with pytest.raises(ValueError, match="at most"):
        minibatch.minibatch_covariance(v, 31, replacement=False)
    with pytest.raises(ValueError, match="batch_size"):
        minibatch.minibatch_covariance(v, 0)
    with pytest.raises(ValueError, match="shape"):
        minibatch.per_example_statistics(np.ones(3))


@pytest.mark.parametrize("replacement", [True, False])
def test_sampled_batches_have_the_predicted_covariance(replacement):
    v = _problem().per_example_grads(np.zeros(2))
    bm = minibatch.sample_batch_means(v, 8, 40000, replacement=replacement, rng=np.random.default_rng(2))
    pred = minibatch.minibatch_covariance(v, 8, replacement)
    np.testing.assert_allclose(bm.mean(0), v.mean(0), atol=0.05 * np.sqrt(np.trace(pred)) * 4)
    emp = np.cov(bm.T, bias=True)
    assert np.linalg.norm(emp - pred) / np.linalg.norm(pred) < 0.03
    if not replacement:  # distinct indices: the factor (N - B)/(N - 1) is visible
        other = minibatch.minibatch_covariance(v, 8, True)
        assert np.linalg.norm(emp - other) / np.linalg.norm(other) > 0.08


def test_problem_gradients_are_consistent():
    p = _problem(tasks=3)
    th = np.array([[0.3, -0.2], [1.0, 2.0]])
    e = 1e-6
    L = lambda t: p.task_losses(t) @ np.asarray(p.weights)  # noqa: E731
    num = np.column_stack([(L(th + e * np.eye(2)[j]) - L(th - e * np.eye(2)[j])) / (2 * e) for j in range(2)])
    np.testing.assert_allclose(p.grad(th), num, atol=1e-6)
    np.testing.assert_allclose(p.per_example_grads(th[1]).mean(0), p.grad(th[1])[0], atol=1e-12)
    np.testing.assert_allclose(p.grad(p.minimizer()), 0.0, atol=1e-10)
    for i in range(3):
        g = p.per_example_grads  # single-task minimizer: that task's gradient vanishes
        one = minibatch.LinearRegressionTasks(p.X, p.Y[:, i], (1.0,))
        np.testing.assert_allclose(one.grad(p.minimizer(i)), 0.0, atol=1e-10)
        assert g is not None
    with pytest.raises(ValueError, match="weights"):
        minibatch.LinearRegressionTasks(p.X, p.Y, (1.0,))


def test_minibatch_sgd_matches_the_exact_covariance_not_the_gaussian_one():
    p = _problem(seed=3)
    H = p.hessian()
    eta = 0.6 / np.linalg.eigvalsh(H).max()
    pred = minibatch.stationary_cov_minibatch_sgd(p, eta, 2)
    run = minibatch.simulate_minibatch_sgd(p, np.tile(pred["theta_star"], (1500, 1)), eta=eta, batch_size=2,
                                           n_steps=400, burn_in=80, rng=np.random.default_rng(5))
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(run.cov, pred["exact"]) < 0.03
    assert rel(pred["exact"], pred["gaussian"]) > 0.05  # the state dependence of the noise is visible
    np.testing.assert_allclose(pred["gaussian"], sde.stationary_cov_sgd(H, eta, pred["Sigma_star"], 2))
    # without replacement runs as well (smaller noise: factor (N - B)/(N - 1) < 1)
    wo = minibatch.simulate_minibatch_sgd(p, np.tile(pred["theta_star"], (500, 1)), eta=eta, batch_size=2,
                                          n_steps=200, burn_in=40, rng=np.random.default_rng(6), replacement=False)
    assert np.trace(wo.cov) < 1.05 * np.trace(run.cov)
    with pytest.raises(ValueError, match="burn_in"):
        minibatch.simulate_minibatch_sgd(p, np.zeros((2, 2)), eta=eta, batch_size=2, n_steps=5, burn_in=5,
                                         rng=np.random.default_rng(0))
