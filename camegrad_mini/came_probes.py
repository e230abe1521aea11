"""Small experiments on CAME-Grad's three stages, for chapter 4 ("CAME-Grad, stage by stage").

The aggregation math lives in :mod:`camegrad_mini.optim`; this module only *uses* it to answer
the chapter's questions:

* :func:`method_directions` and :func:`direction_table`: the directions of LS, PCGrad, MGDA,
  CAGrad and CAME-Grad's stages (u*, u_en, g_final) for explicit task gradients, and their inner
  products with each task gradient (the table and the vector picture);
* :func:`sample_conflicting_pairs` and :func:`fusion_conflict_fraction`: how often the fused
  update g_final = (1 - nu) u_en + nu kappa g_joint (stage S3) has a negative inner product with
  some task gradient, as a function of nu and rho (the paper's "nu > 0.3 brings conflicts back");
* :func:`kappa_runs`: the same small two-task network trained with the same seed under
  ``CAMEGrad`` for several kappa, with SGD or AdamW underneath, to show that kappa is a global
  scale (a learning-rate multiplier under SGD, nearly a no-op under Adam/AdamW).
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from .optim import cagrad, came_grad, combine, gram_matrix, linear_scalarization, mgda, pcgrad
from .optim.wrapper import CAMEGrad

__all__ = [
    "METHOD_NAMES",
    "polar_pair",
    "method_directions",
    "direction_table",
    "sample_conflicting_pairs",
    "fusion_conflict_fraction",
    "kappa_runs",
]

#: The directions :func:`method_directions` returns, in drawing/table order.
METHOD_NAMES = ("LS", "PCGrad", "MGDA", "CAGrad", "u*", "u_en", "g_final")


def _check_grads(grads) -> np.ndarray:
    G = np.asarray(grads, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] < 1 or not np.isfinite(G).all():
        raise ValueError(f"grads must be a finite (T, D) array, got shape {G.shape}")
    return G


def polar_pair(theta: float, r: float) -> np.ndarray:
    """Two task gradients in the plane: ``g_0 = (1, 0)`` and ``g_1 = r (cos theta, sin theta)``.

    Any two gradients span a plane, so (angle, magnitude ratio) is the whole story for two tasks
    up to rotation and a common scale (every method here is rotation-equivariant and positively
    homogeneous).

    Args:
        theta: Angle between the gradients, in radians.
        r: Magnitude ratio ``|g_1| / |g_0|``, > 0.

    Returns:
        A (2, 2) array with one gradient per row.

    Explained in: Chapter 4, §4.3 (two tasks), §4.4 (S1 is CAGrad's direction) and §4.8 (the methods
    side by side).
    """
    if not np.isfinite(theta):
        raise ValueError(f"theta must be finite, got {theta}")
    if not (np.isfinite(r) and r > 0):
        raise ValueError(f"r must be a finite number > 0, got {r}")
    return np.array([[1.0, 0.0], [r * np.cos(theta), r * np.sin(theta)]])


def method_directions(
    grads,
    task_weights: Sequence[float] | np.ndarray | None = None,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    cagrad_rescale: int = 1,
) -> dict[str, np.ndarray]:
    """Update directions of every method for explicit task gradients (rows of ``grads``).

    LS, PCGrad, MGDA and CAGrad (with ``c = rho``) come from :mod:`camegrad_mini.optim` on the
    task-weighted gradients, at the scale of the sum as the CAGrad repository writes them;
    ``"u*"``, ``"u_en"`` and ``"g_final"`` are CAME-Grad's stages S1, S2, S3 (S1 on the raw
    gradients, the package default). ``"mu"`` (the unweighted mean, centre of S1's trust region)
    is added for drawing.

    Args:
        grads: (T, D) array, one task gradient per row.
        task_weights: omega; None means all ones.
        rho, kappa, nu: CAME-Grad's hyperparameters (rho is also CAGrad's c).
        cagrad_rescale: CAGrad's rescale option (1 = divide by 1 + c^2, the repository default).

    Returns:
        A dict from the names in :data:`METHOD_NAMES` (plus ``"mu"``) to (D,) arrays.
    """
    G = _check_grads(grads)
    gram = gram_matrix(G)
    came = came_grad(gram, task_weights, rho=rho, kappa=kappa, nu=nu, allow_kappa_below_one=True)
    coefs = {
        "LS": linear_scalarization(gram, task_weights).coefficients,
        "PCGrad": pcgrad(gram, task_weights, rng=0).coefficients,
        "MGDA": mgda(gram, task_weights).coefficients,
        "CAGrad": cagrad(gram, task_weights, c=rho, rescale=cagrad_rescale).coefficients,
        "u*": came.extras["u_star"],
        "u_en": came.extras["u_en"],
        "g_final": came.coefficients,
        "mu": came.extras["mu"],
    }
    return {k: np.asarray(combine(G, c)) for k, c in coefs.items()}


def direction_table(
    grads,
    task_weights: Sequence[float] | np.ndarray | None = None,
    **hyper: Any,
) -> list[tuple[str, np.ndarray, float]]:
    """Rows ``(method, inner products <d, g_i> for every task, |d|)`` for :data:`METHOD_NAMES`.

    A negative inner product means the direction ``d`` (which the optimizer subtracts) makes task
    ``i`` worse to first order.

    Args:
        grads: (T, D) array of task gradients.
        task_weights: omega; None means all ones.
        **hyper: ``rho``, ``kappa``, ``nu``, ``cagrad_rescale`` for :func:`method_directions`.

    Returns:
        One row per method, in :data:`METHOD_NAMES` order.

    Explained in: Chapter 4, §4.8 (the methods side by side).
    """
    G = _check_grads(grads)
    dirs = method_directions(G, task_weights, **hyper)
    return [(name, G @ dirs[name], float(np.linalg.norm(dirs[name]))) for name in METHOD_NAMES]


def sample_conflicting_pairs(
    n: int, seed: int = 0, r_range: tuple[float, float] = (0.1, 10.0)
) -> np.ndarray:
    """Random conflicting two-task gradient pairs, as (n, 2, 2) arrays from :func:`polar_pair`.

    The angle is uniform on (90, 180) degrees (conflict means an obtuse angle) and the magnitude
    ratio ``|g_1|/|g_0|`` log-uniform on ``r_range``. This distribution is a modelling choice:
    the paper does not say how its 53.8% of conflicting pairs are distributed. Only the Gram
    matrix matters, so two dimensions suffice.

    Args:
        n: Number of pairs, >= 1.
        seed: Seed of the numpy generator.
        r_range: (low, high) magnitude ratios, 0 < low <= high.

    Returns:
        Array of shape (n, 2, 2).

    Explained in: Chapter 4, §4.6 (S3 brings conflict back).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    lo, hi = r_range
    if not 0 < lo <= hi:
        raise ValueError(f"r_range must satisfy 0 < low <= high, got {r_range}")
    rng = np.random.default_rng(seed)
    theta = rng.uniform(np.pi / 2, np.pi, size=n)
    r = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))
    return np.stack([polar_pair(t, x) for t, x in zip(theta, r, strict=True)])


