"""The "Double Dilemma" of linear scalarization, as numbers: noise model, simulator and statistics.

Zhang et al. (ICML 2026) name two failures of the fixed-weight joint gradient
``g_joint = w_0 g_0 + w_1 g_1`` of linear scalarization (LS) under gradient conflict, "drift term
deviation" and "diffusion term decay". The paper gives the names, not formal definitions; the
definitions used here are the book's reading:

* **drift term deviation**: ``-g_joint`` need not be a descent direction for every task, i.e.
  ``<g_joint, g_i> < 0`` for some ``i``;
* **diffusion term decay**: the cross term ``2 w_0 w_1 <g_0, g_1>`` of ``|g_joint|^2`` is negative,
  which the paper links (heuristically) to a weaker diffusion term of the SGD-as-SDE picture and a
  poorer ability to escape sharp minima.

This module holds everything chapter 3 computes, so that it can be unit tested:

* closed forms in the two-task "polar" parametrization ``g_0 = n_0 e``, ``g_1 = n_1 (cos phi, sin phi)``
  (conflict angle ``phi``, magnitude ratio ``gamma = n_1 / n_0``, weighted magnitude ratio
  ``gamma_w = w_1 n_1 / (w_0 n_0)``, weight ``w`` with ``w_0 = 1 - w``, ``w_1 = w``): the energy
  ratio and the deviation region (derived symbolically in :mod:`camegrad_mini.dilemma_derivations`);
* the diffusion as a function of the conflict angle (:func:`angle_diffusion`): the weighted noise
  covariance ``Sigma_w`` of each noise kind next to the drift's energy, with its closed-form trace
  (:func:`weighted_noise_trace`) and the axes of its ellipse (:func:`ellipse_axes`);
* :class:`TaskNoise`, a model of two correlated task-noise terms ``xi_0, xi_1`` whose weighted sum
  ``w_0 xi_0 + w_1 xi_1`` is the noise that LS actually injects (its covariance is the diffusion
  matrix of the SDE, up to the learning rate);
* :func:`simulate_ls`, noisy LS gradient descent on a 2-D two-task problem, vectorized over seeds;
* statistics along runs: energy ratio, fraction of steps with drift deviation, escape counts, and
  the energy factor kappa's effect on escapes split into temperature and SDE time
  (:func:`kappa_escape_decomposition`).

Shapes follow :mod:`camegrad_mini.problems`: points ``(..., 2)``, task gradients ``(..., T, 2)``.
Only two tasks are modelled (the cross-task correlation is one number ``corr``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .problems import Problem, QuadraticPair, _matrix2, rotation

__all__ = [
    "NOISE_KINDS",
    "two_task_weights",
    "polar_gradients",
    "conflict_pair",
    "joint_gradient",
    "joint_energy",
    "energy_ratio",
    "task_alignment",
    "drift_deviation",
    "deviation_fraction",
    "gradient_cosine",
    "energy_ratio_closed_form",
    "deviation_weight_thresholds",
    "deviation_angle_threshold",
    "deviation_region",
    "deviation_area_fraction",
    "weighted_noise_variance",
    "TaskNoise",
    "LSRun",
    "simulate_ls",
    "stationary_cov",
    "curvature_pair",
    "weighted_noise_trace",
    "ellipse_axes",
    "AngleDiffusion",
    "angle_diffusion",
    "descend",
    "escaped",
    "escape_counts",
    "kappa_escape_decomposition",
]

Array = np.ndarray
NOISE_KINDS = ("isotropic", "hessian", "gradient")


# ----------------------------------------------------------------------------------------------
# weights and the two-task polar parametrization
# ----------------------------------------------------------------------------------------------
def two_task_weights(w: float) -> Array:
    """The LS weights ``(w_0, w_1) = (1 - w, w)`` used throughout the chapter; ``w`` in [0, 1].

    Explained in: Chapter 3, §3.4 (the conflict angle on a slider), §3.5 and §3.6.
    """
    w = float(w)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must lie in [0, 1] (it is the weight of task 1), got {w}")
    return np.array([1.0 - w, w])


def _weights(weights, n_tasks: int) -> Array:
    w = np.asarray(weights, dtype=float)
    if w.shape != (n_tasks,) or not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"weights must be {n_tasks} finite non-negative numbers, got {w.tolist()}")
    return w


def polar_gradients(phi, gamma, n0: float = 1.0) -> Array:
    """Task gradients ``g_0 = n0 (1, 0)`` and ``g_1 = gamma n0 (cos phi, sin phi)``, shape ``(..., 2, 2)``.

    Every pair of 2-D (or n-D, restricted to their span) gradients is such a pair up to a rotation,
    so the conflict angle ``phi`` and the magnitude ratio ``gamma`` are the only geometry that matters.
    """
    phi, gamma = np.broadcast_arrays(np.asarray(phi, float), np.asarray(gamma, float))
    if (gamma < 0).any():
        raise ValueError("gamma (the magnitude ratio |g_1| / |g_0|) must be non-negative")
    g0 = np.stack([np.full_like(phi, n0), np.zeros_like(phi)], -1)
    g1 = n0 * gamma[..., None] * np.stack([np.cos(phi), np.sin(phi)], -1)
    return np.stack([g0, g1], axis=-2)


def conflict_pair(phi0: float, distance: float = 1.0, condition: float = 1.0) -> QuadraticPair:
    """Two quadratic tasks whose gradients at the origin meet at the angle ``phi0``.

    The minimizers sit at distance ``distance`` from the origin, at ``-phi0/2`` and
    ``+phi0/2`` from the upward vertical, so noisy LS started at the origin sees the conflict
    angle ``phi0`` at its first step (with ``condition = 1``; then ``g_i(0) = -c_i``). With
    ``condition > 1`` the Hessians are ``diag(condition, 1)`` rotated by -30 degrees (task 0) and
    +30 degrees (task 1): the Pareto set bends and the angle at the start differs from ``phi0``.
    Along any run the angle changes: at every point of the Pareto set the two gradients are
    exactly opposite (angle ``pi``), whatever ``phi0`` is.

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """
    if not 0.0 <= phi0 <= np.pi:
        raise ValueError(f"phi0 must lie in [0, pi], got {phi0}")
    if not distance > 0:
        raise ValueError(f"distance must be positive, got {distance}")
    if not condition >= 1:
        raise ValueError(f"condition must be >= 1, got {condition}")
    h = phi0 / 2.0
    c0 = (float(-distance * np.sin(h)), float(distance * np.cos(h)))
    c1 = (float(distance * np.sin(h)), float(distance * np.cos(h)))
    D = np.diag([float(condition), 1.0])
    A0 = rotation(-np.pi / 6) @ D @ rotation(-np.pi / 6).T
    A1 = rotation(np.pi / 6) @ D @ rotation(np.pi / 6).T
    A0, A1 = np.round(A0, 12), np.round(A1, 12)  # exact symmetry
    return QuadraticPair(c0=c0, c1=c1, A0=_matrix2(A0), A1=_matrix2(A1), name=f"quadratic pair, phi0={phi0:.2f}")


# ----------------------------------------------------------------------------------------------
# statistics of a stack of task gradients (..., T, 2)
# ----------------------------------------------------------------------------------------------
def joint_gradient(grads: Array, weights) -> Array:
    """``g_joint = sum_i w_i g_i``, the LS update direction (before the learning rate)."""
    grads = np.asarray(grads, dtype=float)
    w = _weights(weights, grads.shape[-2])
    return np.einsum("...ij,i->...j", grads, w)


def joint_energy(grads: Array, weights) -> Array:
    """The gradient "energy" ``|g_joint|^2`` (the paper's quantity for diffusion decay).

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    g = joint_gradient(grads, weights)
    return (g**2).sum(-1)


def energy_ratio(grads: Array, weights) -> Array:
    """``|g_joint|^2 / sum_i w_i^2 |g_i|^2``: the joint energy over its no-cross-term value.

    It is ``1`` for orthogonal gradients, above ``1`` when they agree and below ``1`` under
    conflict; ``0`` means the weighted gradients cancel exactly (an LS stationary point that is
    not a minimizer of either task). Where both weighted gradients vanish the ratio is undefined
    and returned as ``nan``.
    """
    grads = np.asarray(grads, dtype=float)
    w = _weights(weights, grads.shape[-2])
    denom = np.einsum("i,...i->...", w**2, (grads**2).sum(-1))
    num = joint_energy(grads, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)


def task_alignment(grads: Array, weights) -> Array:
    """``<g_joint, g_i>`` for every task ``i``, shape ``(..., T)``.

    A negative entry means a small LS step *increases* task ``i``'s loss to first order: the
    paper's drift term deviation.
    """
    g = joint_gradient(grads, weights)
    return np.einsum("...ij,...j->...i", np.asarray(grads, dtype=float), g)


def drift_deviation(grads: Array, weights) -> Array | np.bool_:
    """Boolean ``(...)``: does some task have ``<g_joint, g_i> < 0``?

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """
    return (task_alignment(grads, weights) < 0).any(-1)


def deviation_fraction(grads: Array, weights) -> float:
    """Fraction of the gradient stacks (e.g. steps x seeds) that show drift deviation."""
    return float(np.mean(drift_deviation(grads, weights)))


def gradient_cosine(grads: Array) -> Array:
    """Cosine of the conflict angle between the first two task gradients; ``nan`` if one is 0.

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    grads = np.asarray(grads, dtype=float)
    g0, g1 = grads[..., 0, :], grads[..., 1, :]
    n = np.linalg.norm(g0, axis=-1) * np.linalg.norm(g1, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (g0 * g1).sum(-1) / np.where(n > 0, n, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------
# closed forms (derived in dilemma_derivations; the tests check both against each other)
# ----------------------------------------------------------------------------------------------
def energy_ratio_closed_form(phi, gamma_w) -> Array:
    """Energy ratio ``1 + 2 gamma_w cos(phi) / (1 + gamma_w^2)`` with ``gamma_w = w_1 |g_1| / (w_0 |g_0|)``.

    It depends on the weights and magnitudes only through the *weighted* magnitude ratio ``gamma_w``
    and is smallest, ``1 + cos(phi)``, for balanced weighted gradients (``gamma_w = 1``).

    Explained in: Chapter 3, §3.2 (the energy of the joint gradient).
    """
    phi, gamma_w = np.asarray(phi, float), np.asarray(gamma_w, float)
    if (gamma_w < 0).any():
        raise ValueError("gamma_w (the weighted magnitude ratio) must be non-negative")
    return 1.0 + 2.0 * gamma_w * np.cos(phi) / (1.0 + gamma_w**2)


def deviation_weight_thresholds(phi, gamma) -> tuple[Array, Array]:
    """Weights ``(w_lo, w_hi)`` bounding the deviation region at angle ``phi``, ratio ``gamma``.

    With ``w_0 = 1 - w`` and ``w_1 = w``:
    task 1 is hurt (``<g_joint, g_1> < 0``) iff ``w < w_lo = -cos(phi) / (gamma - cos(phi))``;
    task 0 is hurt iff ``w > w_hi = 1 / (1 - gamma cos(phi))``.
    Both need conflict, ``cos(phi) < 0``; without it ``(w_lo, w_hi) = (0, 1)`` and no weight in
    [0, 1] deviates. At ``phi = pi`` the thresholds meet at ``w = 1 / (1 + gamma)``: only the weight
    that balances the two weighted gradients avoids deviation.
    """
    phi, gamma = np.broadcast_arrays(np.asarray(phi, float), np.asarray(gamma, float))
    if (gamma <= 0).any():
        raise ValueError("gamma (the magnitude ratio |g_1| / |g_0|) must be positive")
    c = np.cos(phi)
    conflict = c < 0
    cc = np.where(conflict, c, -1.0)  # placeholder keeps the formulas finite where unused
    w_lo = np.where(conflict, -cc / (gamma - cc), 0.0)
    w_hi = np.where(conflict, 1.0 / (1.0 - gamma * cc), 1.0)
    return w_lo, w_hi


def deviation_angle_threshold(w, gamma) -> Array:
    """Smallest conflict angle at which LS with weight ``w`` deviates: ``arccos(-min(gamma_w, 1/gamma_w))``.

    ``gamma_w = w gamma / (1 - w)`` is the weighted magnitude ratio; the angle is ``pi`` (deviation only at
    exact opposition) for balanced weighted gradients and approaches ``pi/2`` as one weighted
    gradient dominates. ``w`` in ``{0, 1}`` gives ``pi/2``.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    w, gamma = np.broadcast_arrays(np.asarray(w, float), np.asarray(gamma, float))
    if ((w < 0) | (w > 1)).any():
        raise ValueError("w must lie in [0, 1]")
    if (gamma <= 0).any():
        raise ValueError("gamma must be positive")
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma_w = np.where(w < 1, w * gamma / np.where(w < 1, 1.0 - w, 1.0), np.inf)
        m = np.where((gamma_w > 0) & np.isfinite(gamma_w),
                     np.minimum(gamma_w, 1.0 / np.where(gamma_w > 0, gamma_w, 1.0)), 0.0)
    return np.arccos(-m)


def deviation_region(phi, w, gamma) -> Array:
    """Closed-form indicator of drift deviation at (conflict angle, weight, magnitude ratio).

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    w = np.asarray(w, float)
    w_lo, w_hi = deviation_weight_thresholds(phi, gamma)
    return (w < w_lo) | (w > w_hi)


def deviation_area_fraction(gamma: float, n: int = 721) -> float:
    """Fraction of the (phi in [0, pi]) x (w in [0, 1]) square in the deviation region.

    Computed from the closed-form thresholds (trapezoid rule over ``n`` angles): the deviating
    weights at angle ``phi`` form ``[0, w_lo) U (w_hi, 1]`` of length ``w_lo + 1 - w_hi``.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    phi = np.linspace(0.0, np.pi, n)
    w_lo, w_hi = deviation_weight_thresholds(phi, gamma)
    length = w_lo + 1.0 - w_hi
    return float(np.sum((length[1:] + length[:-1]) / 2) * (phi[1] - phi[0]) / np.pi)


def weighted_noise_variance(weights, sigmas, corr) -> Array:
    """Per-coordinate variance of ``w_0 xi_0 + w_1 xi_1`` for isotropic task noises.

    ``Var = w_0^2 s_0^2 + w_1^2 s_1^2 + 2 c w_0 w_1 s_0 s_1``: the cross-task correlation ``c``
    (not the gradients' conflict angle) controls the cross term. At ``c = -1`` it is
    ``(w_0 s_0 - w_1 s_1)^2``, which vanishes when the weighted noise scales balance.

    Explained in: Chapter 3, §3.4 (the diffusion term), §3.5 and §3.6.
    """
    w = np.asarray(weights, float)
    s = np.asarray(sigmas, float)
    corr = np.asarray(corr, float)
    if ((corr < -1) | (corr > 1)).any():
        raise ValueError("corr must lie in [-1, 1]")
    return (w[..., 0] ** 2 * s[..., 0] ** 2 + w[..., 1] ** 2 * s[..., 1] ** 2
            + 2 * corr * w[..., 0] * w[..., 1] * s[..., 0] * s[..., 1])


# ----------------------------------------------------------------------------------------------
# the two-task noise model
# ----------------------------------------------------------------------------------------------
def _psd_sqrt(A: Array) -> Array:
    vals, vecs = np.linalg.eigh(A)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))[..., None, :]) @ np.swapaxes(vecs, -1, -2)


