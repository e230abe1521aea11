r"""Pure functions: task gradients (or their Gram matrix) in, a combined direction out.

Nothing here touches autograd or an optimizer. Every method is written over the T x T Gram
matrix :math:`G_{ij} = \langle g_i, g_j\rangle` of the **raw** per-task gradients
:math:`g_i = \nabla L_i` plus the task weights :math:`\omega`, and returns **coefficients**
:math:`c` such that the combined direction is :math:`d = \sum_i c_i g_i` (:func:`combine` forms
it). Every direction used by these methods lies in the span of the task gradients (PCGrad's
projections, CAGrad's ball centre and correction, MGDA's hull point), so the Gram matrix is all
the numerics need: the per-step cost beyond the backward passes is T(T+1)/2 dot products and one
weighted sum, whatever the model size.

Equations follow ``came-grad-method.md`` (the book's method note):

- linear scalarization (LS): :math:`g_\text{joint} = \sum_i \omega_i g_i`;
- S1 (:func:`rectify`): :math:`\mu = \frac1T\sum_i g_i`,
  :math:`u^* = \arg\max_u \min_i \langle g_i, u\rangle` s.t. :math:`\lVert u-\mu\rVert \le \rho\lVert\mu\rVert`,
  solved through its dual
  :math:`\alpha^* = \arg\min_{\alpha\in\Delta} g_\alpha^\top\mu + \rho\lVert\mu\rVert\lVert g_\alpha\rVert`,
  :math:`u^* = \mu + \rho\lVert\mu\rVert\, g_{\alpha^*}/\lVert g_{\alpha^*}\rVert`;
- S2 (:func:`inject`): :math:`u_\text{en} = u^*\,\kappa\lVert g_\text{joint}\rVert / (\lVert u^*\rVert + \varepsilon)`;
- S3 (:func:`fuse`): :math:`g_\text{final} = (1-\nu)\,u_\text{en} + \nu\kappa\, g_\text{joint}`;
- :func:`came_grad` composes the three.

Baselines over the same interface: :func:`linear_scalarization`, :func:`pcgrad`, :func:`mgda`,
:func:`cagrad`. The baselines act on the task-weighted gradients :math:`\omega_i g_i` (the losses
as the trainer weights them) and, like the CAGrad repository, return directions at the scale of
the **sum** of the task gradients (T times the mean-based direction), so that all methods step
at a comparable size under SGD. Each returns an :class:`AggregationResult` with diagnostics.

Numerics: float64 numpy; the Gram matrix is normalised by its largest diagonal entry before
solving, so results do not depend on the gradient scale (tested from 1e-8 to 1e8); two tasks use
closed forms, more tasks the small active-set solver of ``camegrad_mini.optim.simplex`` (pairwise
Frank-Wolfe steps plus Newton steps on the current face).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypeVar, Union

import numpy as np
import torch
from numpy.typing import ArrayLike

from ._types import FloatArray, GradsLike, GramLike, WeightsLike
from .simplex import min_norm_weights, solve_simplex_dual

__all__ = [
    "AggregationResult",
    "RectifyResult",
    "gram_matrix",
    "combine",
    "pairwise_cosines",
    "conflict_indicator",
    "linear_scalarization",
    "pcgrad",
    "mgda",
    "cagrad",
    "rectify",
    "inject",
    "fuse",
    "came_grad",
    "aggregate",
    "validate_came_hyperparameters",
]

#: Relative threshold for "this combination vanishes": ``||sum_i c_i g_i||`` counts as zero when it
#: is at most ``zero_tol * sum_i |c_i| ||g_i||``, the norm the combination would have if nothing
#: cancelled (:func:`_cancelled`). Measuring against the gradients that enter the combination, not
#: the largest task gradient, keeps a small but genuine direction when task gradients differ in
#: scale by many orders of magnitude. A float32 Gram matrix cannot resolve cancellations much
#: finer than about 1e-3 of the gradient norm; exact cancellations (g_1 = -g_2) are caught exactly.
DEFAULT_ZERO_TOL = 1e-6

Basis = Literal["raw", "weighted"]
EpsMode = Literal["relative", "absolute"]
#: A vector (or coefficient vector) the linear stages S2 and S3 accept: a float64 array or a tensor.
VectorT = TypeVar("VectorT", FloatArray, torch.Tensor)
#: What :func:`combine` returns: a (D,) array or tensor, or one tensor (None: unreached) per parameter.
Direction = Union[FloatArray, torch.Tensor, list[Optional[torch.Tensor]]]


# --------------------------------------------------------------------------------------------
# result containers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RectifyResult:
    """Output of stage S1 (:func:`rectify`), in coefficients over the gradients whose Gram was given.

    Attributes:
        mu: Coefficients of the ball centre, all equal to 1/T (the unweighted mean).
        u_star: Coefficients of the rectified direction u*.
        alpha: Dual solution alpha* on the simplex (uniform when the dual is not needed).
        radius: The trust-region radius rho * ||mu||.
        norms: ``{"mu", "g_alpha", "u_star"}``: Euclidean norms of mu, g_alpha* and u*.
        degenerate: None, or the degenerate case hit: ``"zero_gradients"`` (all g_i = 0),
            ``"mu_zero"`` (mu = 0: the ball is a point, u* = mu = 0) or ``"g_alpha_zero"``
            (g_alpha* = 0 makes the closed form 0/0; u* = mu is used, see :func:`rectify`).
        iterations: Solver iterations (0 for the closed forms).
    """

    mu: FloatArray
    u_star: FloatArray
    alpha: FloatArray
    radius: float
    norms: dict[str, float]
    degenerate: str | None
    iterations: int


@dataclass(frozen=True)
class AggregationResult:
    """What every aggregation function returns.

    Attributes:
        method: Name of the method (``"ls"``, ``"pcgrad"``, ``"mgda"``, ``"cagrad"``, ``"came"``).
        coefficients: Shape (T,): the combined direction is ``sum_i coefficients[i] * g_i`` over
            the **raw** (unweighted) task gradients g_i.
        task_weights: The task weights omega used, shape (T,).
        gram: The raw Gram matrix ``<g_i, g_j>``, shape (T, T).
        cosines: Pairwise cosines of the raw gradients (0 where a gradient is zero).
        conflict: True when some pair of task gradients has a negative inner product.
        alpha: Dual solution on the simplex (CAME-Grad, CAGrad, MGDA), else None.
        norms: Norms of the vectors involved. Always ``"g_joint"`` (the LS direction
            ``sum_i omega_i g_i``) and ``"g_final"`` (the returned direction); CAME-Grad adds
            ``"mu"``, ``"g_alpha"``, ``"u_star"``, ``"u_en"``.
        degenerate: None, or a string naming the degenerate case hit.
        extras: Method-specific details (stage coefficients, effective epsilon, iterations).
    """

    method: str
    coefficients: FloatArray
    task_weights: FloatArray
    gram: FloatArray
    cosines: FloatArray
    conflict: bool
    alpha: FloatArray | None
    norms: dict[str, float]
    degenerate: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# input handling and small helpers
# --------------------------------------------------------------------------------------------
def _as_gram(gram: GramLike) -> FloatArray:
    if isinstance(gram, torch.Tensor):
        gram = gram.detach().to("cpu", torch.float64).numpy()
    g = np.array(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square (T, T) matrix, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise ValueError("gram contains NaN or infinite entries")
    return 0.5 * (g + g.T)


def _as_weights(task_weights: WeightsLike, num_tasks: int) -> FloatArray:
    if task_weights is None:
        return np.ones(num_tasks)
    if isinstance(task_weights, torch.Tensor):
        task_weights = task_weights.detach().cpu().tolist()
    w = np.array(task_weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != num_tasks:
        raise ValueError(f"task_weights has {w.shape[0]} entries but there are {num_tasks} tasks")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"task_weights must be finite and non-negative, got {w.tolist()}")
    return w


def _real(name: str, value: object) -> float:
    """A finite real number as float, or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _qnorm(gram: FloatArray, coef: FloatArray) -> float:
    """Norm of sum_i coef_i g_i from the Gram matrix (clamped: rounding can make it -0)."""
    return math.sqrt(max(float(coef @ gram @ coef), 0.0))


