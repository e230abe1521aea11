"""Test problems: two-task problems on the plane with known Pareto sets, and double wells.

Every problem maps points ``x`` of shape ``(..., 2)`` to task losses of shape ``(..., T)`` and
task gradients of shape ``(..., T, 2)``, in NumPy and in closed form, so chapters can evaluate
them on whole grids and the tests can check gradients against finite differences.

Conventions: task ``0`` plays the role of report generation and task ``1`` the clinical
constraint, as in the book's running example.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Problem",
    "QuadraticPair",
    "FonsecaFleming",
    "SharpFlatWells",
    "SharpFlatDoubleWell",
    "rotation",
]

Array = np.ndarray


def rotation(theta: float) -> Array:
    """The 2x2 rotation matrix by ``theta`` radians.

    Explained in: Chapter 2, §2.4 (numerics), §2.6 (Itô's lemma for each task's loss) and §2.7
    (mini-batch noise).
    """
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


Matrix2 = tuple[tuple[float, float], tuple[float, float]]


def _matrix2(A) -> Matrix2:
    """A 2x2 array as nested tuples of Python floats (how the frozen problems store matrices)."""
    A = np.asarray(A, dtype=float)
    return (float(A[0, 0]), float(A[0, 1])), (float(A[1, 0]), float(A[1, 1]))


class Problem:
    """Interface shared by the test problems (duck-typed; subclasses override both methods)."""

    n_tasks: int = 2
    name: str = "problem"

    def losses(self, x: Array) -> Array:  # (..., 2) -> (..., T)
        raise NotImplementedError

    def grads(self, x: Array) -> Array:  # (..., 2) -> (..., T, 2)
        raise NotImplementedError

    def weighted_loss(self, x: Array, weights) -> Array:
        """Linear scalarization ``sum_i w_i L_i(x)``."""
        return self.losses(x) @ np.asarray(weights, dtype=float)

    def weighted_grad(self, x: Array, weights) -> Array:
        """Gradient of the linear scalarization, ``sum_i w_i g_i(x)``."""
        return np.einsum("...ij,i->...j", self.grads(x), np.asarray(weights, dtype=float))


@dataclass(frozen=True)
class QuadraticPair(Problem):
    """Two strictly convex quadratics ``L_i(x) = 1/2 (x - c_i)^T A_i (x - c_i)``.

    For strictly convex tasks the Pareto set is exactly the set of minimizers of the weighted
    sums ``(1 - t) L_0 + t L_1`` for ``t`` in ``[0, 1]``:
    ``x*(t) = ((1 - t) A_0 + t A_1)^{-1} ((1 - t) A_0 c_0 + t A_1 c_1)``.
    With ``A_0 = A_1`` it is the straight segment from ``c_0`` to ``c_1``; unequal curvatures
    bend it, and the weight then moves the minimizer along it at an uneven speed.

    Explained in: Chapter 1, §1.3 (the test problems) and §1.4 (gradients and the cone of common
    descent); Chapter 5, §5.1 (the protocol).
    """

    c0: tuple[float, float] = (-1.0, 0.0)
    c1: tuple[float, float] = (1.0, 0.0)
    A0: Matrix2 = ((1.0, 0.0), (0.0, 1.0))
    A1: Matrix2 = ((1.0, 0.0), (0.0, 1.0))
    name: str = field(default="quadratic pair", compare=False)

    def __post_init__(self):
        for label, A in (("A0", self.A0), ("A1", self.A1)):
            A = np.asarray(A, dtype=float)
            if A.shape != (2, 2) or not np.allclose(A, A.T) or np.linalg.eigvalsh(A).min() <= 0:
                raise ValueError(f"{label} must be a symmetric positive definite 2x2 matrix, got {A.tolist()}")

    @classmethod
    def ill_conditioned(cls, ratio: float = 10.0, angle: float = np.pi / 3) -> "QuadraticPair":
        """Two quadratics whose curvatures differ by ``ratio`` along axes rotated by ``angle``."""
        D = np.diag([ratio, 1.0])
        R = rotation(angle)
        A1 = R @ D @ R.T
        return cls(A0=((1.0, 0.0), (0.0, float(ratio))), A1=_matrix2(A1),
                   name=f"ill-conditioned pair (ratio {ratio:g})")

    @property
    def centers(self) -> Array:
        return np.array([self.c0, self.c1], dtype=float)

    @property
    def hessians(self) -> Array:
        return np.array([self.A0, self.A1], dtype=float)

    def losses(self, x: Array) -> Array:
        d = np.asarray(x, dtype=float)[..., None, :] - self.centers  # (..., T, 2)
        return 0.5 * np.einsum("...ti,tij,...tj->...t", d, self.hessians, d)

    def grads(self, x: Array) -> Array:
        d = np.asarray(x, dtype=float)[..., None, :] - self.centers
        return np.einsum("tij,...tj->...ti", self.hessians, d)

    def ls_minimizer(self, weights) -> Array:
        """The minimizer of ``w_0 L_0 + w_1 L_1`` (weights need not sum to one; both >= 0, not both 0)."""
        w = np.asarray(weights, dtype=float)
        if w.shape != (2,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be two non-negative numbers, not both zero; got {w.tolist()}")
        H = np.einsum("t,tij->ij", w, self.hessians)
        b = np.einsum("t,tij,tj->i", w, self.hessians, self.centers)
        return np.linalg.solve(H, b)

    def pareto_set(self, n: int = 101) -> Array:
        """``n`` points of the Pareto set, ordered from task 0's minimizer to task 1's."""
        return np.array([self.ls_minimizer((1.0 - t, t)) for t in np.linspace(0.0, 1.0, n)])


@dataclass(frozen=True)
class FonsecaFleming(Problem):
    """Fonseca & Fleming (1995) in two dimensions: a problem whose Pareto front is concave.

    ``L_0(x) = 1 - exp(-|x - a|^2)`` and ``L_1(x) = 1 - exp(-|x + a|^2)`` with
    ``a = (1, 1)/sqrt(2)``. The Pareto set is the segment from ``-a`` to ``a``, ``x = s a`` with
    ``s`` in [-1, 1]. The front is concave except near its two ends (inflection points at
    ``s = +-1/sqrt(2)``), so no fixed weighted sum has a minimizer in the middle ``|s| < 1/sqrt(2)``
    (70.7% of the set's length): the global minimizer of a weighted sum lies at or next to one of
    the two ends, and its local minimizers reach at most ``(1 - 1/sqrt(2))/2``, about 0.146 of the
    set's length, from an end. Linear scalarization cannot reach the compromise points in the middle.

    Explained in: Chapter 1, §1.3 (the test problems) and §1.6 (sweeping the scalarization weight);
    Chapter 5, §5.1 (the protocol).
    """

    name: str = field(default="Fonseca-Fleming", compare=False)

    @property
    def a(self) -> Array:
        return np.full(2, 1.0 / np.sqrt(2.0))

    def losses(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        r0 = ((x - self.a) ** 2).sum(-1)
        r1 = ((x + self.a) ** 2).sum(-1)
        return np.stack([1.0 - np.exp(-r0), 1.0 - np.exp(-r1)], axis=-1)

    def grads(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        d0, d1 = x - self.a, x + self.a
        e0 = np.exp(-(d0**2).sum(-1))[..., None]
        e1 = np.exp(-(d1**2).sum(-1))[..., None]
        return np.stack([2.0 * d0 * e0, 2.0 * d1 * e1], axis=-2)

    def pareto_set(self, n: int = 101) -> Array:
        """``n`` points of the Pareto set, from task 0's minimizer ``a`` to task 1's ``-a``."""
        t = np.linspace(0.0, 1.0, n)[:, None]
        return (1.0 - t) * self.a + t * (-self.a)


@dataclass(frozen=True)
class SharpFlatWells(Problem):
    """Two tasks on a shared terrain with a sharp and a flat well, pulled apart by their anchors.

    ``L_i(x) = T(x) + (pull / 2) |x - a_i|^2`` with the terrain
    ``T(x) = -h_s exp(-|x - m_s|^2 / (2 s_s^2)) - h_f exp(-|x - m_f|^2 / (2 s_f^2))``.
    The narrow well (width ``s_s``, curvature about ``h_s / s_s^2``) is the sharp minimum, the
    wide one the flat minimum. The anchors ``a_0 = (0, anchor)`` and ``a_1 = (0, -anchor)`` pull
    the tasks in opposite directions, so their gradients conflict near both wells while linear
    scalarization with weights summing to one keeps both wells as local minima. Chapter 3 starts
    noisy LS in the sharp well and counts how often noise carries it into the flat one.

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape); Chapter 5, §5.4
    (escaping the sharp well).
    """

    sharp_center: tuple[float, float] = (-1.0, 0.0)
    flat_center: tuple[float, float] = (1.0, 0.0)
    sharp_depth: float = 0.6
    flat_depth: float = 1.0
    sharp_width: float = 0.25
    flat_width: float = 0.8
    anchor: float = 1.0
    pull: float = 0.2
    name: str = field(default="sharp/flat wells", compare=False)

    def __post_init__(self):
        for label in ("sharp_depth", "flat_depth", "sharp_width", "flat_width", "pull"):
            v = float(getattr(self, label))
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{label} must be a positive finite number, got {v}")
        if self.sharp_width >= self.flat_width:
            raise ValueError(f"sharp_width ({self.sharp_width}) must be smaller than flat_width ({self.flat_width})")

    @property
    def anchors(self) -> Array:
        return np.array([[0.0, self.anchor], [0.0, -self.anchor]])

    def _wells(self, x: Array):
        """Per well: offset ``x - m``, Gaussian value ``h exp(...)`` and width, for the terrain."""
        out = []
        for m, h, s in ((self.sharp_center, self.sharp_depth, self.sharp_width),
                        (self.flat_center, self.flat_depth, self.flat_width)):
            d = x - np.asarray(m, dtype=float)
            out.append((d, h * np.exp(-(d**2).sum(-1) / (2.0 * s * s)), s))
        return out

    def terrain(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        return -sum(e for _, e, _ in self._wells(x))

    def terrain_grad(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        return sum(d * (e / (s * s))[..., None] for d, e, s in self._wells(x))

    def losses(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        d = x[..., None, :] - self.anchors  # (..., T, 2)
        return self.terrain(x)[..., None] + 0.5 * self.pull * (d**2).sum(-1)

    def grads(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        d = x[..., None, :] - self.anchors
        return self.terrain_grad(x)[..., None, :] + self.pull * d



@dataclass(frozen=True)
class SharpFlatDoubleWell:
    """A one-dimensional, single-task double well with a sharp and a flat minimum (chapter 2).

    ``L(x) = (c/2) x^2 - d_s exp(-(x - m_s)^2 / (2 w_s^2)) - d_f exp(-(x - m_f)^2 / (2 w_f^2))``:
    a narrow Gaussian well (width ``w_s``) is the sharp minimum, a wide one (``w_f``) the flat
    minimum, and the weak confinement ``c`` keeps the loss growing far away so diffusions return.
    The defaults give two minima of almost equal depth and almost equal barriers, with curvatures
    about five times apart: escape times then differ by Kramers' prefactor only, which is the
    point chapter 2 makes about what "sharpness" alone does and does not do.

    ``loss``, ``grad`` and ``hess`` act elementwise on arrays of any shape ``(...)`` (a point is
    a scalar), returning the same shape.

    Explained in: Chapter 2, §2.5 (sharp versus flat minima); Chapter 2b, §A.1 (the Gibbs density).
    """

    confinement: float = 0.05
    sharp_depth: float = 1.0
    sharp_center: float = -1.0
    sharp_width: float = 0.4
    flat_depth: float = 1.1
    flat_center: float = 1.5
    flat_width: float = 1.0
    name: str = field(default="sharp/flat double well", compare=False)

    def __post_init__(self):
        for label in ("confinement", "sharp_depth", "sharp_width", "flat_depth", "flat_width"):
            v = float(getattr(self, label))
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{label} must be a positive finite number, got {v}")
        if self.sharp_width >= self.flat_width:
            raise ValueError(f"sharp_width ({self.sharp_width}) must be smaller than flat_width ({self.flat_width})")
        if self.sharp_center >= self.flat_center:
            raise ValueError("sharp_center must lie left of flat_center (the code orders the critical points)")

    def _terms(self, x: Array):
        for d, m, w in ((self.sharp_depth, self.sharp_center, self.sharp_width),
                        (self.flat_depth, self.flat_center, self.flat_width)):
            u = x - m
            yield u, d * np.exp(-u * u / (2.0 * w * w)), w

    def loss(self, x) -> Array:
        x = np.asarray(x, dtype=float)
        return 0.5 * self.confinement * x * x - sum(e for _, e, _ in self._terms(x))

    def grad(self, x) -> Array:
        x = np.asarray(x, dtype=float)
        return self.confinement * x + sum(u * e / (w * w) for u, e, w in self._terms(x))

    def hess(self, x) -> Array:
        x = np.asarray(x, dtype=float)
        return self.confinement + sum(e / (w * w) * (1.0 - u * u / (w * w)) for u, e, w in self._terms(x))

    def critical_points(self) -> dict[str, float]:
        """``{"sharp": x_s, "saddle": x_b, "flat": x_f}``, found by bracketing sign changes of ``L'``."""
        from scipy.optimize import brentq

        lo = self.sharp_center - 4.0 * self.sharp_width
        hi = self.flat_center + 4.0 * self.flat_width
        xs = np.linspace(lo, hi, 8001)
        g = self.grad(xs)
        idx = np.nonzero(np.sign(g[:-1]) != np.sign(g[1:]))[0]
        roots = [brentq(self.grad, xs[i], xs[i + 1], xtol=1e-13) for i in idx]
        if len(roots) != 3:
            raise ValueError(f"these parameters do not give a double well: "
                             f"{len(roots)} critical points in [{lo}, {hi}]")
        return {"sharp": roots[0], "saddle": roots[1], "flat": roots[2]}

    def barrier(self, well: str) -> float:
        """Height of the saddle above the minimum ``well`` (``"sharp"`` or ``"flat"``)."""
        if well not in ("sharp", "flat"):
            raise ValueError(f"well must be 'sharp' or 'flat', got {well!r}")
        cp = self.critical_points()
        return float(self.loss(cp["saddle"]) - self.loss(cp[well]))