@dataclass(frozen=True)
class TaskNoise:
    """Two correlated task-noise terms ``xi_i = L_i(x) z_i`` with ``corr(z_0, z_1) = c`` per coordinate.

    ``z_0, z_1`` are standard normal 2-vectors whose matching coordinates have correlation
    ``corr`` (so ``Cov(xi_0, xi_1) = c L_0 L_1^T``). The factor ``L_i`` depends on ``kind``:

    * ``"isotropic"``: ``L_i = s_i I`` (additive noise, independent of where you are);
    * ``"hessian"``: ``L_i = s_i A_i^{1/2}`` with the task's constant Hessian ``A_i``: noise shaped
      like the curvature, as SGD noise is near a minimum (Zhu et al., 2019); needs a problem with
      a ``hessians`` attribute (e.g. :class:`~camegrad_mini.problems.QuadraticPair`);
    * ``"gradient"``: ``xi_i = s_i zeta_i g_i(x)``, a random rescaling of the task's own gradient
      (rank one). With ``corr = 1`` and equal scales the weighted noise is ``s zeta g_joint``, so
      its covariance is ``s^2 g_joint g_joint^T``: the one model in which the diffusion equals
      the paper's gradient energy ``|g_joint|^2``.

    ``sigma`` is one scale for both tasks or a pair ``(s_0, s_1)``.

    Explained in: Chapter 3, §3.5 and §3.6; Chapter 5, §5.2 to §5.7 (the noise of every experiment).
    """

    sigma: float | tuple[float, float] = 0.1
    corr: float = 0.0
    kind: str = "isotropic"

    def __post_init__(self):
        s = np.broadcast_to(np.asarray(self.sigma, dtype=float), (2,))
        if not np.all(np.isfinite(s)) or (s < 0).any():
            raise ValueError(f"sigma must be one or two finite non-negative numbers, got {self.sigma!r}")
        if not -1.0 <= float(self.corr) <= 1.0:
            raise ValueError(f"corr must lie in [-1, 1], got {self.corr}")
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"kind must be one of {NOISE_KINDS}, got {self.kind!r}")

    @property
    def sigmas(self) -> Array:
        return np.broadcast_to(np.asarray(self.sigma, dtype=float), (2,)).copy()

    def factors_from(self, grads: Array, hessians=None) -> Array:
        """The factors ``L_i`` given the task gradients ``grads`` ``(..., 2, 2)`` (used only by the
        "gradient" kind) and, for the "hessian" kind, the two task Hessians ``(2, 2, 2)``.
        Shape ``(..., 2, 2, 2)`` (points, task, row, column)."""
        grads = np.asarray(grads, dtype=float)
        s = self.sigmas
        batch = grads.shape[:-2]
        if self.kind == "isotropic":
            L = s[:, None, None] * np.eye(2)
            return np.broadcast_to(L, batch + (2, 2, 2)).copy()
        if self.kind == "hessian":
            if hessians is None:
                raise ValueError("kind='hessian' needs the two task Hessians")
            L = s[:, None, None] * _psd_sqrt(np.asarray(hessians, dtype=float))
            return np.broadcast_to(L, batch + (2, 2, 2)).copy()
        L = np.zeros(batch + (2, 2, 2))
        L[..., :, :, 0] = s[:, None] * grads  # xi_i = s_i * z_i[0] * g_i
        return L

    def factors(self, problem: Problem, x: Array) -> Array:
        """The factors ``L_i(x)``, shape ``(..., 2, 2, 2)`` (points, task, row, column)."""
        x = np.asarray(x, dtype=float)
        if self.kind == "hessian" and not hasattr(problem, "hessians"):
            raise ValueError(f"kind='hessian' needs a problem with constant task Hessians; "
                             f"{type(problem).__name__} has none")
        grads = problem.grads(x) if self.kind == "gradient" else np.zeros(x.shape[:-1] + (2, 2))
        return self.factors_from(grads, getattr(problem, "hessians", None))

    def weighted_cov_from(self, grads: Array, weights, hessians=None) -> Array:
        """Covariance ``Sigma_w`` of ``w_0 xi_0 + w_1 xi_1`` for given task gradients, ``(..., 2, 2)``.

        ``w_0^2 L_0 L_0^T + w_1^2 L_1 L_1^T + c w_0 w_1 (L_0 L_1^T + L_1 L_0^T)``; see
        :meth:`factors_from` for what ``grads`` and ``hessians`` are needed for.
        """
        w = _weights(weights, 2)
        L = self.factors_from(grads, hessians)
        L0, L1 = L[..., 0, :, :], L[..., 1, :, :]
        T = np.swapaxes
        cross = L0 @ T(L1, -1, -2)
        return (w[0] ** 2 * L0 @ T(L0, -1, -2) + w[1] ** 2 * L1 @ T(L1, -1, -2)
                + self.corr * w[0] * w[1] * (cross + T(cross, -1, -2)))

    def weighted_cov(self, problem: Problem, x: Array, weights) -> Array:
        """Covariance of the weighted noise ``w_0 xi_0 + w_1 xi_1`` at ``x``, shape ``(..., 2, 2)``.

        ``w_0^2 L_0 L_0^T + w_1^2 L_1 L_1^T + c w_0 w_1 (L_0 L_1^T + L_1 L_0^T)``. Multiplied by
        the learning rate it is the diffusion matrix ``eta Sigma`` of the SDE approximation.
        """
        x = np.asarray(x, dtype=float)
        if self.kind == "hessian" and not hasattr(problem, "hessians"):
            raise ValueError(f"kind='hessian' needs a problem with constant task Hessians; "
                             f"{type(problem).__name__} has none")
        grads = problem.grads(x) if self.kind == "gradient" else np.zeros(x.shape[:-1] + (2, 2))
        return self.weighted_cov_from(grads, weights, getattr(problem, "hessians", None))

    def sample(self, problem: Problem, x: Array, rng: np.random.Generator) -> Array:
        """One draw of ``(xi_0, xi_1)`` at every point of ``x``, shape ``(..., 2, 2)``."""
        x = np.asarray(x, dtype=float)
        z = rng.standard_normal(x.shape[:-1] + (2, 2))
        c = float(self.corr)
        z1 = c * z[..., 0, :] + np.sqrt(max(0.0, 1.0 - c * c)) * z[..., 1, :]
        z = np.stack([z[..., 0, :], z1], axis=-2)
        return np.einsum("...tij,...tj->...ti", self.factors(problem, x), z)