def _cancelled(gram: FloatArray, coef: FloatArray, zero_tol: float) -> bool:
    """Whether ``sum_i coef_i g_i`` is zero up to cancellation error (see :data:`DEFAULT_ZERO_TOL`).

    Rounding in ``coef @ gram @ coef`` is relative to ``(sum_i |coef_i| ||g_i||)**2``, so this is
    the unit a norm must be compared with; a combination of gradients that are all zero is zero.
    """
    uncancelled = float(np.abs(coef) @ np.sqrt(np.maximum(np.diag(gram), 0.0)))
    return _qnorm(gram, coef) <= zero_tol * uncancelled


def _scale(gram: FloatArray) -> float:
    """Largest task-gradient norm: the unit in which tolerances are relative."""
    return math.sqrt(max(float(gram.diagonal().max()), 0.0))


def _cosines(g: FloatArray) -> FloatArray:
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return np.clip(g * np.outer(inv, inv), -1.0, 1.0)


def _conflict(g: FloatArray) -> bool:
    return bool((np.triu(g, 1) < 0).any())


def pairwise_cosines(gram: GramLike) -> FloatArray:
    """Cosine similarities ``G_ij / sqrt(G_ii G_jj)`` of the task gradients.

    The paper's conflict statistic (53.8% of generation/clinical inner products negative, method
    note, Setting) is the sign of the off-diagonal entries. A zero gradient has no direction;
    its cosines are reported as 0 (orthogonal to everything) so the matrix stays finite.

    Args:
        gram: The (T, T) Gram matrix.

    Returns:
        The (T, T) cosine matrix, clipped to [-1, 1].
    """
    return _cosines(_as_gram(gram))