def fusion_conflict_fraction(
    pairs: np.ndarray,
    nus: Sequence[float] | np.ndarray,
    rhos: Sequence[float],
    task_weights: Sequence[float] | None = None,
    *,
    kappa: float = 1.5,
    rtol: float = 1e-9,
    given_s1_ok: bool = False,
) -> np.ndarray:
    """Fraction of gradient sets for which CAME-Grad's g_final conflicts with some task.

    "Conflicts" means ``<g_final, g_i> < 0`` for some i (beyond a relative tolerance ``rtol`` of
    ``|g_final| |g_i|``, so that exact orthogonality does not count). Stage S3 is linear in nu,
    ``g_final(nu) = (1 - nu) u_en + nu kappa g_joint``, so each set costs two calls of
    :func:`camegrad_mini.optim.came_grad` per rho (nu = 0 and nu = 1), and every nu is the
    interpolation of the two.

    Args:
        pairs: (N, T, D) array of task-gradient sets (e.g. :func:`sample_conflicting_pairs`).
        nus: Fusion weights in [0, 1].
        rhos: Trust-region factors in [0, 1).
        task_weights: omega; None means all ones.
        kappa: Energy factor (a global scale: it cannot change a sign).
        rtol: Relative tolerance for calling an inner product negative.
        given_s1_ok: If True, count only the sets whose S1 output u* conflicts with no task
            (the fraction is then the share of those that S3 brings back into conflict; NaN
            when there are none).

    Returns:
        Array of shape (len(rhos), len(nus)).

    Explained in: Chapter 4, §4.6 (S3 brings conflict back).
    """
    P = np.asarray(pairs, dtype=np.float64)
    if P.ndim != 3:
        raise ValueError(f"pairs must have shape (N, T, D), got {P.shape}")
    nus = np.asarray(nus, dtype=np.float64)
    if nus.ndim != 1 or (nus < 0).any() or (nus > 1).any():
        raise ValueError(f"nus must be a 1-D sequence of values in [0, 1], got {nus}")
    out = np.zeros((len(rhos), len(nus)))
    for a, rho in enumerate(rhos):
        bad = np.zeros((len(P), len(nus)), dtype=bool)
        for n, G in enumerate(P):
            gram = G @ G.T
            c0 = came_grad(gram, task_weights, rho=rho, kappa=kappa, nu=0.0).coefficients
            c1 = came_grad(gram, task_weights, rho=rho, kappa=kappa, nu=1.0).coefficients
            coefs = (1.0 - nus)[:, None] * c0 + nus[:, None] * c1  # (len(nus), T)
            inner = coefs @ gram  # <g_final, g_i>
            norms = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", coefs, gram, coefs), 0.0))
            scale = norms[:, None] * np.sqrt(np.diag(gram))[None, :]
            bad[n] = (inner < -rtol * scale).any(axis=1)
        if given_s1_ok:
            # u_en is a positive multiple of u*, so nu = 0 tells whether S1 already conflicted
            ok = ~bad[:, 0] if nus[0] == 0.0 else ~_s1_conflicts(P, rho, task_weights, rtol)
            out[a] = bad[ok].mean(axis=0) if ok.any() else np.nan
        else:
            out[a] = bad.mean(axis=0)
    return out