# ----------------------------------------------------------------------------------------------
# the diffusion as a function of the conflict angle
# ----------------------------------------------------------------------------------------------
def curvature_pair(condition: float = 5.0) -> Array:
    """Two task Hessians ``(2, 2, 2)`` for curvature-shaped ("hessian") noise in the angle picture.

    Those of :func:`conflict_pair` with the same ``condition`` (``diag(condition, 1)`` rotated by
    -30 and +30 degrees), divided by their mean eigenvalue ``(condition + 1) / 2``: each then has
    trace 2, like the identity, so at ``c = 0`` the "hessian" kind injects as much total noise as
    the "isotropic" one and only the shape differs. They do not depend on the conflict angle.
    """
    if not condition >= 1:
        raise ValueError(f"condition must be >= 1, got {condition}")
    H = np.asarray(conflict_pair(np.pi / 2, condition=condition).hessians, dtype=float)
    return H * 2.0 / (float(condition) + 1.0)


def weighted_noise_trace(phi, gamma, weights, sigmas, corr, kind: str, hessians=None) -> Array:
    """Closed-form ``tr Sigma_w`` for the polar gradients ``g_0 = (1, 0)``, ``g_1 = gamma (cos phi, sin phi)``.

    With per-task scales ``s_i`` and cross-task correlation ``c``:

    * "isotropic": ``2 (w_0^2 s_0^2 + w_1^2 s_1^2 + 2 c w_0 w_1 s_0 s_1)`` (two coordinates);
    * "hessian": ``w_0^2 s_0^2 tr A_0 + w_1^2 s_1^2 tr A_1 + 2 c w_0 w_1 s_0 s_1 tr(A_0^{1/2} A_1^{1/2})``;
    * "gradient": ``w_0^2 s_0^2 + w_1^2 s_1^2 gamma^2 + 2 c w_0 w_1 s_0 s_1 gamma cos(phi)``.

    Only the last depends on the angle, through ``c cos(phi)``; with ``s_0 = s_1 = s`` it is
    ``s^2 [(1 - c)(w_0^2 + w_1^2 gamma^2) + c |g_joint|^2]``, increasing in the energy iff ``c > 0``.
    """
    w = _weights(weights, 2)
    s = np.broadcast_to(np.asarray(sigmas, dtype=float), (2,))
    corr = float(corr)
    if not -1.0 <= corr <= 1.0:
        raise ValueError(f"corr must lie in [-1, 1], got {corr}")
    phi, gamma = np.broadcast_arrays(np.asarray(phi, float), np.asarray(gamma, float))
    a0, a1, x = (w[0] * s[0]) ** 2, (w[1] * s[1]) ** 2, 2 * corr * w[0] * w[1] * s[0] * s[1]
    if kind == "isotropic":
        return np.full(phi.shape, 2.0 * (a0 + a1 + x))
    if kind == "hessian":
        if hessians is None:
            raise ValueError("kind='hessian' needs the two task Hessians")
        H = np.asarray(hessians, dtype=float)
        R = _psd_sqrt(H)
        return np.full(phi.shape, a0 * np.trace(H[0]) + a1 * np.trace(H[1]) + x * np.trace(R[0] @ R[1]))
    if kind == "gradient":
        return a0 + a1 * gamma**2 + x * gamma * np.cos(phi)
    raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")