def conflict_indicator(gram: GramLike) -> bool:
    """True when two task gradients conflict, i.e. some ``<g_i, g_j> < 0`` with i != j.

    This is the "Drift term deviation" condition of the method note. Task weights are positive,
    so the sign is the same for raw and task-weighted gradients.

    Args:
        gram: The (T, T) Gram matrix.

    Returns:
        Whether any off-diagonal inner product is negative.

    Explained in: Chapter 1 (conflict) and Chapter 4, §4.6.

    Examples:
        >>> import numpy as np
        >>> conflict_indicator(np.array([[1.0, -0.5], [-0.5, 1.0]]))
        True
    """
    return _conflict(_as_gram(gram))


def gram_matrix(grads: GradsLike) -> FloatArray:
    """Gram matrix of task gradients, without concatenating parameter tensors.

    Args:
        grads: Either a (T, D) tensor or array (one flattened gradient per row), or a sequence of
            T per-task sequences of tensors (one entry per parameter tensor; None means that task
            does not reach the parameter and counts as a zero gradient). Dot products are taken
            per parameter tensor and summed, in float32 for low-precision gradients and returned
            in float64.

    Returns:
        The (T, T) float64 Gram matrix.

    Explained in: Chapter 4, §4.1.

    Examples:
        >>> import torch
        >>> gram_matrix(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        array([[1., 1.],
               [1., 2.]])
    """
    if isinstance(grads, np.ndarray):
        m = grads.astype(np.float64).reshape(grads.shape[0], -1)
        return m @ m.T
    if isinstance(grads, torch.Tensor):
        mt = grads.detach().reshape(grads.shape[0], -1)
        if mt.dtype not in (torch.float32, torch.float64):
            mt = mt.float()
        return (mt @ mt.T).to("cpu", torch.float64).numpy()
    per_task = [list(task) for task in grads]
    t_count = len(per_task)
    n_params = len(per_task[0]) if t_count else 0
    gram = np.zeros((t_count, t_count))
    for k in range(n_params):
        vecs = {}
        for i in range(t_count):
            g = per_task[i][k]
            if g is not None:
                g = g.detach().reshape(-1)
                vecs[i] = g.float() if g.dtype not in (torch.float32, torch.float64) else g
        idx = sorted(vecs)
        for a, i in enumerate(idx):
            for j in idx[a:]:
                val = float(torch.dot(vecs[i], vecs[j]))
                gram[i, j] += val
                if i != j:
                    gram[j, i] += val
    return gram


def combine(grads: GradsLike, coefficients: ArrayLike) -> Direction:
    """Form the direction ``sum_i coefficients[i] * g_i``.

    Args:
        grads: A (T, D) tensor or array, or a sequence of T per-task sequences of tensors (None
            entries are zero gradients), as accepted by :func:`gram_matrix`.
        coefficients: Shape (T,), e.g. ``AggregationResult.coefficients``.

    Returns:
        A (D,) tensor/array for stacked input, or a list with one tensor (or None when no task
        reaches the parameter) per parameter tensor.

    Examples:
        >>> import numpy as np
        >>> combine(np.array([[1.0, 0.0], [0.0, 2.0]]), [0.5, 0.5])
        array([0.5, 1. ])
    """
    c = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if isinstance(grads, np.ndarray):
        return c @ grads.astype(np.float64).reshape(grads.shape[0], -1)
    if isinstance(grads, torch.Tensor):
        flat = grads.reshape(grads.shape[0], -1)
        return torch.as_tensor(c, dtype=flat.dtype, device=flat.device) @ flat
    per_task = [list(task) for task in grads]
    out: list[torch.Tensor | None] = []
    for k in range(len(per_task[0])):
        acc = None
        for i, task in enumerate(per_task):
            g = task[k]
            if g is None:
                continue
            acc = g * float(c[i]) if acc is None else acc.add(g, alpha=float(c[i]))
        out.append(acc)
    return out


