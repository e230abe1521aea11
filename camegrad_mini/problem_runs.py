r"""A small experiment runner for chapter 5: method x problem x seed -> trajectories -> metrics.

Every run is noisy multi-task descent on a 2-D two-task problem of
:mod:`camegrad_mini.problems`. At each step, for all seeds at once (NumPy, one call per step):

1. the exact task gradients ``g_i(x)`` are evaluated and task noise ``xi_i`` is added (the
   :class:`~camegrad_mini.dilemma.TaskNoise` model of chapter 3), giving the *observed*
   gradients ``\hat g_i = g_i + xi_i``;
2. a **method** turns the observed Gram matrix ``<\hat g_i, \hat g_j>`` and the task weights into
   coefficients ``c`` (one call per seed to the package's own aggregation functions in
   ``camegrad_mini.optim.functional``, so the runner measures exactly the code the optimizer
   wrapper uses), and the direction is ``d = sum_i c_i \hat g_i``;
3. a **base optimizer** (plain :class:`SGD` or :class:`Adam`, vectorized over seeds) turns ``d``
   into a displacement, exactly as ``CAMEGrad`` writes ``d`` into ``.grad`` and steps the
   wrapped optimizer.

The noise is drawn from ``np.random.default_rng(seed)`` in the same order for every method, so
with state-independent ("isotropic") noise all methods see the same noise sequence: comparisons
between methods are *paired* (common random numbers), which ``paired_difference`` exploits: it is
:func:`camegrad_mini.stats.paired_difference` (re-exported here, with
:func:`~camegrad_mini.stats.mean_interval`), a t-based confidence interval for the mean per-seed
difference with ``n_seeds - 1`` degrees of freedom.

Metrics are computed on the **exact** gradients: the Pareto-stationarity gap
``min_{a in [0,1]} |a g_0 + (1 - a) g_1|`` (zero exactly at Pareto-stationary points), the distance
to a known Pareto set and the position along it, the fraction of steps whose displacement
increases some task to first order, and escapes from a sharp well.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dilemma import TaskNoise
from .geometry import pareto_stationarity_gap
from .optim import functional as F
from .problems import Problem
from .stats import TInterval, mean_interval, paired_difference

__all__ = [
    "Method",
    "METHOD_NAMES",
    "make_method",
    "SGD",
    "Adam",
    "Run",
    "simulate",
    "run_methods",
    "stationarity_gap",
    "pareto_position",
    "update_conflict",
    "mean_sd",
    "tail_mean",
    "summarize",
    "mean_sd_text",
    "paired_difference",
    "mean_interval",
    "TInterval",
    "format_table",
    "count_backward_passes",
]

Array = np.ndarray
Coefficients = Callable[[Array, Array], Array]


# ----------------------------------------------------------------------------------------------
# methods: Gram matrix + task weights -> coefficients over the observed task gradients
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A named aggregation rule: ``coefficients(gram, weights)`` returns ``c`` with ``d = sum_i c_i g_i``.

    Attributes:
        label: Name used in tables and legends.
        coefficients: The rule, acting on a (T, T) Gram matrix and the (T,) task weights.
        per_task_gradients: Whether the rule needs the per-task gradients (T backward passes
            per step in a real model) or only their weighted sum (linear scalarization: one
            backward pass of the weighted loss); see :meth:`backward_passes`.
    """

    label: str
    coefficients: Coefficients = field(compare=False)
    per_task_gradients: bool = True

    def backward_passes(self, n_tasks: int) -> int:
        """Backward passes per step with ``n_tasks`` tasks (see the class docstring)."""
        return n_tasks if self.per_task_gradients else 1


def _s1_only(rho: float) -> Coefficients:
    """Stage S1 alone: ``T u*`` (the rectified direction at the sum scale the baselines use)."""

    def coef(gram: Array, weights: Array) -> Array:
        return gram.shape[0] * F.rectify(gram, rho).u_star

    return coef