def ellipse_axes(cov, n_sd: float = 2.0) -> tuple[Array, Array, Array]:
    """Full axis lengths and orientation of the ``n_sd`` standard-deviation ellipse of ``cov`` ``(..., 2, 2)``.

    Returns ``(width, height, angle_deg)``: ``width = 2 n_sd sqrt(lambda_max)`` along the major
    axis at ``angle_deg`` from the first coordinate axis, ``height = 2 n_sd sqrt(lambda_min)``. So
    ``(width / 2)^2 + (height / 2)^2 = n_sd^2 tr(cov)``: the ellipse's size is the trace.
    """
    vals, vecs = np.linalg.eigh(np.asarray(cov, dtype=float))
    vals = np.clip(vals, 0.0, None)
    angle = np.degrees(np.arctan2(vecs[..., 1, 1], vecs[..., 0, 1]))
    return 2 * n_sd * np.sqrt(vals[..., 1]), 2 * n_sd * np.sqrt(vals[..., 0]), angle


@dataclass(frozen=True)
class AngleDiffusion:
    """The drift and the diffusion at conflict angles ``phi`` (see :func:`angle_diffusion`).

    ``grads`` ``(n, 2, 2)``; ``g_joint`` ``(n, 2)``; ``energy`` ``|g_joint|^2`` ``(n,)``; ``cov``
    and ``trace`` map each noise kind to ``Sigma_w`` ``(n, 2, 2)`` and ``tr Sigma_w`` ``(n,)``.
    """

    phi: Array
    gamma: float
    weights: Array
    noise: "TaskNoise"
    grads: Array
    g_joint: Array
    energy: Array
    cov: dict
    trace: dict

    def falls_with_energy(self, kind: str, tol: float = 1e-12) -> bool:
        """Across the angles, does ``tr Sigma_w`` of ``kind`` move in the same direction as the energy
        at every step and change by more than ``tol`` overall? ("energy down => diffusion down")"""
        dE, dT = np.diff(self.energy), np.diff(self.trace[kind])
        return bool(np.all(dE * dT >= -tol) and np.ptp(self.trace[kind]) > tol)

    def trend(self, kind: str, tol: float = 1e-12) -> str:
        """How ``tr Sigma_w`` of ``kind`` moves across the angles, relative to the energy: "falls with
        the energy", "ignores the angle" (constant), "rises as the energy falls" or "mixed"."""
        if np.ptp(self.trace[kind]) <= tol:
            return "ignores the angle"
        if self.falls_with_energy(kind, tol):
            return "falls with the energy"
        dE, dT = np.diff(self.energy), np.diff(self.trace[kind])
        return "rises as the energy falls" if np.all(dE * dT <= tol) else "mixed"