def _result(
    method: str,
    coef: FloatArray,
    weights: FloatArray,
    gram: FloatArray,
    alpha: FloatArray | None,
    degenerate: str | None,
    norms: dict[str, float] | None = None,
    extras: dict[str, Any] | None = None,
) -> AggregationResult:
    all_norms = {"g_joint": _qnorm(gram, weights)}
    all_norms.update(norms or {})
    all_norms["g_final"] = _qnorm(gram, coef)
    return AggregationResult(
        method=method,
        coefficients=coef,
        task_weights=weights,
        gram=gram,
        cosines=_cosines(gram),
        conflict=_conflict(gram),
        alpha=alpha,
        norms=all_norms,
        degenerate=degenerate,
        extras=extras or {},
    )


def _weighted_gram(gram: FloatArray, weights: FloatArray) -> FloatArray:
    return gram * np.outer(weights, weights)


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
def linear_scalarization(gram: GramLike, task_weights: WeightsLike = None) -> AggregationResult:
    """Linear scalarization: ``g_joint = sum_i omega_i g_i`` (method note, Setting).

    This is what one backward pass of the weighted loss ``sum_i omega_i L_i`` produces; the
    coefficients are the task weights themselves.

    Args:
        gram: Raw (T, T) Gram matrix.
        task_weights: omega, shape (T,); None means all ones.

    Returns:
        An :class:`AggregationResult` with ``coefficients == task_weights``.

    Explained in: Chapter 4, §4.8.

    Examples:
        >>> import numpy as np
        >>> linear_scalarization(np.eye(2), [1.0, 2.0]).coefficients
        array([1., 2.])
    """
    g = _as_gram(gram)
    w = _as_weights(task_weights, g.shape[0])
    return _result("ls", w.copy(), w, g, None, None)


def pcgrad(
    gram: GramLike,
    task_weights: WeightsLike = None,
    *,
    rng: np.random.Generator | int | None = 0,
) -> AggregationResult:
    """PCGrad, gradient surgery (Yu et al., NeurIPS 2020), written over the Gram matrix.

    On the task-weighted gradients h_i = omega_i g_i: for each task i, start from h_i and, for
    every other task j in a random order, if the current vector conflicts with the original h_j
    (negative inner product) remove its component along h_j. The result is the sum of the
    projected vectors (the paper's "sum" reduction). For two tasks this is
    ``h_0 - (<h_0,h_1>/||h_1||^2) h_1 + h_1 - (<h_0,h_1>/||h_0||^2) h_0`` under conflict and
    ``h_0 + h_1`` otherwise; the random order only matters from three tasks on.

    Args:
        gram: Raw (T, T) Gram matrix.
        task_weights: omega; None means all ones.
        rng: A numpy Generator or an integer seed for the projection order (None: fresh entropy).

    Returns:
        An :class:`AggregationResult`.

    Explained in: Chapter 4, §4.8.

    Examples:
        >>> import numpy as np
        >>> pcgrad(np.array([[1.0, -0.5], [-0.5, 1.0]])).coefficients
        array([1.5, 1.5])
    """
    g = _as_gram(gram)
    w = _as_weights(task_weights, g.shape[0])
    h = _weighted_gram(g, w)
    t_count = g.shape[0]
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    total = np.zeros(t_count)
    n_projections = 0
    for i in range(t_count):
        c = np.zeros(t_count)
        c[i] = 1.0
        others = np.array([j for j in range(t_count) if j != i], dtype=int)
        for j in gen.permutation(others) if others.size else []:
            dot = float(c @ h[:, j])
            if dot < 0.0 and h[j, j] > 0.0:
                c[j] -= dot / h[j, j]
                n_projections += 1
        total += c
    coef = total * w
    return _result("pcgrad", coef, w, g, None, None, extras={"projections": n_projections})


def mgda(gram: GramLike, task_weights: WeightsLike = None, *, zero_tol: float = DEFAULT_ZERO_TOL) -> AggregationResult:
    """MGDA: the min-norm point of the convex hull of the task-weighted gradients.

    alpha* = argmin over the simplex of ``||sum_i alpha_i omega_i g_i||`` (Sener and Koltun,
    NeurIPS 2018; closed form for two tasks, Frank-Wolfe beyond). The direction is returned at
    sum scale, ``T * sum_i alpha*_i omega_i g_i``, as the CAGrad repository writes it.
    When the min-norm point is 0 the tasks are Pareto-stationary and the direction is 0
    (``degenerate="pareto_stationary"``).

    Args:
        gram: Raw (T, T) Gram matrix.
        task_weights: omega; None means all ones.
        zero_tol: Relative tolerance for calling the min-norm point zero (:data:`DEFAULT_ZERO_TOL`).

    Returns:
        An :class:`AggregationResult` whose ``alpha`` is the min-norm weights.

    Explained in: Chapter 4, §4.8.

    Examples:
        >>> import numpy as np
        >>> result = mgda(np.array([[1.0, 0.0], [0.0, 4.0]]))
        >>> result.alpha, result.coefficients
        (array([0.8, 0.2]), array([1.6, 0.4]))
    """
    g = _as_gram(gram)
    w = _as_weights(task_weights, g.shape[0])
    h = _weighted_gram(g, w)
    s = _scale(h)
    t_count = g.shape[0]
    if s == 0.0:
        alpha = np.full(t_count, 1.0 / t_count)
        return _result("mgda", np.zeros(t_count), w, g, alpha, "zero_gradients")
    alpha = min_norm_weights(h / s**2)
    degenerate = "pareto_stationary" if _cancelled(h, alpha, zero_tol) else None
    # At a Pareto-stationary point the min-norm combination is rounding noise, not a direction;
    # a scale-free base optimizer (Adam) would blow it up to a full step, so return exactly 0.
    coef = np.zeros(t_count) if degenerate else t_count * alpha * w
    return _result("mgda", coef, w, g, alpha, degenerate)