def _s1_conflicts(P: np.ndarray, rho: float, task_weights, rtol: float) -> np.ndarray:
    """Whether u* (stage S1) has a negative inner product with some task gradient, per set."""
    out = np.zeros(len(P), dtype=bool)
    for n, G in enumerate(P):
        gram = G @ G.T
        u = came_grad(gram, task_weights, rho=rho, nu=0.0).extras["u_star"]
        norm = np.sqrt(max(float(u @ gram @ u), 0.0))
        out[n] = bool((u @ gram < -rtol * norm * np.sqrt(np.diag(gram))).any())
    return out


def _two_task_data(seed: int, n: int = 256, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs and two regression targets whose best shared features pull in opposite directions."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    w = torch.randn(dim, generator=gen, dtype=torch.float64)
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    y0 = torch.tanh(x @ w) + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    y1 = -torch.tanh(x @ (w + 0.5 * v)) + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y0, y1


def kappa_runs(
    optimizer: Literal["sgd", "adamw"],
    kappas: Sequence[float],
    *,
    lr: float = 0.05,
    steps: int = 100,
    batch: int = 32,
    seed: int = 0,
    adam_eps: float = 1e-8,
    task_weights: Sequence[float] = (1.0, 4.0),
    shared: Literal["all", "auto"] = "all",
) -> np.ndarray:
    """Train one small two-task network per kappa, same seed, and record the parameters.

    A float64 network (a shared tanh layer, then one linear head per task) on fixed synthetic
    data, trained with :class:`camegrad_mini.optim.CAMEGrad` (rho = 0.5, nu = 0.2) around SGD or
    AdamW (weight decay 0.01). Every run sees the same initial parameters and mini-batches, so
    the runs differ only through kappa. With ``shared="all"`` every parameter receives g_final,
    which is exactly kappa times the kappa = 1 direction; with ``shared="auto"`` (the wrapper's
    default) the heads receive omega_i g_i, which kappa does not scale.

    Args:
        optimizer: ``"sgd"`` or ``"adamw"``.
        kappas: Values of kappa (> 0; values below 1 are allowed here to show the scaling).
        lr: Learning rate.
        steps: Number of optimizer steps.
        batch: Mini-batch size.
        seed: Seed of the data, the initialisation and the mini-batch order.
        adam_eps: AdamW's epsilon (its only departure from scale invariance).
        task_weights: omega.
        shared: The wrapper's ``shared`` argument.

    Returns:
        Array of shape (len(kappas), steps + 1, n_params): the flattened parameters after each step.

    Explained in: Chapter 4, §4.5 (S2 and S3: kappa is a global scale).
    """
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    x, y0, y1 = _two_task_data(seed)
    runs = []
    for kappa in kappas:
        torch.manual_seed(seed)
        trunk = torch.nn.Linear(x.shape[1], 16, dtype=torch.float64)
        heads = torch.nn.ModuleList(torch.nn.Linear(16, 1, dtype=torch.float64) for _ in range(2))
        params = list(trunk.parameters()) + list(heads.parameters())
        if optimizer == "sgd":
            base: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr)
        else:
            base = torch.optim.AdamW(params, lr=lr, eps=adam_eps, weight_decay=0.01)
        opt = CAMEGrad(base, rho=0.5, kappa=kappa, nu=0.2, shared=shared, allow_kappa_below_one=True)
        gen = torch.Generator().manual_seed(seed + 1)
        traj = [torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()]
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
            h = torch.tanh(trunk(x[idx]))
            losses = [torch.mean((heads[0](h).squeeze(-1) - y0[idx]) ** 2),
                      torch.mean((heads[1](h).squeeze(-1) - y1[idx]) ** 2)]
            opt.step(losses, task_weights=list(task_weights))
            traj.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy())
        runs.append(np.stack(traj))
    return np.stack(runs)