def angle_diffusion(phi, gamma: float = 1.0, weights=(0.5, 0.5), sigma=1.0, corr: float = 0.0,
                    kinds=NOISE_KINDS, condition: float = 5.0) -> AngleDiffusion:
    """Joint gradient, its energy and the weighted-noise covariance ``Sigma_w`` of each noise kind,
    for ``g_0 = (1, 0)`` and ``g_1 = gamma (cos phi, sin phi)`` at every conflict angle in ``phi``.

    The noises are :class:`TaskNoise` ``(sigma, corr, kind)``; the "hessian" kind uses
    :func:`curvature_pair` ``(condition)``. This is the picture behind "energy down, diffusion
    down": the energy falls as ``phi`` opens (for any weights), the diffusion of each kind may not.

    Explained in: Chapter 3, §3.4 (the conflict angle on a slider: energy and diffusion side by
    side).
    """
    phi = np.atleast_1d(np.asarray(phi, dtype=float))
    w = _weights(weights, 2)
    G = polar_gradients(phi, gamma)
    H = curvature_pair(condition)
    cov, trace = {}, {}
    noise = TaskNoise(sigma, corr)
    for kind in kinds:
        nz = TaskNoise(sigma, corr, kind)
        cov[kind] = nz.weighted_cov_from(G, w, H)
        trace[kind] = np.trace(cov[kind], axis1=-2, axis2=-1)
    return AngleDiffusion(phi=phi, gamma=float(gamma), weights=w, noise=noise, grads=G,
                          g_joint=joint_gradient(G, w), energy=joint_energy(G, w), cov=cov, trace=trace)