# --------------------------------------------------------------------------------------------
# CAME-Grad stages
# --------------------------------------------------------------------------------------------
def rectify(
    gram: GramLike,
    rho: float,
    *,
    zero_tol: float = DEFAULT_ZERO_TOL,
    max_iter: int = 100,
    tol: float = 1e-11,
) -> RectifyResult:
    """Stage S1, conflict-averse direction rectification (method note, step 2).

    mu = (1/T) sum_i g_i (unweighted mean of the gradients whose Gram is given);
    u* = argmax_u min_i <g_i, u> subject to ||u - mu|| <= rho ||mu||, through the dual
    alpha* = argmin over the simplex of g_alpha^T mu + rho ||mu|| ||g_alpha||, and the closed form
    u* = mu + rho ||mu|| g_alpha* / ||g_alpha*||. This is CAGrad's direction with c renamed rho
    and without CAGrad's rescale. Which gradients enter (raw or task-weighted) is the caller's
    choice: pass the matching Gram matrix (:func:`came_grad` does this for its ``rectify_on``).

    Degenerate cases, an **[open]** point of the paper, resolved here as follows:

    - all gradients zero: u* = 0, ``degenerate="zero_gradients"``;
    - mu = 0 (for instance g_1 = -g_2): the ball has radius 0, so u* = mu = 0,
      ``degenerate="mu_zero"``;
    - g_alpha* = 0 with mu != 0: the closed form is 0/0 and the max-min value is 0; the
      correction term is dropped and u* = mu, ``degenerate="g_alpha_zero"``. This fallback is
      simple, not optimal: mu can still have a negative inner product with some g_i while a
      point of the ball reaches the optimal value 0 (gradients (1, 0), (-1, 0), (0.01, 1) with
      rho = 0.5: mu hurts the second task by 0.0033, u = (0, 1/3) hurts none).

    Since rho < 1 keeps ||u*|| >= (1 - rho) ||mu|| > 0, u* vanishes only when mu does.

    Args:
        gram: (T, T) Gram matrix of the gradients to rectify.
        rho: Trust-region radius factor, >= 0 (CAME-Grad requires rho < 1; CAGrad's c may exceed 1).
        zero_tol: Relative tolerance for calling mu or g_alpha* zero: relative to the norm the
            combination would have without cancellation (:data:`DEFAULT_ZERO_TOL`), so a small
            task gradient's genuine direction is never dropped.
        max_iter: Solver iteration cap (three or more tasks).
        tol: Solver tolerance.

    Returns:
        A :class:`RectifyResult` (coefficients over the given gradients).

    Explained in: Chapter 4, §4.2 (S1 and its dual) and §4.3 (two tasks).

    Examples:
        >>> import numpy as np
        >>> s1 = rectify(np.array([[1.0, -0.5], [-0.5, 1.0]]), rho=0.5)
        >>> s1.u_star, s1.alpha, s1.degenerate
        (array([0.75, 0.75]), array([0.5, 0.5]), None)
    """
    rho = _real("rho", rho)
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    return _rectify(_as_gram(gram), rho, zero_tol, max_iter, tol)


