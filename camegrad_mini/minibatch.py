"""Mini-batch gradient noise on a finite data set, and mini-batch SGD that samples real examples.

Chapter 2 models SGD's noise as Gaussian with covariance ``Sigma / B``. This module computes that
covariance from per-example gradients instead of assuming it:

* :func:`per_example_statistics`: mean gradient ``g``, per-example covariance
  ``Sigma = (1/N) sum_n (v_n - g)(v_n - g)^T`` and the identity ``tr Sigma = E_n |v_n|^2 - |g|^2``;
* :func:`minibatch_covariance`: ``Cov`` of a batch mean of ``B`` examples, ``Sigma / B`` with
  replacement and ``(N - B)/(N - 1) * Sigma / B`` without (derived in
  :func:`camegrad_mini.sde_derivations.minibatch_covariance`);
* :func:`sample_batch_means`: Monte Carlo batch means, both sampling schemes;
* :class:`LinearRegressionTasks` and :func:`simulate_minibatch_sgd`: a multi-task least-squares
  problem on ``N`` examples (every example carries every task's target) and vectorized mini-batch
  SGD on its linear-scalarization loss, many chains at once;
* :func:`stationary_cov_minibatch_sgd`: that SGD's exact stationary covariance, which includes the
  state dependence of the noise that a fixed-``Sigma`` Gaussian model leaves out.

Everything is NumPy. Per-example gradients have shape ``(N, d)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from .sde import ChainStatistics

__all__ = [
    "PerExampleStatistics",
    "per_example_statistics",
    "minibatch_covariance",
    "sample_batch_means",
    "LinearRegressionTasks",
    "simulate_minibatch_sgd",
    "stationary_cov_minibatch_sgd",
]

Array = np.ndarray


class PerExampleStatistics(TypedDict):
    """What :func:`per_example_statistics` returns (a plain ``dict`` at run time)."""

    mean: Array
    Sigma: Array
    second_moment: float
    mean_norm2: float
    trace: float


def _grads(per_example) -> Array:
    v = np.asarray(per_example, dtype=float)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"per-example gradients must have shape (N, d) with N >= 2, got {v.shape}")
    return v


def _batch(batch_size, n: int, replacement: bool) -> int:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not replacement and batch_size > n:
        raise ValueError(f"without replacement batch_size must be at most N = {n}, got {batch_size}")
    return int(batch_size)


def per_example_statistics(per_example) -> PerExampleStatistics:
    """Mean ``g``, per-example covariance ``Sigma`` (population, ``1/N``) and the trace identity.

    Returns ``mean``, ``Sigma``, ``second_moment = E_n |v_n|^2``, ``mean_norm2 = |g|^2`` and
    ``trace = tr Sigma``, which equals ``second_moment - mean_norm2`` (to rounding).

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise on a finite data set).
    """
    v = _grads(per_example)
    g = v.mean(0)
    dev = v - g
    Sigma = dev.T @ dev / len(v)
    return {"mean": g, "Sigma": 0.5 * (Sigma + Sigma.T), "second_moment": float(np.mean(np.sum(v**2, 1))),
            "mean_norm2": float(g @ g), "trace": float(np.trace(Sigma))}


def minibatch_covariance(per_example, batch_size: int, replacement: bool = True) -> Array:
    """Covariance of the mean of ``B`` uniformly drawn per-example gradients.

    With replacement ``Sigma / B``; without replacement ``(N - B)/(N - 1) * Sigma / B`` (zero when the
    batch is the whole data set).

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise on a finite data set).
    """
    v = _grads(per_example)
    n = len(v)
    b = _batch(batch_size, n, replacement)
    Sigma = per_example_statistics(v)["Sigma"]
    factor = 1.0 if replacement else (n - b) / (n - 1)
    return factor * Sigma / b


def sample_batch_means(per_example, batch_size: int, n_batches: int, *, replacement: bool,
                       rng: np.random.Generator) -> Array:
    """``n_batches`` independent batch means, shape ``(n_batches, d)``.

    Without replacement each batch is ``B`` distinct indices (the first ``B`` of a random ordering).

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise on a finite data set).
    """
    v = _grads(per_example)
    n = len(v)
    b = _batch(batch_size, n, replacement)
    if int(n_batches) != n_batches or n_batches < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches}")
    if replacement:
        idx = rng.integers(n, size=(int(n_batches), b))
    else:
        idx = np.argpartition(rng.random((int(n_batches), n)), b - 1, axis=1)[:, :b]
    return v[idx].mean(1)


@dataclass(frozen=True)
class LinearRegressionTasks:
    """Least-squares tasks on one data set: ``L_i(theta) = (1/2N) sum_n (x_n^T theta - y_{n,i})^2``.

    ``X`` has shape ``(N, d)``, ``Y`` shape ``(N, n_tasks)``, ``weights`` the task weights ``omega``
    of linear scalarization, ``L = sum_i omega_i L_i``. Every example carries every task's target,
    so example ``n``'s joint gradient is ``x_n (sum_i omega_i)(x_n^T theta) - x_n sum_i omega_i y_{n,i}``.

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise on a finite data set).
    """

    X: Array
    Y: Array
    weights: tuple[float, ...]

    def __post_init__(self):
        X = np.asarray(self.X, dtype=float)
        Y = np.asarray(self.Y, dtype=float)
        if Y.ndim == 1:
            Y = Y[:, None]
        w = np.asarray(self.weights, dtype=float)
        if X.ndim != 2 or Y.shape[0] != X.shape[0]:
            raise ValueError(f"X must be (N, d) and Y (N, n_tasks) with the same N, got {X.shape}, {Y.shape}")
        if w.shape != (Y.shape[1],) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {Y.shape[1]} non-negative numbers, not all zero, got {self.weights}")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "Y", Y)
        object.__setattr__(self, "weights", tuple(float(x) for x in w))

    @property
    def _w(self) -> Array:
        return np.asarray(self.weights)

    def hessian(self, task: int | None = None) -> Array:
        """``H_i = X^T X / N`` for one task, ``(sum_i omega_i) X^T X / N`` for the joint loss (``task=None``)."""
        H = self.X.T @ self.X / len(self.X)
        return H if task is not None else self._w.sum() * H

    def minimizer(self, task: int | None = None) -> Array:
        """The minimizer of task ``task``'s loss, or of the joint loss (``task=None``)."""
        y = self.Y[:, task] if task is not None else self.Y @ self._w / self._w.sum()
        return np.linalg.lstsq(self.X, y, rcond=None)[0]

    def task_losses(self, theta) -> Array:
        """Every task's loss at each row of ``theta`` (shape ``(n_chains, d)``): shape ``(n_chains, n_tasks)``."""
        th = np.atleast_2d(np.asarray(theta, dtype=float))
        r = th @ self.X.T                                   # (n_chains, N)
        return 0.5 * np.mean((r[:, :, None] - self.Y[None]) ** 2, axis=1)

    def per_example_grads(self, theta) -> Array:
        """The joint per-example gradients at one point ``theta`` (shape ``(d,)``): shape ``(N, d)``."""
        th = np.asarray(theta, dtype=float)
        res = self._w.sum() * (self.X @ th) - self.Y @ self._w
        return self.X * res[:, None]

    def grad(self, theta) -> Array:
        """The joint full-batch gradient at each row of ``theta``: shape ``(n_chains, d)``."""
        th = np.atleast_2d(np.asarray(theta, dtype=float))
        return th @ self.hessian().T - (self.X.T @ (self.Y @ self._w)) / len(self.X)