# ----------------------------------------------------------------------------------------------
# noisy LS, vectorized over seeds
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LSRun:
    """The record of :func:`simulate_ls`.

    ``xs``: iterates ``(S, K+1, 2)``; ``grads``: exact task gradients at ``xs[:, :-1]``,
    ``(S, K, 2, 2)``; ``noisy_grads``: what the optimizer saw, ``grads`` plus task noise.

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """

    xs: Array
    grads: Array
    noisy_grads: Array
    weights: Array
    lr: float
    step_scale: float

    @property
    def final(self) -> Array:
        return self.xs[:, -1]

    def energy_ratio(self, observed: bool = False) -> Array:
        """Energy ratio per seed and step, ``(S, K)``, of the exact or the observed gradients."""
        return energy_ratio(self.noisy_grads if observed else self.grads, self.weights)

    def joint_energy(self, observed: bool = False) -> Array:
        return joint_energy(self.noisy_grads if observed else self.grads, self.weights)

    def deviation_fraction(self, observed: bool = True) -> float:
        """Fraction of (seed, step) pairs with ``<g_joint, g_i> < 0`` for some task ``i``."""
        return deviation_fraction(self.noisy_grads if observed else self.grads, self.weights)

    def conflict_fraction(self, observed: bool = True) -> float:
        """Fraction of (seed, step) pairs with ``<g_0, g_1> < 0`` (chapter 1's statistic)."""
        return float(np.mean(gradient_cosine(self.noisy_grads if observed else self.grads) < 0))