def _rectify(g: FloatArray, rho: float, zero_tol: float, max_iter: int, tol: float) -> RectifyResult:
    """:func:`rectify` on an already validated, symmetric float64 Gram matrix."""
    t_count = g.shape[0]
    m = np.full(t_count, 1.0 / t_count)
    uniform = m.copy()
    s = _scale(g)
    if s == 0.0:
        zero = {"mu": 0.0, "g_alpha": 0.0, "u_star": 0.0}
        return RectifyResult(m, np.zeros(t_count), uniform, 0.0, zero, "zero_gradients", 0)
    gn = g / s**2  # unit scale: the dual's minimiser is invariant to this
    mu_norm_n = _qnorm(gn, m)
    if _cancelled(gn, m, zero_tol):
        # Treat mu as exactly 0 (u* = 0) so that S2 does not blow rounding noise up to full norm.
        norms = {"mu": mu_norm_n * s, "g_alpha": float("nan"), "u_star": 0.0}
        return RectifyResult(m, np.zeros(t_count), uniform, 0.0, norms, "mu_zero", 0)
    r_n = rho * mu_norm_n
    sol = solve_simplex_dual(gn, gn @ m, r_n, max_iter=max_iter, tol=tol)
    alpha = sol.alpha
    ga_norm_n = _qnorm(gn, alpha)
    degenerate = None
    if _cancelled(gn, alpha, zero_tol):
        u = m.copy()
        if rho > 0:
            degenerate = "g_alpha_zero"
    else:
        u = m + (r_n / ga_norm_n) * alpha
    norms = {"mu": mu_norm_n * s, "g_alpha": ga_norm_n * s, "u_star": _qnorm(gn, u) * s}
    return RectifyResult(m, u, alpha, r_n * s, norms, degenerate, sol.iterations)


def inject(u_star: VectorT, u_star_norm: float, g_joint_norm: float, kappa: float, eps: float) -> VectorT:
    """Stage S2, magnitude-enhanced energy injection (method note, step 3).

    u_en = u* * kappa ||g_joint|| / (||u*|| + eps): the rectified direction is given the
    magnitude of the joint (LS) gradient, amplified by kappa. Works on a gradient vector or on
    a coefficient vector alike (the map is linear in ``u_star``). When ``u_star_norm + eps`` is 0
    (every gradient is zero and a relative epsilon vanished) the result is ``0 * u_star``.

    Args:
        u_star: The rectified direction (vector or coefficients).
        u_star_norm: ||u*||.
        g_joint_norm: ||g_joint|| = ||sum_i omega_i g_i||.
        kappa: The amplification factor.
        eps: The epsilon in the denominator (already scaled if relative; **[open]** in the paper).

    Returns:
        u_en, of the same type as ``u_star``.

    Explained in: Chapter 4, §4.5.

    Examples:
        >>> import numpy as np
        >>> inject(np.array([0.5, 0.5]), u_star_norm=0.5, g_joint_norm=1.0, kappa=1.5, eps=0.0)
        array([1.5, 1.5])
    """
    denom = u_star_norm + eps
    factor = kappa * g_joint_norm / denom if denom > 0 else 0.0
    return u_star * factor


def fuse(u_en: VectorT, g_joint: VectorT, kappa: float, nu: float) -> VectorT:
    """Stage S3, "adaptive" gradient fusion (method note, step 4).

    g_final = (1 - nu) u_en + nu * kappa * g_joint. The paper names the stage "adaptive"; a public
    audit of it reports nu as a fixed tuned constant (values above 0.3 "bring conflicts back"), so
    nothing here adapts it. Linear, so it works on vectors or coefficient vectors alike.

    Args:
        u_en: Output of :func:`inject`.
        g_joint: The LS direction (vector, or coefficients = task weights).
        kappa: The amplification factor.
        nu: Fusion weight in [0, 1].

    Returns:
        g_final, of the same type as the inputs.

    Explained in: Chapter 4, §4.5 and §4.6 (S3 brings conflict back).

    Examples:
        >>> import numpy as np
        >>> fuse(np.array([1.0, 1.0]), np.array([1.0, 1.0]), kappa=1.5, nu=0.2)
        array([1.1, 1.1])
    """
    return (1.0 - nu) * u_en + (nu * kappa) * g_joint