#: Names accepted by :func:`make_method`. ``"s1"``, ``"s1+s2"``, ``"s2+s3"`` are CAME-Grad's
#: stage ablations (``"s1+s2+s3"`` is ``"came"``).
METHOD_NAMES = ("ls", "pcgrad", "mgda", "cagrad", "came", "s1", "s1+s2", "s2+s3", "s1+s2+s3")

_LABELS = {"ls": "LS", "pcgrad": "PCGrad", "mgda": "MGDA", "cagrad": "CAGrad", "came": "CAME-Grad",
           "s1": "S1 only", "s1+s2": "S1+S2", "s2+s3": "S2+S3 (rho=0)", "s1+s2+s3": "S1+S2+S3"}


def make_method(name: str, label: str | None = None, **kwargs: Any) -> Method:
    """Build a :class:`Method` from the package's aggregation functions.

    - ``"ls"``, ``"pcgrad"``, ``"mgda"``, ``"cagrad"``, ``"came"``: the functions of
      ``camegrad_mini.optim.functional`` with ``kwargs`` (e.g. ``rho=0.5, kappa=1.5, nu=0.2``
      for ``"came"``, ``c=0.5`` for ``"cagrad"``);
    - ``"s1"``: stage S1 only, ``T u*`` from :func:`~camegrad_mini.optim.rectify` on the raw
      gradients (``kwargs``: ``rho``, default 0.5); T times u* puts it at the sum scale of the
      baselines, so it equals CAGrad without rescale on unweighted gradients;
    - ``"s1+s2"``: S1 then S2, i.e. ``came_grad`` with ``nu=0`` (``kwargs``: ``rho``, ``kappa``);
    - ``"s2+s3"``: ``came_grad`` with ``rho=0``: no rectification, the mean direction at the
      joint gradient's (amplified) norm, fused with the joint gradient;
    - ``"s1+s2+s3"``: the full ``came_grad``, a synonym of ``"came"``.

    Args:
        name: One of :data:`METHOD_NAMES`.
        label: Display name (default: a standard one).
        **kwargs: Hyperparameters passed to the underlying function.

    Returns:
        The method.

    Explained in: Chapter 5, §5.1 (the protocol) and every experiment of §5.2 to §5.7.
    """
    if name not in METHOD_NAMES:
        raise ValueError(f"name must be one of {METHOD_NAMES}, got {name!r}")
    label = label or _LABELS[name]
    if name == "s1":
        extra = set(kwargs) - {"rho"}
        if extra:
            raise ValueError(f"method 's1' takes only rho, got {sorted(extra)}")
        return Method(label, _s1_only(float(kwargs.get("rho", 0.5))))
    if name in ("s1+s2", "s2+s3"):
        fixed = {"s1+s2": "nu", "s2+s3": "rho"}[name]
        if fixed in kwargs:
            raise ValueError(f"method {name!r} fixes {fixed}=0; do not pass it")
        kwargs = {**kwargs, fixed: 0.0}
        name = "came"
    if name == "s1+s2+s3":
        name = "came"
    if name == "ls":
        if kwargs:
            raise ValueError(f"method 'ls' takes no hyperparameters, got {sorted(kwargs)}")
        # F.linear_scalarization's coefficients are the task weights; skip its diagnostics.
        return Method(label, lambda gram, weights: np.array(weights, dtype=float), per_task_gradients=False)
    fn = {"ls": F.linear_scalarization, "pcgrad": F.pcgrad, "mgda": F.mgda, "cagrad": F.cagrad,
          "came": F.came_grad}[name]
    fn(np.eye(2), np.ones(2), **kwargs)  # validate the hyperparameters now, not mid-run

    def coef(gram: Array, weights: Array) -> Array:
        return fn(gram, weights, **kwargs).coefficients

    return Method(label, coef, per_task_gradients=name != "ls")