def simulate_ls(problem: Problem, weights, noise: TaskNoise, *, lr: float, steps: int, x0,
                n_seeds: int = 1, seed: int = 0, step_scale: float = 1.0,
                record_grads: bool = True) -> LSRun:
    """Noisy linear scalarization: ``x <- x - step_scale * lr * sum_i w_i (g_i(x) + xi_i(x))``.

    All ``n_seeds`` trajectories advance together (one NumPy call per step), from the same
    ``x0``, with noise drawn from ``np.random.default_rng(seed)``. ``step_scale`` multiplies the
    whole update, like CAME-Grad's magnitude factor kappa under plain SGD: it raises the drift
    and the injected noise together ("more energy"). With ``record_grads=False`` only the
    iterates are kept (``grads`` and ``noisy_grads`` are then empty), which saves memory and time
    when only end points matter, as in escape counts. Runs that leave the finite range are kept
    as they are (``inf``/``nan``); choose ``lr`` below the stability limit ``2 / curvature``.

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """
    w = _weights(weights, problem.n_tasks)
    if problem.n_tasks != 2:
        raise ValueError(f"simulate_ls models two tasks, the problem has {problem.n_tasks}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not step_scale > 0:
        raise ValueError(f"step_scale must be positive, got {step_scale}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if int(n_seeds) != n_seeds or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds}")
    x0 = np.asarray(x0, dtype=float)
    if x0.shape != (2,):
        raise ValueError(f"x0 must be one 2-D point, got shape {x0.shape}")
    rng = np.random.default_rng(seed)
    steps, n_seeds = int(steps), int(n_seeds)
    xs = np.empty((n_seeds, steps + 1, 2))
    n_rec = steps if record_grads else 0
    grads = np.empty((n_seeds, n_rec, 2, 2))
    noisy = np.empty((n_seeds, n_rec, 2, 2))
    x = np.broadcast_to(x0, (n_seeds, 2)).copy()
    xs[:, 0] = x
    eta = lr * step_scale
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps):
            g = problem.grads(x)
            gn = g + noise.sample(problem, x, rng)
            if record_grads:
                grads[:, k], noisy[:, k] = g, gn
            x = x - eta * np.einsum("sij,i->sj", gn, w)
            xs[:, k + 1] = x
    return LSRun(xs=xs, grads=grads, noisy_grads=noisy, weights=w, lr=float(lr), step_scale=float(step_scale))


def stationary_cov(problem: QuadraticPair, weights, noise: TaskNoise, lr: float, step_scale: float = 1.0) -> Array:
    """Exact stationary covariance of noisy LS on two quadratics, from the discrete Lyapunov equation.

    With ``H = w_0 A_0 + w_1 A_1`` and the weighted-noise covariance ``Sigma_w`` at the LS
    minimizer, the error ``e_{k+1} = (I - eta H) e_k - eta * noise`` has the stationary covariance
    ``X = (I - eta H) X (I - eta H)^T + eta^2 Sigma_w`` (``eta = lr * step_scale``). It is exact for
    the state-independent kinds ("isotropic", "hessian"); for "gradient" noise, whose covariance
    vanishes or changes near the minimizer, it only linearizes around the minimizer's value.
    Needs ``eta`` below the stability limit ``2 / lambda_max(H)``.
    """
    from scipy.linalg import solve_discrete_lyapunov

    w = _weights(weights, 2)
    H = np.einsum("t,tij->ij", w, np.asarray(problem.hessians, dtype=float))
    eta = float(lr) * float(step_scale)
    if not 0 < eta < 2.0 / np.linalg.eigvalsh(H).max():
        raise ValueError(f"lr * step_scale = {eta} must lie in (0, 2 / lambda_max(H)) for a stationary law")
    A = np.eye(2) - eta * H
    Q = eta**2 * noise.weighted_cov(problem, problem.ls_minimizer(w), w)
    return solve_discrete_lyapunov(A, Q)