def validate_came_hyperparameters(
    rho: float, kappa: float, nu: float, eps: float, *, allow_kappa_below_one: bool = False
) -> None:
    """Raise ValueError naming the argument unless rho in [0, 1), kappa >= 1, nu in [0, 1], eps >= 0.

    The ranges are the paper's (method note, Defaults). kappa in (0, 1) is accepted only with
    ``allow_kappa_below_one=True`` (useful to show that kappa is a global scale).
    """
    rho, kappa, nu, eps = (_real(n, v) for n, v in (("rho", rho), ("kappa", kappa), ("nu", nu), ("eps", eps)))
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must lie in [0, 1), got {rho}")
    if allow_kappa_below_one:
        if kappa <= 0.0:
            raise ValueError(f"kappa must be > 0, got {kappa}")
    elif kappa < 1.0:
        raise ValueError(f"kappa must be >= 1 (pass allow_kappa_below_one=True to go lower), got {kappa}")
    if not 0.0 <= nu <= 1.0:
        raise ValueError(f"nu must lie in [0, 1], got {nu}")
    if eps < 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def came_grad(
    gram: GramLike,
    task_weights: WeightsLike = None,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    eps_mode: EpsMode = "relative",
    rectify_on: Basis = "raw",
    allow_kappa_below_one: bool = False,
    zero_tol: float = DEFAULT_ZERO_TOL,
    max_iter: int = 100,
    tol: float = 1e-11,
) -> AggregationResult:
    """CAME-Grad, the composed update S1 -> S2 -> S3 (method note, steps 2-4).

    With g_joint = sum_i omega_i g_i: u* = :func:`rectify` (S1), u_en = :func:`inject` (S2),
    g_final = :func:`fuse` (S3). Equivalently g_final = kappa [(1 - nu) ||g_joint|| u*/(||u*|| + eps)
    + nu g_joint]: kappa is a global scale (tested), a learning-rate multiplier under SGD and
    almost a no-op under Adam.

    **[open]** choices made explicit here:

    - ``rectify_on="raw"`` (default): S1 uses the raw gradients g_i = grad L_i, as the method
      note writes mu = (1/(K+1)) sum_i g_i with g_i = grad L_i; the task weights then enter only
      through g_joint (S2's target norm and S3's fused term). ``"weighted"`` rectifies the
      task-weighted gradients omega_i g_i instead.
    - ``eps_mode="relative"`` (default): S2's epsilon is ``eps`` times the largest gradient norm
      in the rectified basis, so the update is positively homogeneous in the gradients (scale
      free, GradScaler-safe); ``"absolute"`` uses ``eps`` as the paper's formula reads.
    - Degenerate S1 cases follow :func:`rectify`; mu = 0 gives u_en = 0 and hence
      g_final = nu kappa g_joint. A single task gives g_final = kappa omega_0 g_0.

    Args:
        gram: Raw (T, T) Gram matrix.
        task_weights: omega; None means all ones.
        rho: Trust-region factor in [0, 1) (official code default 0.5).
        kappa: Energy amplification, >= 1 (official code default 1.5).
        nu: Fusion weight in [0, 1] (official code default 0.2).
        eps: S2's epsilon (see ``eps_mode``).
        eps_mode: ``"relative"`` or ``"absolute"``.
        rectify_on: ``"raw"`` or ``"weighted"`` gradients in S1.
        allow_kappa_below_one: Permit 0 < kappa < 1.
        zero_tol: Relative tolerance for degenerate norms (:data:`DEFAULT_ZERO_TOL`).
        max_iter: Solver iteration cap (three or more tasks).
        tol: Solver tolerance.

    Returns:
        An :class:`AggregationResult`; ``extras`` holds the coefficient vectors ``mu``,
        ``u_star``, ``u_en``, ``g_joint`` (all over the raw gradients), ``eps_effective``,
        ``inject_factor`` and ``iterations``.

    Explained in: Chapter 4, §4.1 (the three stages), §4.5 (kappa as a global scale) and §4.6 (degenerate cases).

    Examples:
        >>> import numpy as np
        >>> gram = np.array([[1.0, -0.5], [-0.5, 1.0]])   # two conflicting unit gradients
        >>> result = came_grad(gram)                       # rho=0.5, kappa=1.5, nu=0.2
        >>> result.coefficients.round(4), result.conflict
        (array([1.5, 1.5]), True)
    """
    _check_came_options(rho, kappa, nu, eps, eps_mode, rectify_on, allow_kappa_below_one)
    g = _as_gram(gram)
    w = _as_weights(task_weights, g.shape[0])
    t_count = g.shape[0]
    basis = np.ones(t_count) if rectify_on == "raw" else w
    gr = g if rectify_on == "raw" else _weighted_gram(g, basis)
    rect = _rectify(gr, rho, zero_tol, max_iter, tol)
    mu = rect.mu * basis  # raw-basis coefficients
    u_star = rect.u_star * basis
    g_joint = w
    g_joint_norm = _qnorm(g, g_joint)
    u_star_norm = rect.norms["u_star"]
    eps_eff = eps * _scale(gr) if eps_mode == "relative" else eps
    u_en = inject(u_star, u_star_norm, g_joint_norm, kappa, eps_eff)
    coef = fuse(u_en, g_joint, kappa, nu)
    degenerate = rect.degenerate
    s = _scale(g)
    if degenerate is None and s > 0 and _cancelled(g, g_joint, zero_tol):
        degenerate = "g_joint_zero"
    if degenerate is None and t_count == 1:
        degenerate = "single_task"
    norms = {"mu": rect.norms["mu"], "g_alpha": rect.norms["g_alpha"], "u_star": u_star_norm, "u_en": _qnorm(g, u_en)}
    denom = u_star_norm + eps_eff
    extras = dict(
        mu=mu, u_star=u_star, u_en=u_en, g_joint=g_joint.copy(), eps_effective=eps_eff,
        inject_factor=kappa * g_joint_norm / denom if denom > 0 else 0.0,
        radius=rect.radius, iterations=rect.iterations, rectify_on=rectify_on,
    )
    return _result("came", coef, w, g, rect.alpha, degenerate, norms, extras)