# ----------------------------------------------------------------------------------------------
# base optimizers, vectorized over seeds
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SGD:
    """Plain gradient descent: displacement ``-lr * d``. A global scale of ``d`` (CAME-Grad's
    kappa) is therefore a learning-rate multiplier.

    Explained in: Chapter 5, §5.2 to §5.7 (the experiments).
    """

    lr: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")

    def start(self, shape: tuple[int, ...]) -> Callable[[Array], Array]:
        """A stateful stepper for directions of ``shape``: call it with ``d``, get the displacement."""
        return lambda d: -self.lr * d


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma and Ba, 2015) with bias correction, as ``torch.optim.Adam`` computes it.

    ``m <- b1 m + (1 - b1) d``, ``v <- b2 v + (1 - b2) d^2``, displacement
    ``-lr mhat / (sqrt(vhat) + eps)``. Multiplying every ``d`` by a constant ``k`` multiplies
    ``m`` by ``k`` and ``sqrt(v)`` by ``|k|``: the displacement changes only through ``eps``,
    which is why a constant kappa is almost a no-op under Adam.

    Explained in: Chapter 5, §5.2 (the main comparison) and §5.7 (sensitivity under SGD and Adam).
    """

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    def start(self, shape: tuple[int, ...]) -> Callable[[Array], Array]:
        m = np.zeros(shape)
        v = np.zeros(shape)
        t = 0
        b1, b2 = self.betas

        def step(d: Array) -> Array:
            nonlocal t
            t += 1
            m[...] = b1 * m + (1 - b1) * d
            v[...] = b2 * v + (1 - b2) * d * d
            mhat = m / (1 - b1**t)
            vhat = v / (1 - b2**t)
            return -self.lr * mhat / (np.sqrt(vhat) + self.eps)

        return step


Optimizer = SGD | Adam


# ----------------------------------------------------------------------------------------------
# the simulation
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """Record of :func:`simulate` for ``S`` seeds and ``K`` steps.

    Attributes:
        label: The method's label.
        xs: Iterates, ``(S, K + 1, 2)``.
        grads: Exact task gradients at ``xs[:, :-1]``, ``(S, K, T, 2)``.
        observed: The noisy task gradients the method saw, ``(S, K, T, 2)``.
        directions: The aggregated directions ``d`` handed to the base optimizer, ``(S, K, 2)``.
        final_grads: Exact task gradients at the last iterate, ``(S, T, 2)``.
        weights: Task weights ``(T,)``.
        diverged: ``(S,)``, True where an iterate became non-finite (the run is then frozen).
    """

    label: str
    xs: Array
    grads: Array
    observed: Array
    directions: Array
    final_grads: Array
    weights: Array
    diverged: Array

    @property
    def final(self) -> Array:
        """Last iterates, ``(S, 2)``."""
        return self.xs[:, -1]

    @property
    def displacements(self) -> Array:
        """``x_{k+1} - x_k``, ``(S, K, 2)``: what the base optimizer actually did."""
        return np.diff(self.xs, axis=1)


def simulate(problem: Problem, method: Method, optimizer: Optimizer, noise: TaskNoise, *, x0,
             steps: int, n_seeds: int, seed: int = 0, weights: Sequence[float] = (1.0, 1.0)) -> Run:
    """Run ``method`` + ``optimizer`` on ``problem`` with task noise, for ``n_seeds`` seeds at once.

    Args:
        problem: A two-task problem (``grads(x)`` of shape ``(..., 2, 2)``).
        method: From :func:`make_method`.
        optimizer: :class:`SGD` or :class:`Adam`.
        noise: The task-noise model (chapter 3's :class:`~camegrad_mini.dilemma.TaskNoise`).
        x0: Start, one point ``(2,)`` for every seed or one per seed ``(n_seeds, 2)``.
        steps: Number of steps K.
        n_seeds: Number of independent runs S.
        seed: Seed of the noise generator (the same seed gives every method the same draws).
        weights: Task weights omega.

    Returns:
        A :class:`Run`.

    Explained in: Chapter 5, §5.2 to §5.5 and §5.7 (the experiments).
    """
    if problem.n_tasks != 2:
        raise ValueError(f"simulate models two-task problems, got n_tasks={problem.n_tasks}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if int(n_seeds) != n_seeds or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive integer, got {n_seeds}")
    w = np.asarray(weights, dtype=float)
    if w.shape != (2,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be two finite non-negative numbers, got {list(np.ravel(w))}")
    steps, n_seeds = int(steps), int(n_seeds)
    if np.shape(x0) not in ((2,), (n_seeds, 2)):
        raise ValueError(f"x0 must have shape (2,) or ({n_seeds}, 2), got {np.shape(x0)}")
    x = np.array(np.broadcast_to(np.asarray(x0, dtype=float), (n_seeds, 2)))
    rng = np.random.default_rng(seed)
    xs = np.empty((n_seeds, steps + 1, 2))
    grads = np.empty((n_seeds, steps, 2, 2))
    observed = np.empty_like(grads)
    directions = np.empty((n_seeds, steps, 2))
    diverged = np.zeros(n_seeds, dtype=bool)
    xs[:, 0] = x
    stepper = optimizer.start((n_seeds, 2))
    with np.errstate(over="ignore", invalid="ignore"):  # a blow-up is recorded in `diverged`, not warned
        for k in range(steps):
            g = problem.grads(x)
            gn = g + noise.sample(problem, x, rng)
            grams = np.einsum("sid,sjd->sij", gn, gn)
            coef = np.zeros((n_seeds, 2))
            for s in range(n_seeds):
                if not diverged[s] and np.isfinite(grams[s]).all():
                    coef[s] = method.coefficients(grams[s], w)
            d = np.einsum("si,sid->sd", coef, gn)
            x = x + stepper(d)
            diverged |= ~np.isfinite(x).all(axis=1) | ~np.isfinite(grams).all(axis=(1, 2))
            x[diverged] = xs[diverged, k]  # freeze a blown-up run at its last finite point
            grads[:, k], observed[:, k], directions[:, k] = g, gn, d
            xs[:, k + 1] = x
        final_grads = problem.grads(x)
    return Run(method.label, xs, grads, observed, directions, final_grads, w, diverged)


def run_methods(problem: Problem, methods: Sequence[Method], optimizer: Optimizer, noise: TaskNoise,
                **kwargs: Any) -> dict[str, Run]:
    """:func:`simulate` for each method with the same noise seed (paired runs), keyed by label.

    Explained in: Chapter 5, §5.2 (the main comparison), §5.3, §5.4 and §5.6.
    """
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"method labels must be distinct, got {labels}")
    return {m.label: simulate(problem, m, optimizer, noise, **kwargs) for m in methods}


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def stationarity_gap(grads: Array) -> Array:
    """Pareto-stationarity gap of two task gradients ``(..., 2, 2)`` -> ``(...)``.

    ``min_{a in [0, 1]} |a g_0 + (1 - a) g_1|``: the norm of MGDA's min-norm point, zero exactly
    when some convex combination of the gradients vanishes (Pareto stationarity). It does not
    depend on the task weights' values, only on the directions and norms of ``g_i``.

    Explained in: Chapter 5, §5.2 (the main comparison).
    """
    grads = np.asarray(grads, dtype=float)
    if grads.shape[-2:] != (2, 2):
        raise ValueError(f"grads must have shape (..., 2, 2), got {grads.shape}")
    return pareto_stationarity_gap(grads[..., 0, :], grads[..., 1, :])


def pareto_position(points: Array, pareto_set: Array) -> tuple[Array, Array]:
    """Distance to a sampled Pareto set and the position of the nearest point along it.

    Args:
        points: ``(..., 2)``.
        pareto_set: Polyline ``(m, 2)``, ordered from task 0's minimizer to task 1's (as the
            problems' ``pareto_set()`` return it).

    Returns:
        ``(distance, position)``, both ``(...)``; ``position`` is the normalised arc length in
        ``[0, 1]`` of the nearest polyline point (0 = task 0's end, 1 = task 1's end).
    """
    p = np.asarray(points, dtype=float)
    v = np.asarray(pareto_set, dtype=float)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] != 2 or p.shape[-1] != 2:
        raise ValueError(f"pareto_set must be (m >= 2, 2) and points (..., 2), got {v.shape} and {p.shape}")
    flat = p.reshape(-1, 2)
    seg = np.diff(v, axis=0)
    seg_len2 = (seg**2).sum(-1)
    cum = np.concatenate([[0.0], np.cumsum(np.sqrt(seg_len2))])
    if cum[-1] <= 0:
        raise ValueError("pareto_set has zero length")
    rel = flat[:, None, :] - v[None, :-1, :]
    t = np.clip((rel * seg).sum(-1) / np.where(seg_len2 > 0, seg_len2, 1.0), 0.0, 1.0)
    dist = np.linalg.norm(rel - t[..., None] * seg, axis=-1)
    j = np.argmin(dist, axis=1)
    rows = np.arange(flat.shape[0])
    pos = (cum[j] + t[rows, j] * np.sqrt(seg_len2[j])) / cum[-1]
    return dist[rows, j].reshape(p.shape[:-1]), pos.reshape(p.shape[:-1])


def update_conflict(displacements: Array, grads: Array) -> Array:
    """True where a step increases some task to first order: ``<x_{k+1} - x_k, g_i> > 0`` for some i.

    With the update direction ``d = -(x_{k+1} - x_k)`` this is ``<d, g_i> < 0``. Using the
    displacement (not the aggregated direction) makes the test valid under Adam as well.

    Args:
        displacements: ``(..., 2)``.
        grads: Task gradients at the start of each step, ``(..., T, 2)``.

    Returns:
        Boolean array ``(...)``.
    """
    dots = np.einsum("...d,...td->...t", np.asarray(displacements, float), np.asarray(grads, float))
    return (dots > 0).any(axis=-1)


def mean_sd(values: Array, axis: int = 0) -> tuple[Array, Array]:
    """Mean and sample standard deviation (ddof=1) over seeds (``axis``).

    The standard deviation describes the spread between seeds, not the uncertainty of the mean;
    to compare two methods use :func:`~camegrad_mini.stats.paired_difference`.
    """
    values = np.asarray(values, dtype=float)
    if values.shape[axis] < 2:
        raise ValueError(f"need at least two seeds along axis {axis}, got {values.shape[axis]}")
    return values.mean(axis=axis), values.std(axis=axis, ddof=1)


def tail_mean(values: Array, fraction: float = 0.25) -> Array:
    """Per-seed mean over the last ``fraction`` of the steps of ``values`` ``(S, K)`` -> ``(S,)``.

    Under persistent noise the iterates never settle; averaging the tail of the run measures where
    a method *hovers*, with far less seed noise than the single last step.

    Explained in: Chapter 5, Exercises.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (seeds, steps), got {values.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    start = values.shape[1] - max(1, int(round(fraction * values.shape[1])))
    return values[:, start:].mean(axis=1)


def summarize(run: Run, pareto_set: Array | None = None, tail: float = 0.25) -> dict[str, Array]:
    """Per-seed metrics of a run, each an ``(S,)`` array.

    - ``"gap"``: Pareto-stationarity gap (exact gradients) averaged over the last ``tail`` of steps;
    - ``"final_gap"``: the gap at the last iterate;
    - ``"conflict_exact"``: fraction of steps that increase some task to first order (exact
      gradients, :func:`update_conflict`);
    - ``"conflict_observed"``: the same against the noisy gradients the method saw;
    - with ``pareto_set``: ``"distance"`` (tail mean of the distance to it) and ``"position"``
      (tail mean of the position along it, 0 = task 0's end, 1 = task 1's end).

    Explained in: Chapter 5, §5.2 (the main comparison), §5.3 and §5.5 to §5.7.
    """
    out = {
        "gap": tail_mean(stationarity_gap(run.grads), tail),
        "final_gap": stationarity_gap(run.final_grads),
        "conflict_exact": update_conflict(run.displacements, run.grads).mean(axis=1),
        "conflict_observed": update_conflict(run.displacements, run.observed).mean(axis=1),
    }
    if pareto_set is not None:
        dist, pos = pareto_position(run.xs[:, 1:], pareto_set)
        out["distance"] = tail_mean(dist, tail)
        out["position"] = tail_mean(pos, tail)
    return out


def mean_sd_text(values: Array, digits: int = 3) -> str:
    """``"mean ± sd"`` over seeds (sample standard deviation), rounded to ``digits`` decimals.

    Explained in: Chapter 5, §5.2 (the main comparison), §5.6 and §5.7.
    """
    m, s = mean_sd(values)
    return f"{float(m):.{digits}f} ± {float(s):.{digits}f}"


def format_table(rows: Mapping[str, Mapping[str, str | float]], digits: int = 3, width: int = 14) -> str:
    """A fixed-width text table: one row per key of ``rows``, columns from the first row's keys.

    Floats are rounded to ``digits`` decimals, strings printed as given (e.g. ``"0.12 ± 0.03"``).

    Explained in: Chapter 5, §5.2 (the main comparison), §5.6 and §5.7.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    cols = list(next(iter(rows.values())).keys())
    first = max(len(r) for r in rows) + 2

    def cell(v: str | float) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["".ljust(first) + "".join(c.rjust(width) for c in cols)]
    for name, row in rows.items():
        lines.append(name.ljust(first) + "".join(cell(row[c]).rjust(width) for c in cols))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# a device-independent cost invariant
# ----------------------------------------------------------------------------------------------
def count_backward_passes(aggregator: str, *, two_heads: bool = False, kappa: float = 1.5) -> dict[str, int]:
    """How many backward passes one optimizer step sends through each parameter block.

    A tiny torch model with a shared layer and two task heads; a tensor hook on each parameter
    counts how often a gradient for it is computed during one step. ``aggregator="ls-backward"``
    is linear scalarization as a trainer writes it (one ``backward()`` of the weighted loss);
    any name accepted by :class:`~camegrad_mini.optim.CAMEGrad` (``"ls"``, ``"came"``, ...) goes
    through the wrapper, which computes one gradient per task. With ``two_heads=False`` both
    tasks read the same head, so every parameter is shared.

    Returns:
        ``{"shared": n, "head 0": n, "head 1": n}`` (``"head"`` when the head is shared).

    Explained in: Chapter 5, §5.8 (the cost per step).
    """
    import torch

    from .optim import CAMEGrad

    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 8)
    heads = [torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)] if two_heads else [torch.nn.Linear(8, 1)] * 2
    blocks = {"shared": shared}
    if two_heads:
        blocks.update({"head 0": heads[0], "head 1": heads[1]})
    else:
        blocks["head"] = heads[0]
    counts = {name: 0 for name in blocks}

    def hook(name: str) -> Callable[[Any], None]:
        def fn(_grad: Any) -> None:
            counts[name] += 1

        return fn

    for name, block in blocks.items():
        block.weight.register_hook(hook(name))  # one hook per block: counts passes, not tensors
    params = [p for b in blocks.values() for p in b.parameters()]
    base = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(16, 4)
    z = torch.tanh(shared(x))
    losses = [(heads[0](z) - 1.0).pow(2).mean(), (heads[1](z) + 1.0).pow(2).mean()]
    if aggregator == "ls-backward":
        base.zero_grad()
        (1.0 * losses[0] + 4.0 * losses[1]).backward()
        base.step()
    else:
        CAMEGrad(base, kappa=kappa, aggregator=aggregator).step(losses, task_weights=[1.0, 4.0])
    return counts