def simulate_minibatch_sgd(problem: LinearRegressionTasks, theta0, *, eta: float, batch_size: int, n_steps: int,
                           burn_in: int, rng: np.random.Generator, replacement: bool = True) -> ChainStatistics:
    """Mini-batch SGD that samples real examples, many independent chains at once.

    Each step every chain draws ``B`` example indices (with or without replacement within the
    batch) and steps along the mean of their joint gradients. The noise is whatever the data make
    it: state-dependent, discrete, not Gaussian. Moments are averaged over chains and over the
    steps after ``burn_in``, as in :func:`camegrad_mini.sde.simulate_sgd`.

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise on a finite data set).
    """
    eta = float(eta)
    if not np.isfinite(eta) or eta <= 0:
        raise ValueError(f"eta must be a positive finite number, got {eta}")
    n, d = problem.X.shape
    b = _batch(batch_size, n, replacement)
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
    if int(burn_in) != burn_in or not 0 <= burn_in < n_steps:
        raise ValueError(f"burn_in must be an integer in [0, n_steps), got {burn_in}")
    theta = np.array(theta0, dtype=float, copy=True)
    if theta.ndim != 2 or theta.shape[1] != d:
        raise ValueError(f"theta0 must have shape (n_chains, {d}), got {theta.shape}")
    c = theta.shape[0]
    wsum = float(np.sum(problem.weights))
    ytil = problem.Y @ np.asarray(problem.weights)
    s1, s2, n_rec = np.zeros(d), np.zeros((d, d)), 0
    for k in range(int(n_steps)):
        if replacement:
            idx = rng.integers(n, size=(c, b))
        else:
            idx = np.argpartition(rng.random((c, n)), b - 1, axis=1)[:, :b]
        Xb = problem.X[idx]                                  # (c, B, d)
        res = wsum * np.einsum("cbd,cd->cb", Xb, theta) - ytil[idx]
        theta = theta - eta * np.einsum("cbd,cb->cd", Xb, res) / b
        if k >= burn_in:
            s1 += theta.sum(0)
            s2 += theta.T @ theta
            n_rec += 1
    tot = n_rec * c
    mean = s1 / tot
    cov = s2 / tot - np.outer(mean, mean)
    return ChainStatistics(mean=mean, cov=0.5 * (cov + cov.T), final=theta, n_records=n_rec)