def descend(problem: Problem, weights, x0, *, lr: float = 0.05, steps: int = 2000) -> Array:
    """Noise-free LS gradient descent from ``x0`` (one or many points): finds the local LS minimum
    whose basin holds ``x0`` (used to locate the sharp and the flat minimum).

    Explained in: Chapter 5, §5.4 (escaping the sharp well).
    """
    w = _weights(weights, problem.n_tasks)
    x = np.array(x0, dtype=float)
    for _ in range(int(steps)):
        x = x - lr * np.einsum("...ij,i->...j", problem.grads(x), w)
    return x


def escaped(final: Array, sharp_min, flat_min) -> Array:
    """Boolean per run: does the final point lie nearer the flat minimum than the sharp one?

    Explained in: Chapter 5, §5.4 (escaping the sharp well), §5.5 and §5.6.
    """
    final = np.asarray(final, float)
    d_s = np.linalg.norm(final - np.asarray(sharp_min, float), axis=-1)
    d_f = np.linalg.norm(final - np.asarray(flat_min, float), axis=-1)
    return d_f < d_s


def escape_counts(problem: Problem, weights, noises, *, lr: float, steps: int, sharp_min, flat_min,
                  n_seeds: int, seed: int = 0, step_scale: float = 1.0) -> Array:
    """For each noise model in ``noises``: how many of ``n_seeds`` LS runs started at the sharp
    minimum end nearer the flat one after ``steps`` steps (common random numbers: same ``seed``).

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    out = []
    for nz in noises:
        run = simulate_ls(problem, weights, nz, lr=lr, steps=steps, x0=sharp_min, n_seeds=n_seeds,
                          seed=seed, step_scale=step_scale, record_grads=False)
        out.append(int(escaped(run.final, sharp_min, flat_min).sum()))
    return np.array(out)


def kappa_escape_decomposition(problem: Problem, weights, *, sigma: float, corr: float, kappas, lr: float,
                               steps: int, sharp_min, flat_min, n_seeds: int, seed: int = 0) -> dict:
    """Escape counts for energy factors ``kappas``, with kappa's two effects separated.

    Under SGD, ``x <- x - kappa * lr * (g + noise)`` is the SDE ``dx = -g dt + sqrt(kappa lr Sigma) dW``
    run for the time ``t_end = kappa * lr * steps``: a larger kappa raises the temperature
    ``kappa lr Var / 2`` *and* runs the SDE longer at a fixed step count. Four settings per kappa:

    * ``"fixed steps"``: ``steps`` steps, noise ``sigma`` (both effects, as in a training budget);
    * ``"matched time"``: ``round(steps / kappa)`` steps, so ``t_end`` matches kappa = 1's (temperature only);
    * ``"matched temperature"``: noise ``sigma / sqrt(kappa)``, so ``kappa lr Var`` is kappa = 1's
      (SDE time only);
    * ``"matched both"``: both changes; the same SDE over the same time, only the step is larger
      (what is left is discretization).

    Returns ``{setting: {"steps", "sigma", "temperature", "time", "counts"}}``, arrays over kappas;
    all runs start at ``sharp_min`` with the same ``seed`` (common random numbers).

    Explained in: Chapter 3, §3.6 (temperature or time? Taking kappa apart).
    """
    w = _weights(weights, problem.n_tasks)
    kappas = np.asarray(kappas, dtype=float)
    if kappas.ndim != 1 or (kappas <= 0).any():
        raise ValueError("kappas must be a 1-D array of positive numbers")
    settings = {"fixed steps": (False, False), "matched time": (True, False),
                "matched temperature": (False, True), "matched both": (True, True)}
    out = {}
    for name, (match_time, match_temp) in settings.items():
        n_steps = np.array([max(1, int(round(steps / k))) if match_time else int(steps) for k in kappas])
        sig = np.array([sigma / np.sqrt(k) if match_temp else float(sigma) for k in kappas])
        var = np.array([float(weighted_noise_variance(w, [s_, s_], corr)) for s_ in sig])
        counts = np.array([escape_counts(problem, w, [TaskNoise(s_, corr)], lr=lr, steps=int(n), sharp_min=sharp_min,
                                         flat_min=flat_min, n_seeds=n_seeds, seed=seed, step_scale=k)[0]
                           for k, n, s_ in zip(kappas, n_steps, sig, strict=True)])
        out[name] = {"steps": n_steps, "sigma": sig, "temperature": kappas * lr * var / 2,
                     "time": kappas * lr * n_steps, "counts": counts}
    return out