def _check_came_options(
    rho: float, kappa: float, nu: float, eps: float, eps_mode: str, rectify_on: str, allow_kappa_below_one: bool
) -> None:
    """ValueError naming the argument unless :func:`came_grad`'s options are valid."""
    validate_came_hyperparameters(rho, kappa, nu, eps, allow_kappa_below_one=allow_kappa_below_one)
    if rectify_on not in ("raw", "weighted"):
        raise ValueError(f"rectify_on must be 'raw' or 'weighted', got {rectify_on!r}")
    if eps_mode not in ("relative", "absolute"):
        raise ValueError(f"eps_mode must be 'relative' or 'absolute', got {eps_mode!r}")


def cagrad(
    gram: GramLike,
    task_weights: WeightsLike = None,
    *,
    c: float = 0.5,
    rescale: int = 1,
    zero_tol: float = DEFAULT_ZERO_TOL,
    max_iter: int = 100,
    tol: float = 1e-11,
) -> AggregationResult:
    """CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021).

    On the task-weighted gradients h_i = omega_i g_i with g0 = mean_i h_i:
    d = g0 + c ||g0|| h_alpha*/||h_alpha*|| with alpha* = argmin over the simplex of
    h_alpha^T g0 + c ||g0|| ||h_alpha|| (the same dual as :func:`rectify`, which computes it), then
    ``rescale`` as in the official code: 0 keeps d, 1 divides by 1 + c^2 (the repository's
    default), 2 divides by 1 + c. The result is multiplied by T, as the official
    ``overwrite_grad`` does "to match the sum loss". For two tasks the dual is the closed form of
    :func:`camegrad_mini.optim.minimize_on_segment`.

    Args:
        gram: Raw (T, T) Gram matrix.
        task_weights: omega; None means all ones.
        c: Conflict-aversion radius, >= 0.
        rescale: 0, 1 or 2 (see above).
        zero_tol: Relative tolerance for degenerate norms (:data:`DEFAULT_ZERO_TOL`).
        max_iter: Solver iteration cap (three or more tasks).
        tol: Solver tolerance.

    Returns:
        An :class:`AggregationResult`.

    Explained in: Chapter 4, §4.4 (S1 is CAGrad's direction).

    Examples:
        >>> import numpy as np
        >>> cagrad(np.array([[1.0, -0.5], [-0.5, 1.0]]), c=0.5).coefficients
        array([1.2, 1.2])
    """
    c = _real("c", c)
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    if rescale not in (0, 1, 2):
        raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
    g = _as_gram(gram)
    w = _as_weights(task_weights, g.shape[0])
    t_count = g.shape[0]
    rect = _rectify(_weighted_gram(g, w), c, zero_tol, max_iter, tol)
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    coef = rect.u_star * (t_count / divisor) * w
    extras = {"rescale": rescale, "c": c, "iterations": rect.iterations}
    return _result("cagrad", coef, w, g, rect.alpha, rect.degenerate, extras=extras)


_METHODS = {
    "ls": linear_scalarization,
    "pcgrad": pcgrad,
    "mgda": mgda,
    "cagrad": cagrad,
    "came": came_grad,
}


def aggregate(
    grads: GradsLike, method: str = "came", task_weights: WeightsLike = None, **kwargs: Any
) -> tuple[Direction, AggregationResult]:
    """Convenience: Gram matrix, method and combination in one call, on explicit gradients.

    Args:
        grads: Task gradients in any form :func:`gram_matrix` accepts (e.g. a (T, D) tensor).
        method: ``"ls"``, ``"pcgrad"``, ``"mgda"``, ``"cagrad"`` or ``"came"``.
        task_weights: omega; None means all ones.
        **kwargs: Passed to the method function (for instance ``rho=0.5``).

    Returns:
        ``(direction, result)`` with the direction formed by :func:`combine`.

    Explained in: Chapter 4, §4.8.

    Examples:
        >>> import torch
        >>> direction, result = aggregate(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]), "ls")
        >>> direction, result.method
        (tensor([0., 1.]), 'ls')
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    result = _METHODS[method](gram_matrix(grads), task_weights, **kwargs)
    return combine(grads, result.coefficients), result