def stationary_cov_minibatch_sgd(problem: LinearRegressionTasks, eta: float, batch_size: int) -> dict[str, Array]:
    """Exact stationary covariance of mini-batch SGD (with replacement) on a least-squares problem.

    Around the minimizer ``theta*`` example ``n``'s joint gradient is ``A_n delta + c_n`` with
    ``delta = theta - theta*``, ``A_n = (sum_i omega_i) x_n x_n^T`` and ``sum_n c_n = 0``. A step is
    ``delta' = (I - eta A_hat) delta - eta c_hat`` with batch means ``A_hat``, ``c_hat``; ``delta`` is
    independent of the new batch and has mean zero at stationarity, so the second moment solves the
    linear equation ``S = E[(I - eta A_hat) S (I - eta A_hat)^T] + eta^2 Sigma* / B`` with
    ``E[A_hat S A_hat] = H S H + (E_n[A_n S A_n] - H S H) / B``. Returns ``S`` (``exact``), the
    fixed-noise Gaussian prediction ``(I - eta H) S (I - eta H) + eta^2 Sigma*/B`` (``gaussian``) and
    ``Sigma*``, the per-example covariance at ``theta*``.

    Explained in: Chapter 2, §2.7 (where Sigma comes from: mini-batch noise on a finite data set).
    """
    from .sde import stationary_cov_sgd

    eta = float(eta)
    n, d = problem.X.shape
    b = _batch(batch_size, n, True)
    H = problem.hessian()
    star = problem.minimizer()
    Sigma = per_example_statistics(problem.per_example_grads(star))["Sigma"]
    wsum = float(np.sum(problem.weights))
    An = wsum * problem.X[:, :, None] * problem.X[:, None, :]          # (N, d, d)
    EAA = np.einsum("nij,nkl->ikjl", An, An).reshape(d * d, d * d) / n  # E_n A_n (x) A_n
    Id = np.eye(d)
    P = Id - eta * H
    M = np.kron(P, P) + eta**2 / b * (EAA - np.kron(H, H))
    rho = np.abs(np.linalg.eigvals(M)).max()
    if rho >= 1.0:
        raise ValueError(f"the second-moment recursion has spectral radius {rho:.4g} >= 1: no stationary covariance")
    q = (eta**2 * Sigma / b).reshape(-1)
    S = np.linalg.solve(np.eye(d * d) - M, q).reshape(d, d)
    return {"exact": 0.5 * (S + S.T), "gaussian": stationary_cov_sgd(H, eta, Sigma, b), "Sigma_star": Sigma,
            "theta_star": star}
