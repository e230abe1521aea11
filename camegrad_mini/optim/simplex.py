"""Small float64 solvers over the probability simplex, driven by a Gram matrix only.

Every dual problem in this package has the form

.. math::

    \\min_{\\alpha \\in \\Delta_T} \\; f(\\alpha) = \\alpha^\\top b + r \\sqrt{\\alpha^\\top G \\alpha},

where :math:`G` is the T x T Gram matrix of the task gradients, :math:`b = G m` for some fixed
coefficient vector :math:`m` and :math:`r \\ge 0`:

- CAGrad / CAME-Grad stage S1 (method note, step 2): :math:`m` = the mean coefficients
  :math:`(1/T, \\dots, 1/T)` and :math:`r = \\rho \\lVert \\mu \\rVert`;
- MGDA (min-norm point of the convex hull): :math:`b = 0`, :math:`r = 1`.

Along any segment of the simplex the objective is "linear + r * sqrt(quadratic)", whose minimiser
has a closed form (:func:`minimize_on_segment`). Two tasks therefore need no iterations at all;
for three or more tasks :func:`solve_simplex_dual` is an active-set method: pairwise Frank-Wolfe
steps (move mass from the worst to the best vertex, with that exact line search) choose the
support, damped Newton steps solve the problem on that face. Everything is plain numpy in
float64: T is small, so this needs no extra dependency (scipy serves only as a test oracle).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._types import FloatArray

__all__ = ["SimplexSolution", "minimize_on_segment", "solve_simplex_dual", "min_norm_weights"]


@dataclass(frozen=True)
class SimplexSolution:
    """Result of :func:`solve_simplex_dual`.

    Attributes:
        alpha: The minimiser on the simplex, shape (T,), entries >= 0 summing to 1.
        value: The objective value at ``alpha`` (in the units of the Gram matrix given).
        iterations: Number of pairwise Frank-Wolfe steps taken (0 for the closed forms).
        converged: Whether the duality-gap criterion was met (always True for T <= 2).
    """

    alpha: FloatArray
    value: float
    iterations: int
    converged: bool


def minimize_on_segment(
    beta: float,
    a: float,
    b: float,
    c: float,
    r: float,
    lo: float = 0.0,
    hi: float = 1.0,
    det: float | None = None,
) -> float | None:
    """Exact minimiser of ``F(t) = beta*t + r*sqrt(a*t**2 + 2*b*t + c)`` on ``[lo, hi]``.

    The quadratic under the root is a squared norm ``||x + t*d||**2`` (``a = ||d||**2``,
    ``b = <x, d>``, ``c = ||x||**2``), so ``F`` is convex. Writing ``y = a*t + b`` and
    ``det = a*c - b**2 >= 0`` (Cauchy-Schwarz), the stationarity condition
    ``beta + r*y/sqrt(q) = 0`` becomes ``y**2 * (r**2 * a - beta**2) = beta**2 * det`` with
    ``sign(y) = -sign(beta)``; when ``r**2 * a <= beta**2`` the derivative never changes sign and
    the minimiser is an end point. Convexity makes clipping to ``[lo, hi]`` exact.

    Args:
        beta: Slope of the linear part.
        a: Leading coefficient of the quadratic (squared length of the segment direction).
        b: Half the linear coefficient of the quadratic.
        c: Constant term of the quadratic.
        r: Non-negative weight of the square-root term.
        lo: Left end of the interval.
        hi: Right end of the interval.
        det: ``a*c - b**2`` if the caller can compute it more accurately (for two tasks it is the
            Gram determinant); computed here otherwise.

    Returns:
        The minimising ``t``, or None when ``F`` is constant on the interval (every point is a
        minimiser and the caller picks one).

    Explained in: Chapter 4, §4.3.

    Examples:
        >>> minimize_on_segment(beta=0.0, a=2.0, b=-1.0, c=1.0, r=1.0)
        0.5
    """
    if det is None:
        det = a * c - b * b
    det = max(det, 0.0)
    if a <= 0.0 or r <= 0.0:
        # The root term is constant along the segment (a == 0 forces b == 0): F is linear.
        if beta > 0.0:
            return lo
        if beta < 0.0:
            return hi
        return None
    disc = r * r * a - beta * beta
    if disc <= 0.0:
        return lo if beta > 0.0 else hi
    y = -math.copysign(abs(beta) * math.sqrt(det / disc), beta) if beta != 0.0 else 0.0
    t = (y - b) / a
    return min(max(t, lo), hi)


def _derivatives(
    gram: FloatArray, b: FloatArray, r: float, alpha: FloatArray, squared: bool
) -> tuple[float, FloatArray, FloatArray | None, float]:
    """Value, gradient, Hessian (None where undefined) and ||g_alpha|| of the dual objective."""
    g_alpha = gram @ alpha
    q = max(float(alpha @ g_alpha), 0.0)
    if squared:
        return float(alpha @ b) + r * q, b + 2.0 * r * g_alpha, 2.0 * r * gram, math.sqrt(q)
    norm = math.sqrt(q)
    if norm <= 1e-150:
        return float(alpha @ b), b.copy(), None, norm
    grad = b + (r / norm) * g_alpha
    hess = (r / norm) * (gram - np.outer(g_alpha, g_alpha) / q)
    return float(alpha @ b) + r * norm, grad, hess, norm


def _value(gram: FloatArray, b: FloatArray, r: float, alpha: FloatArray, squared: bool) -> float:
    q = max(float(alpha @ gram @ alpha), 0.0)
    return float(alpha @ b) + r * (q if squared else math.sqrt(q))


def _pair_step(
    gram: FloatArray, b: FloatArray, r: float, alpha: FloatArray, squared: bool, tol: float
) -> tuple[float, int, int]:
    """Pairwise Frank-Wolfe: returns (gap, s, v); moving mass from v to s decreases f when gap > tol."""
    _, grad, _, norm = _derivatives(gram, b, r, alpha, squared)
    support = alpha > 0.0
    if squared or norm > 1e-150:
        s = int(np.argmin(grad))
        v = int(np.flatnonzero(support)[np.argmax(grad[support])])
        return float(grad[v] - grad[s]), s, v
    # g_alpha = 0: f is not differentiable here. The one-sided derivative along e_s - e_v is
    # (b_s - b_v) + r ||g_s - g_v||; take the most negative pair.
    diag = np.diag(gram)
    pair_norm = np.sqrt(np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0))
    dd = (b[:, None] - b[None, :]) + r * pair_norm
    dd[:, ~support] = np.inf
    s_idx, v_idx = np.unravel_index(int(np.argmin(dd)), dd.shape)
    return -float(dd[s_idx, v_idx]), int(s_idx), int(v_idx)


def _line_search_pair(
    gram: FloatArray, b: FloatArray, r: float, alpha: FloatArray, squared: bool, s: int, v: int
) -> float | None:
    """Exact minimiser of f(alpha + t (e_s - e_v)) for t in [0, alpha_v]."""
    g_alpha = gram @ alpha
    a_coef = float(gram[s, s] + gram[v, v] - 2.0 * gram[s, v])
    b_coef = float(g_alpha[s] - g_alpha[v])
    beta = float(b[s] - b[v])
    hi = float(alpha[v])
    if squared:
        # beta t + r (a t^2 + 2 b t + c): a parabola
        if a_coef <= 0.0:
            slope = beta + 2.0 * r * b_coef
            return hi if slope < 0 else (None if slope == 0 else 0.0)
        return min(max(-(beta + 2.0 * r * b_coef) / (2.0 * r * a_coef), 0.0), hi)
    q = max(float(alpha @ g_alpha), 0.0)
    return minimize_on_segment(beta=beta, a=a_coef, b=b_coef, c=q, r=r, lo=0.0, hi=hi)


@functools.lru_cache(maxsize=64)
def _sum_zero_basis(k: int) -> FloatArray:
    """k x (k-1) orthonormal basis of the sum-zero vectors (Helmert's), built without LAPACK.

    Column j (0-based) is (1, ..., 1, -(j+1), 0, ...) / sqrt((j+1)(j+2)) with j+1 ones. The Newton
    step, its pseudo-inverse truncation and the fallback direction depend only on z @ z.T, the
    projector onto the face's tangent space, so any orthonormal basis gives the same steps.
    """
    z = np.zeros((k, k - 1))
    for j in range(k - 1):
        z[: j + 1, j] = 1.0
        z[j + 1, j] = -(j + 1.0)
        z[:, j] /= math.sqrt((j + 1.0) * (j + 2.0))
    z.setflags(write=False)
    return z


def _psd_solve(h: FloatArray, g: FloatArray) -> FloatArray:
    """``pinv(h, rcond=1e-12, hermitian=True) @ g`` for a symmetric PSD ``h``, via Cholesky
    when ``h`` is comfortably non-singular.

    An eigendecomposition costs little arithmetic for T <= 32, but numpy's OpenBLAS threads it:
    on a busy machine one 31 x 31 ``eigh`` took 9-20 ms instead of 0.4 ms single-threaded, and
    the active-set solver takes up to ~20 Newton steps. Cholesky and triangular solves of this
    size run unthreaded. Its pivots bound the spectrum only loosely, so a pivot ratio below
    1e-8 (far above the pseudo-inverse's 1e-12 cut) or a failed factorisation falls back to
    the pseudo-inverse, which truncates the flat directions.
    """
    try:
        low = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        low = None
    if low is not None:
        piv = np.diag(low) ** 2
        if piv.size and piv.min() > 1e-8 * piv.max():
            return np.linalg.solve(low.T, np.linalg.solve(low, g))
    return np.linalg.pinv(h, rcond=1e-12, hermitian=True) @ g


def _newton_on_face(
    gram: FloatArray, b: FloatArray, r: float, alpha: FloatArray, squared: bool, max_iter: int = 50
) -> FloatArray:
    """Damped Newton steps inside the face {alpha_i = 0 for i outside the support}.

    The step is taken in an orthonormal basis of the face's tangent space (sum-zero vectors);
    a singular reduced Hessian (more tasks than gradient dimensions: the objective is flat along
    those directions, since b = G m) is handled with a pseudo-inverse. A ratio test keeps alpha
    on the simplex, dropping a coordinate that reaches 0; Armijo backtracking guarantees descent.
    """
    alpha = alpha.copy()
    for _ in range(max_iter):
        support = np.flatnonzero(alpha > 0.0)
        k = support.size
        if k < 2:
            break
        f, grad, hess, _ = _derivatives(gram, b, r, alpha, squared)
        if hess is None:
            break
        z = _sum_zero_basis(k)
        g_red = z.T @ grad[support]
        if float(np.linalg.norm(g_red)) <= 1e-15 * (1.0 + float(np.abs(grad).max())):
            break
        h_red = z.T @ hess[np.ix_(support, support)] @ z
        step = -_psd_solve(h_red, g_red)
        direction = np.zeros_like(alpha)
        direction[support] = z @ step
        slope = float(grad @ direction)
        if not slope < 0.0:
            direction[support] = -(z @ g_red)
            slope = float(grad @ direction)
            if not slope < 0.0:
                break
        neg = direction < 0.0
        t_max = float(np.min(alpha[neg] / -direction[neg])) if np.any(neg) else np.inf
        t = min(1.0, t_max)
        while t > 1e-16 and _value(gram, b, r, alpha + t * direction, squared) > f + 1e-4 * t * slope:
            t *= 0.5
        if t <= 1e-16:
            break
        new = alpha + t * direction
        if t == t_max:  # a coordinate reached the face boundary
            new[int(np.argmin(np.where(neg, alpha / np.where(neg, -direction, 1.0), np.inf)))] = 0.0
        new[new < 1e-15] = 0.0
        alpha = new / new.sum()
        if t < 1.0 and t != t_max and abs(t * slope) <= 1e-18:
            break
    return alpha


def _solve_small(gram: FloatArray, b: FloatArray, r: float, squared: bool) -> SimplexSolution:
    """:func:`solve_simplex_dual` for one or two tasks: no iterations (closed forms)."""
    if b.shape[0] == 1:
        alpha = np.ones(1)
        return SimplexSolution(alpha, _value(gram, b, r, alpha, squared), 0, True)
    g00, g01, g11 = float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1])
    if squared:  # from vertex e_1 towards e_0
        t = _line_search_pair(gram, b, r, np.array([0.0, 1.0]), squared, 0, 1)
    else:  # alpha = (t, 1 - t): g_alpha = g_1 + t (g_0 - g_1); det(G) avoids a cancellation
        t = minimize_on_segment(
            beta=float(b[0] - b[1]), a=g00 + g11 - 2.0 * g01, b=g01 - g11, c=g11, r=r,
            det=g00 * g11 - g01 * g01,
        )
    t = 0.5 if t is None else t
    alpha = np.array([t, 1.0 - t])
    return SimplexSolution(alpha, _value(gram, b, r, alpha, squared), 0, True)


def _active_set(
    gram: FloatArray, b: FloatArray, r: float, squared: bool, max_iter: int, tol: float
) -> SimplexSolution:
    """:func:`solve_simplex_dual` for three or more tasks: Newton on a face, then one pairwise
    Frank-Wolfe step that changes the face, until the pairwise gap is below ``tol``."""
    t_count = b.shape[0]
    alpha = np.full(t_count, 1.0 / t_count)
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        alpha = _newton_on_face(gram, b, r, alpha, squared)
        gap, s, v = _pair_step(gram, b, r, alpha, squared, tol)
        if gap <= tol or s == v:
            converged = True
            break
        step = _line_search_pair(gram, b, r, alpha, squared, s, v)
        if step is None or step <= 0.0:
            converged = True  # no descent along the best pair: numerically optimal
            break
        alpha[s] += step
        alpha[v] -= step
        if alpha[v] <= 1e-15:
            alpha[v] = 0.0
        alpha /= alpha.sum()
    return SimplexSolution(alpha, _value(gram, b, r, alpha, squared), iterations, converged)


def solve_simplex_dual(
    gram: FloatArray,
    b: FloatArray,
    r: float,
    *,
    squared: bool = False,
    max_iter: int = 100,
    tol: float = 1e-11,
) -> SimplexSolution:
    """Minimise ``alpha @ b + r * sqrt(alpha @ gram @ alpha)`` over the probability simplex.

    This is the dual of CAME-Grad's stage S1 / CAGrad (method note, step 2); with
    ``squared=True`` the square root is dropped (``alpha @ b + r * alpha @ gram @ alpha``), which
    with ``b = 0`` is MGDA's min-norm problem. One task: ``alpha = (1,)``. Two tasks: the closed
    form of :func:`minimize_on_segment` with ``alpha = (t, 1 - t)`` (a tie, i.e. identical
    gradients, returns ``(1/2, 1/2)`` so that the answer is permutation invariant). Three or more
    tasks: an active-set method. A pairwise Frank-Wolfe step (move mass from the support vertex
    with the largest partial derivative to the vertex with the smallest, exact line search)
    enlarges or shrinks the support; damped Newton steps then solve the problem on that face. It
    stops when the pairwise gap (the largest first-order decrease along any e_s - e_v) is below
    ``tol`` (at a point with ``G alpha = 0`` the one-sided directional derivatives replace the
    undefined gradient).

    The caller should pass a Gram matrix normalised to unit scale (``tol`` is absolute); the
    minimiser is invariant to scaling ``gram`` and ``b`` by ``s**2`` and ``r`` by ``s``.

    Args:
        gram: Symmetric positive semi-definite (T, T) float64 matrix.
        b: Linear coefficients, shape (T,).
        r: Non-negative weight of the norm term.
        squared: Use the squared norm (a quadratic program) instead of the norm.
        max_iter: Cap on outer (Frank-Wolfe + Newton) rounds for T >= 3.
        tol: Stopping tolerance on the pairwise gap.

    Returns:
        A :class:`SimplexSolution`.

    Explained in: Chapter 4, §4.2 (the dual) and §4.3 (the two-task closed form).

    Examples:
        >>> import numpy as np
        >>> solve_simplex_dual(np.diag([1.0, 4.0]), np.zeros(2), 1.0, squared=True).alpha
        array([0.8, 0.2])
    """
    gram = np.asarray(gram, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if b.shape[0] <= 2:
        return _solve_small(gram, b, r, squared)
    return _active_set(gram, b, r, squared, max_iter, tol)


def min_norm_weights(gram: FloatArray, *, max_iter: int = 100, tol: float = 1e-11) -> FloatArray:
    """Weights of the min-norm point of the convex hull of the task gradients (MGDA).

    Solves ``min over the simplex of alpha @ gram @ alpha`` (Sener and Koltun, 2018) with
    :func:`solve_simplex_dual` (``b = 0``, ``r = 1``, ``squared=True``). For two tasks this is the classical closed form
    ``t = clip((G11 - G01) / (G00 + G11 - 2 G01), 0, 1)``.

    Args:
        gram: Symmetric positive semi-definite (T, T) matrix, ideally normalised to unit scale.
        max_iter: Iteration cap for T >= 3.
        tol: Stopping tolerance.

    Returns:
        ``alpha``, shape (T,).

    Explained in: Chapter 4, §4.8.

    Examples:
        >>> import numpy as np
        >>> min_norm_weights(np.diag([1.0, 4.0]))
        array([0.8, 0.2])
    """
    gram = np.asarray(gram, dtype=np.float64)
    zeros = np.zeros(gram.shape[0])
    return solve_simplex_dual(gram, zeros, 1.0, squared=True, max_iter=max_iter, tol=tol).alpha
