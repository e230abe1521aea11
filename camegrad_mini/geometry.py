"""Small geometric helpers for two-task, two-dimensional pictures (chapter 1).

These functions answer the questions chapter 1 asks of a pair of task gradients ``g_0, g_1``
in the plane, vectorised over grids of points:

* Do they conflict?  ``<g_0, g_1> < 0``, and by how much: the cosine (:func:`cosine`).
* Which update directions ``d`` decrease *both* losses to first order (we step ``x - eta d``)?
  The open cone ``C = {d : <d, g_i> > 0 for all i}``, the dual cone of the gradients
  (:func:`common_descent_arc`). By Gordan's theorem ``C`` is empty exactly when ``0`` lies in
  the convex hull of the gradients, i.e. at a Pareto-stationary point.
* How far is a point from Pareto stationarity?  The distance from ``0`` to the segment
  ``[g_0, g_1]`` (:func:`pareto_stationarity_gap`).
* Where does minimising a fixed weighted sum land?  :func:`ls_minimize` runs a local optimiser
  from many starts, so non-convex problems (Fonseca-Fleming) show every local minimum;
  :func:`scalarization_sweep` answers the same question exactly along a sampled Pareto set for
  thousands of weights at once, :func:`stationary_weight` names the one weight for which a
  Pareto-stationary point is stationary, and :func:`weighted_hessian` tells whether that point is
  a minimum of the weighted sum or only a saddle or maximum.

Generic multi-task *aggregators* (MGDA, PCGrad, CAGrad, CAME-Grad), which return an update
direction for any number of tasks and dimensions, live in :mod:`camegrad_mini.optim`; nothing
here is meant for training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "cosine",
    "common_descent_arc",
    "hull_nearest_point",
    "pareto_stationarity_gap",
    "grid",
    "ConflictMap",
    "conflict_map",
    "LSResult",
    "ls_minimize",
    "polyline_coordinate",
    "stationary_weight",
    "weighted_hessian",
    "ScalarizationSweep",
    "scalarization_sweep",
]

Array = np.ndarray


def cosine(g0: Array, g1: Array, eps: float = 1e-12) -> Array:
    """Cosine of the angle between ``g0`` and ``g1`` along the last axis.

    ``cos = <g0, g1> / (|g0| |g1|)``: the scale-free measure of conflict (negative = conflict).
    Where either vector is shorter than ``eps`` the angle is undefined and ``nan`` is returned,
    rather than a misleading 0.

    Explained in: Chapter 1, §1.4 (gradients and conflict), §1.5 (a map of the plane) and
    §1.8 (the share of negative inner products).
    """
    g0 = np.asarray(g0, dtype=float)
    g1 = np.asarray(g1, dtype=float)
    if g0.shape[-1:] != g1.shape[-1:]:
        raise ValueError(f"g0 and g1 must have the same last dimension, got {g0.shape} and {g1.shape}")
    n0 = np.linalg.norm(g0, axis=-1)
    n1 = np.linalg.norm(g1, axis=-1)
    dot = (g0 * g1).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = dot / (n0 * n1)
    return np.where((n0 > eps) & (n1 > eps), np.clip(c, -1.0, 1.0), np.nan)


def _angle(v: Array) -> float:
    return float(np.arctan2(v[1], v[0]))


def _wrap(a: float) -> float:
    """Wrap an angle into ``(-pi, pi]``."""
    w = (a + np.pi) % (2.0 * np.pi) - np.pi
    return np.pi if w == -np.pi else float(w)


def common_descent_arc(grads: Sequence[Sequence[float]] | Array, tol: float = 1e-12) -> tuple[float, float] | None:
    """The open cone ``{d in R^2 : <d, g_i> > 0 for every i}`` as an arc of angles.

    Each constraint ``<d, g_i> > 0`` is an open half-plane: the directions within 90 degrees of
    ``g_i``. Their intersection is an arc ``(start, end)`` of polar angles (radians, ``end >
    start``, ``end - start <= pi``), or ``None`` when it is empty. It is empty when some
    ``g_i = 0`` (task ``i`` cannot decrease to first order) or when ``0`` lies in the convex hull
    of the gradients (Pareto stationarity, by Gordan's theorem); for two nonzero gradients its
    width is ``pi - angle(g_0, g_1)``, so it shrinks as the conflict grows but only vanishes when
    they are exactly opposite.

    The arc, if it exists, starts at the boundary ``theta_j - pi/2`` of some half-plane ``j``;
    we try each ``j`` and keep the one whose start lies inside every other half-plane.

    Explained in: Chapter 1, §1.4 (the cone of common descent).
    """
    G = np.asarray(grads, dtype=float)
    if G.ndim != 2 or G.shape[1] != 2 or G.shape[0] < 1:
        raise ValueError(f"grads must have shape (n_tasks, 2) with n_tasks >= 1, got {G.shape}")
    if not np.isfinite(G).all():
        raise ValueError("grads must be finite")
    if (np.linalg.norm(G, axis=1) <= tol).any():
        return None
    thetas = [_angle(g) for g in G]
    best: tuple[float, float] | None = None
    for tj in thetas:
        rel = np.array([_wrap(ti - tj) for ti in thetas])  # in (-pi, pi]
        # relative to start s = tj - pi/2, half-plane i covers (rel_i, rel_i + pi); it contains
        # s + 0 iff rel_i <= 0 (and rel_i > -pi, true after wrapping unless exactly opposite).
        if (rel <= tol).all() and (rel > -np.pi + tol).all():
            width = float((rel + np.pi).min())
            if width > tol and (best is None or width > best[1] - best[0]):
                start = tj - np.pi / 2.0
                best = (start, start + width)
    return best


def hull_nearest_point(g0: Array, g1: Array) -> Array:
    """The point of the segment ``[g0, g1]`` nearest to the origin (last axis = coordinates).

    ``a g0 + (1 - a) g1`` with ``a = clip(<g1 - g0, g1> / |g1 - g0|^2, 0, 1)``; when ``g0 = g1``
    the segment is a single point. This is the two-task case of MGDA's min-norm problem
    (Desideri 2012; Sener & Koltun 2018) in closed form, vectorised so it can be mapped over a
    whole grid; the general aggregator lives in :mod:`camegrad_mini.optim`.
    """
    g0 = np.asarray(g0, dtype=float)
    g1 = np.asarray(g1, dtype=float)
    diff = g1 - g0
    den = (diff * diff).sum(-1)
    safe = np.where(den > 0, den, 1.0)
    a = np.where(den > 0, (diff * g1).sum(-1) / safe, 0.5)
    a = np.clip(a, 0.0, 1.0)[..., None]
    return a * g0 + (1.0 - a) * g1


def pareto_stationarity_gap(g0: Array, g1: Array) -> Array:
    """Distance from the origin to the segment ``[g0, g1]``: ``min_{a in [0,1]} |a g0 + (1-a) g1|``.

    Zero exactly when ``0`` is in the convex hull of the two gradients, i.e. at a
    Pareto-stationary point; it grows with the size of the best common descent step available.

    Explained in: Chapter 1, §1.2 (Pareto stationarity) and §1.6 (sweeping the scalarization
    weight).
    """
    return np.linalg.norm(hull_nearest_point(g0, g1), axis=-1)


def grid(xlim: tuple[float, float] = (-2.0, 2.0), ylim: tuple[float, float] = (-2.0, 2.0),
         n: int = 161) -> tuple[Array, Array, Array]:
    """A regular ``n x n`` grid: returns ``X, Y`` (``meshgrid``) and the points ``(n, n, 2)``."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if not (xlim[0] < xlim[1] and ylim[0] < ylim[1]):
        raise ValueError(f"xlim and ylim must be increasing pairs, got {xlim} and {ylim}")
    X, Y = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    return X, Y, np.stack([X, Y], axis=-1)


@dataclass(frozen=True)
class ConflictMap:
    """Conflict measures of a two-task problem on a grid (all arrays ``(n, n)``).

    ``dot = <g_0, g_1>``, ``cos`` their cosine, ``gap`` the Pareto-stationarity gap, and
    ``joint_leaves_cone`` is True where the linear-scalarization gradient
    ``g_joint = w_0 g_0 + w_1 g_1`` is *not* a common descent direction, i.e. some
    ``<g_joint, g_i> <= 0``: a step along ``-g_joint`` does not decrease every task.
    """

    X: Array
    Y: Array
    dot: Array
    cos: Array
    gap: Array
    joint_leaves_cone: Array
    weights: tuple[float, float]

    @property
    def conflict_fraction(self) -> float:
        """Fraction of grid points with ``<g_0, g_1> < 0``."""
        return float((self.dot < 0).mean())

    @property
    def leave_fraction(self) -> float:
        """Fraction of grid points where ``g_joint`` is not a common descent direction."""
        return float(self.joint_leaves_cone.mean())


def conflict_map(problem, weights: Sequence[float] = (1.0, 1.0), xlim=(-2.0, 2.0), ylim=(-2.0, 2.0),
                 n: int = 161) -> ConflictMap:
    """Evaluate :class:`ConflictMap` for a two-task ``problem`` (from :mod:`camegrad_mini.problems`).

    Explained in: Chapter 1, §1.5 (where do gradients conflict?).
    """
    w = np.asarray(weights, dtype=float)
    if w.shape != (2,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be two non-negative numbers, not both zero; got {w.tolist()}")
    if getattr(problem, "n_tasks", 2) != 2:
        raise ValueError(f"problem must have two tasks, got n_tasks={problem.n_tasks}")
    X, Y, P = grid(xlim, ylim, n)
    G = problem.grads(P)  # (n, n, 2, 2)
    g0, g1 = G[..., 0, :], G[..., 1, :]
    gj = w[0] * g0 + w[1] * g1
    leaves = ((gj * g0).sum(-1) <= 0) | ((gj * g1).sum(-1) <= 0)
    return ConflictMap(X=X, Y=Y, dot=(g0 * g1).sum(-1), cos=cosine(g0, g1), gap=pareto_stationarity_gap(g0, g1),
                       joint_leaves_cone=leaves, weights=(float(w[0]), float(w[1])))


@dataclass(frozen=True)
class LSResult:
    """Local minimisers of ``w_0 L_0 + w_1 L_1`` found from many starts.

    ``x`` has one row per start (where that run ended), ``value`` the weighted loss there,
    ``converged`` whether the optimiser reported success; ``best`` is the lowest end point.
    """

    x: Array
    value: Array
    converged: Array

    @property
    def best(self) -> Array:
        return self.x[int(np.argmin(self.value))]

    def distinct(self, tol: float = 1e-3) -> Array:
        """The distinct end points (merged when closer than ``tol``), in order of first appearance."""
        out: list[Array] = []
        for p in self.x:
            if all(np.linalg.norm(p - q) > tol for q in out):
                out.append(p)
        return np.array(out)


def ls_minimize(problem, weights: Sequence[float], starts: Array, gtol: float = 1e-10) -> LSResult:
    """Minimise the weighted sum ``sum_i w_i L_i`` with L-BFGS-B from every row of ``starts``.

    We use the problem's analytic gradient. Running from many starts is the point: on a problem
    whose Pareto front is concave in places, the weighted sum has several local minima and the
    middle of the Pareto set consists of saddles or maxima, which no start converges to.

    Explained in: Chapter 1, §1.6 (sweeping the scalarization weight).
    """
    from scipy.optimize import minimize  # local import: scipy is only needed here

    w = np.asarray(weights, dtype=float)
    if w.shape != (2,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be two non-negative numbers, not both zero; got {w.tolist()}")
    S = np.atleast_2d(np.asarray(starts, dtype=float))
    if S.ndim != 2 or S.shape[1] != 2:
        raise ValueError(f"starts must have shape (n_starts, 2), got {np.shape(starts)}")

    def fun(x: Array) -> tuple[float, Array]:
        return float(problem.weighted_loss(x, w)), problem.weighted_grad(x, w)

    xs, vals, ok = [], [], []
    for s in S:
        r = minimize(fun, s, jac=True, method="L-BFGS-B", options={"gtol": gtol, "ftol": 1e-15, "maxiter": 2000})
        xs.append(r.x)
        vals.append(r.fun)
        ok.append(bool(r.success))
    return LSResult(x=np.array(xs), value=np.array(vals), converged=np.array(ok))


def polyline_coordinate(points: Array, polyline: Array) -> Array:
    """Normalised arc-length position in ``[0, 1]`` of the polyline point nearest to each point.

    Used to say *where along the Pareto set* a minimiser landed: 0 is the polyline's first
    vertex (task 0's minimiser for ``pareto_set``), 1 its last.

    Explained in: Chapter 1, §1.6 (sweeping the scalarization weight).
    """
    P = np.atleast_2d(np.asarray(points, dtype=float))
    V = np.asarray(polyline, dtype=float)
    if V.ndim != 2 or V.shape[0] < 2 or V.shape[1] != P.shape[1]:
        raise ValueError(f"polyline must have shape (m >= 2, {P.shape[1]}), got {V.shape}")
    seg = np.diff(V, axis=0)  # (m-1, d)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    total = cum[-1]
    if total <= 0:
        raise ValueError("polyline has zero length")
    rel = P[:, None, :] - V[None, :-1, :]  # (n, m-1, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((rel * seg).sum(-1) / np.where(seg_len > 0, seg_len**2, 1.0), 0.0, 1.0)
    proj = V[None, :-1, :] + t[..., None] * seg[None]
    dist = np.linalg.norm(P[:, None, :] - proj, axis=-1)
    k = dist.argmin(axis=1)
    idx = np.arange(len(P))
    return (cum[k] + t[idx, k] * seg_len[k]) / total


def stationary_weight(g0: Array, g1: Array) -> Array:
    """The weight ``alpha_1`` on task 1 that makes ``(1 - alpha_1) g0 + alpha_1 g1`` shortest.

    ``alpha_1`` lies in ``[0, 1]``; it is one minus the weight on ``g0`` that
    :func:`hull_nearest_point` uses (the two-task MGDA weight). At a Pareto-stationary point
    with nonzero, exactly opposite gradients it is the unique normalised weight for which the
    point is a stationary point of the weighted sum, ``alpha_1 = |g0| / (|g0| + |g1|)``; so a
    point of the Pareto set can be a minimiser of *one* weighted sum at most (up to scale), and
    whether it is one is a question about the Hessian there (:func:`weighted_hessian`).
    Vectorised over leading axes; where ``g0 = g1`` every weight gives the same vector and
    ``0.5`` is returned.

    Explained in: Chapter 1, §1.2 (Pareto stationarity) and §1.6 (which points can a weighted sum
    reach?).
    """
    g0 = np.asarray(g0, dtype=float)
    g1 = np.asarray(g1, dtype=float)
    if g0.shape != g1.shape:
        raise ValueError(f"g0 and g1 must have the same shape, got {g0.shape} and {g1.shape}")
    diff = g1 - g0
    den = (diff * diff).sum(-1)
    safe = np.where(den > 0, den, 1.0)
    a = np.where(den > 0, (diff * g1).sum(-1) / safe, 0.5)  # weight on g0, as in hull_nearest_point
    return 1.0 - np.clip(a, 0.0, 1.0)


def weighted_hessian(problem, x: Array, weights: Sequence[float], step: float = 1e-5) -> Array:
    """Hessian of ``sum_i w_i L_i`` at ``x`` by central differences of the analytic gradient.

    ``x`` has shape ``(..., d)``; the result ``(..., d, d)`` is symmetrised. The error is
    ``O(step^2)`` times the third derivatives (plus round-off ``O(eps_machine / step)``), so the
    default ``step`` gives about ten correct digits on the book's test problems. Its smallest
    eigenvalue decides what a stationary point is: positive, a strict local minimum; negative, a
    saddle or a maximum, which gradient descent leaves.

    Explained in: Chapter 1, §1.6 (which points can a weighted sum reach?).
    """
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or (w < 0).any() or w.sum() <= 0 or not np.isfinite(w).all():
        raise ValueError(f"weights must be non-negative finite numbers, not all zero; got {w.tolist()}")
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive finite number, got {step}")
    x = np.asarray(x, dtype=float)
    d = x.shape[-1]
    cols = []
    for e in step * np.eye(d):
        cols.append((problem.weighted_grad(x + e, w) - problem.weighted_grad(x - e, w)) / (2.0 * step))
    H = np.stack(cols, axis=-1)  # H[..., i, j] = d g_i / d x_j
    return 0.5 * (H + np.swapaxes(H, -1, -2))


@dataclass(frozen=True)
class ScalarizationSweep:
    """Minimisers of ``(1 - alpha_1) F_0 + alpha_1 F_1`` along a sampled curve, for many weights.

    ``weights`` (m,) are the weights ``alpha_1`` on task 1; ``global_index`` (m,) is, per weight,
    the index of the curve point with the lowest weighted loss (ties go to the lower index);
    ``local_weight`` and
    ``local_index`` (same length) list every strict local minimum along the curve as a pair
    (index into ``weights``, index into the curve), the global ones included. An end point
    counts when it is lower than its one neighbour.
    """

    weights: Array
    global_index: Array
    local_weight: Array
    local_index: Array
    n_points: int

    def reached(self, kind: str = "local") -> Array:
        """Boolean mask over the curve: points that are a ``"global"`` or ``"local"`` minimiser for some weight."""
        if kind not in ("global", "local"):
            raise ValueError(f"kind must be 'global' or 'local', got {kind!r}")
        mask = np.zeros(self.n_points, dtype=bool)
        mask[self.global_index if kind == "global" else self.local_index] = True
        return mask


def scalarization_sweep(losses: Array, weights: Sequence[float] | Array) -> ScalarizationSweep:
    """Every minimiser of each weighted sum, restricted to a curve sampled as ``losses`` (n, 2).

    ``losses[j] = (L_0, L_1)`` at the ``j``-th point of an ordered curve (for example
    ``problem.losses(problem.pareto_set(n))``), ``weights`` the weights ``alpha_1`` in ``[0, 1]``
    on task 1. For each weight the weighted loss is evaluated at all ``n`` points at once, so
    thousands of weights cost one array operation instead of thousands of optimiser runs.

    What this does not check: a minimiser *along the curve* is a minimiser in the whole space only
    if the weighted sum also curves upwards across the curve (use :func:`weighted_hessian`), and
    the answer is only as fine as the sampling: positions that need a weight between two of
    ``weights`` are missed.

    Explained in: Chapter 1, §1.6 (which points can a weighted sum reach?).
    """
    F = np.asarray(losses, dtype=float)
    if F.ndim != 2 or F.shape[1] != 2 or F.shape[0] < 2:
        raise ValueError(f"losses must have shape (n >= 2, 2), got {F.shape}")
    if not np.isfinite(F).all():
        raise ValueError("losses must be finite")
    ws = np.atleast_1d(np.asarray(weights, dtype=float))
    if ws.ndim != 1 or ws.size == 0 or not np.isfinite(ws).all() or (ws < 0).any() or (ws > 1).any():
        raise ValueError("weights must be a non-empty 1-D array of numbers in [0, 1]")
    V = (1.0 - ws)[:, None] * F[None, :, 0] + ws[:, None] * F[None, :, 1]  # (m, n)
    inf = np.full((len(ws), 1), np.inf)
    left = np.concatenate([inf, V[:, :-1]], axis=1)
    right = np.concatenate([V[:, 1:], inf], axis=1)
    local = (V < left) & (V < right)
    wi, pi = np.nonzero(local)
    return ScalarizationSweep(weights=ws, global_index=V.argmin(axis=1), local_weight=wi, local_index=pi,
                              n_points=F.shape[0])
