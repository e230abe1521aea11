"""Figures, widget and kernel-free sweep for chapter 4 (CAME-Grad, stage by stage).

* the **vector picture** (:func:`vector_figure`, :func:`vector_widget`, :func:`vector_sweep`):
  two task gradients, S1's trust region around the mean gradient, the common-descent cone, and
  the directions of LS, PCGrad, MGDA, CAGrad and CAME-Grad's u*, u_en and g_final, beside a bar
  chart of each direction's cosine with each task gradient (a negative bar = that task gets worse);
* :func:`plot_dual_objective`: the two-task dual of S1 along the simplex, with the solver's minimiser;
* :func:`plot_fusion_conflict`: how often the fused update conflicts with a task, against nu;
* :func:`plot_kappa_gaps`: how far runs with different kappa drift apart under SGD and AdamW.

Conventions follow :mod:`camegrad_mini.viz.pareto`: task 0 blue, task 1 orange, LS black, the
common-descent cone green; we draw gradient space (the optimizer subtracts the directions).
Widgets use core ipywidgets only; sweeps are ``FuncAnimation.to_jshtml`` (at most 30 frames).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.patches import Circle

from ..came_probes import METHOD_NAMES, method_directions, polar_pair
from ..geometry import common_descent_arc
from ..optim import rectify
from .pareto import TASK_COLORS, draw_cone

__all__ = [
    "METHOD_COLORS",
    "vector_figure",
    "vector_widget",
    "vector_sweep",
    "plot_dual_objective",
    "plot_fusion_conflict",
    "plot_kappa_gaps",
]

#: One colour per direction in :data:`camegrad_mini.came_probes.METHOD_NAMES`.
METHOD_COLORS = {
    "LS": "black",
    "PCGrad": "tab:purple",
    "MGDA": "tab:brown",
    "CAGrad": "tab:pink",
    "u*": "tab:olive",
    "u_en": "tab:cyan",
    "g_final": "tab:red",
}
MAX_FRAMES = 30


def _check(theta_deg: float, r: float, w: float, rho: float, kappa: float, nu: float) -> None:
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w (the weight of task 1, omega = (1 - w, w)) must lie in [0, 1], got {w}")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must lie in [0, 1), got {rho}")
    if not kappa > 0.0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    if not 0.0 <= nu <= 1.0:
        raise ValueError(f"nu must lie in [0, 1], got {nu}")
    if not r > 0.0:
        raise ValueError(f"r must be > 0, got {r}")
    if not np.isfinite(theta_deg):
        raise ValueError(f"theta_deg must be finite, got {theta_deg}")


def _draw_vectors(axes, theta_deg: float, r: float, w: float, rho: float, kappa: float, nu: float) -> None:
    a, b = axes
    a.clear()
    b.clear()
    G = polar_pair(np.radians(theta_deg), r)
    weights = np.array([1.0 - w, w])
    dirs = method_directions(G, weights, rho=rho, kappa=kappa, nu=nu)
    lim = 1.1 * max(max(float(np.linalg.norm(v)) for v in dirs.values()), 1.0, r)
    draw_cone(a, common_descent_arc(G), radius=lim * 1.5, label="common descent")
    mu = dirs["mu"]
    a.add_patch(Circle(tuple(mu), rho * float(np.linalg.norm(mu)), fill=False, ls="--", color="tab:olive", lw=1.0,
                       label=r"S1 ball $\|u-\mu\|\leq\rho\|\mu\|$"))
    for i in range(2):
        a.annotate("", xy=tuple(G[i]), xytext=(0, 0),
                   arrowprops=dict(arrowstyle="-|>", color=TASK_COLORS[i], lw=3.0, alpha=0.45, shrinkA=0, shrinkB=0))
        a.text(*(G[i] * 1.04), f"$g_{i}$", color=TASK_COLORS[i], fontsize=10, fontweight="bold")
    for name in METHOD_NAMES:
        v = dirs[name]
        ls = ":" if name in ("u*", "u_en") else "-"
        a.annotate("", xy=tuple(v), xytext=(0, 0),
                   arrowprops=dict(arrowstyle="-|>", color=METHOD_COLORS[name], lw=1.6, ls=ls, shrinkA=0, shrinkB=0))
        a.plot([], [], color=METHOD_COLORS[name], ls=ls, label=name)
    a.plot(*mu, "o", color="tab:olive", ms=3)
    a.set_xlim(-lim, lim)
    a.set_ylim(-0.6 * lim, lim)
    a.set_aspect("equal")
    a.axhline(0, color="grey", lw=0.5)
    a.axvline(0, color="grey", lw=0.5)
    a.set_xlabel("gradient coordinate 1")
    a.set_ylabel("gradient coordinate 2")
    a.set_title(rf"$\phi$={theta_deg:.0f}°, $\gamma$={r:.2f}, w={w:.2f}, "
                rf"$\rho$={rho:.2f}, $\kappa$={kappa:.2f}, $\nu$={nu:.2f}",
                fontsize=9)
    a.legend(fontsize=7, loc="lower left", ncol=2, framealpha=0.8)
    # right panel: cosine of each direction with each task gradient
    names = list(METHOD_NAMES)
    y = np.arange(len(names))
    cos = np.zeros((len(names), 2))
    tiny = 1e-9 * max(1.0, r)  # a direction this short is rounding noise (e.g. MGDA at a Pareto-stationary pair)
    for k, name in enumerate(names):
        v = dirs[name]
        nv = np.linalg.norm(v)
        cos[k] = G @ v / (np.linalg.norm(G, axis=1) * nv) if nv > tiny else 0.0
    for i in range(2):
        b.barh(y + (i - 0.5) * 0.38, cos[:, i], height=0.36, color=TASK_COLORS[i], label=f"cos(d, $g_{i}$)")
    b.axvline(0, color="k", lw=0.8)
    b.set_yticks(y, names)
    b.invert_yaxis()
    b.set_xlim(-1.05, 1.05)
    b.set_xlabel(r"cosine of d with the task gradient ($<0$: the task gets worse)", fontsize=9)
    b.set_ylabel("direction d")
    hurt = [n for k, n in enumerate(names) if (cos[k] < -1e-9).any()]
    b.set_title("conflicting: " + (", ".join(hurt) if hurt else "none"), fontsize=9)
    b.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def vector_figure(theta_deg: float = 120.0, r: float = 1.0, w: float = 0.5, rho: float = 0.5,
                  kappa: float = 1.5, nu: float = 0.2):
    """The vector picture for ``g_0 = (1, 0)``, ``g_1 = r (cos phi, sin phi)`` (the book's φ and γ = r),
    omega = (1 - w, w).

    Args:
        theta_deg: Angle between the gradients, degrees.
        r: Magnitude ratio ``|g_1|/|g_0|``.
        w: Weight of task 1; omega = (1 - w, w) (chapter 3's convention; (1, 4) is w = 0.8).
        rho, kappa, nu: CAME-Grad's hyperparameters (rho is also CAGrad's c).

    Returns:
        A matplotlib figure with two axes (vectors; cosines).
    """
    _check(theta_deg, r, w, rho, kappa, nu)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.4), gridspec_kw={"width_ratios": [1.25, 1.0]})
    _draw_vectors(axes, theta_deg, r, w, rho, kappa, nu)
    fig.tight_layout()
    return fig


def vector_widget(theta_deg: float = 120.0, r: float = 1.0, w: float = 0.5, rho: float = 0.5,
                  kappa: float = 1.5, nu: float = 0.2):
    """Core-ipywidgets sliders for :func:`vector_figure` (angle, magnitude ratio, weight, rho, kappa, nu).

    Explained in: Chapter 4, §4.7 (the picture).
    """
    import ipywidgets as W

    def show(theta_deg, r, w, rho, kappa, nu):
        vector_figure(theta_deg, r, w, rho, kappa, nu)
        plt.show()

    def slider(cls, value, lo, hi, step, desc, **kw):
        return cls(value=value, min=lo, max=hi, step=step, description=desc, continuous_update=False, **kw)

    return W.interactive(
        show,
        theta_deg=slider(W.FloatSlider, theta_deg, 0, 180, 5, "angle (°)"),
        r=slider(W.FloatLogSlider, r, -1, 1, 0.05, "|g1|/|g0|", base=10),
        w=slider(W.FloatSlider, w, 0.05, 0.95, 0.05, "weight w"),
        rho=slider(W.FloatSlider, rho, 0, 0.95, 0.05, "rho"),
        kappa=slider(W.FloatSlider, kappa, 1, 3, 0.1, "kappa"),
        nu=slider(W.FloatSlider, nu, 0, 1, 0.05, "nu"),
    )


def vector_sweep(thetas_deg=tuple(range(90, 181, 5)), dpi: int = 70, **fixed):
    """Kernel-free form of :func:`vector_widget`: one frame per angle (at most 30 frames).

    Args:
        thetas_deg: The angles, degrees.
        dpi: Resolution of the frames (70 keeps the page small).
        **fixed: The other arguments of :func:`vector_figure`.

    Returns:
        ``IPython.display.HTML`` with a JavaScript animation.

    Explained in: Chapter 4, §4.7 (the picture).
    """
    from IPython.display import HTML

    vals = np.asarray(thetas_deg, dtype=float)
    if vals.ndim != 1 or not 1 <= len(vals) <= MAX_FRAMES:
        raise ValueError(f"thetas_deg must hold 1 to {MAX_FRAMES} angles for a sweep, got shape {vals.shape}")
    params = dict(r=1.0, w=0.5, rho=0.5, kappa=1.5, nu=0.2)
    unknown = set(fixed) - set(params)
    if unknown:
        raise ValueError(f"unknown vector_figure arguments: {sorted(unknown)}")
    params.update(fixed)
    for t in vals:
        _check(t, **params)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.4), gridspec_kw={"width_ratios": [1.25, 1.0]})

    def draw(i):
        _draw_vectors(axes, vals[i], **params)
        fig.tight_layout()

    draw(0)
    fig.set_dpi(dpi)
    anim = FuncAnimation(fig, draw, frames=len(vals), interval=500, blit=False)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)


def plot_dual_objective(pairs: Mapping[str, np.ndarray], rho: float = 0.5, n: int = 401):
    """The two-task dual of S1 along alpha = (t, 1 - t), with the package's minimiser marked.

    F(t) = <g_alpha, mu> + rho ||mu|| ||g_alpha|| with g_alpha = t g_0 + (1 - t) g_1 (method note,
    step 2), computed from the Gram matrix; the dot is ``rectify(gram, rho).alpha[0]``.

    Args:
        pairs: Label -> (2, D) array of task gradients.
        rho: Trust-region factor.
        n: Grid points on [0, 1].

    Returns:
        A matplotlib figure.

    Explained in: Chapter 4, §4.3 (two tasks: a one-dimensional dual).
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    t = np.linspace(0.0, 1.0, n)
    for label, G in pairs.items():
        G = np.asarray(G, dtype=float)
        if G.shape[0] != 2:
            raise ValueError(f"pairs[{label!r}] must hold two gradients, got shape {G.shape}")
        gram = G @ G.T
        mu = np.full(2, 0.5)
        alpha = np.stack([t, 1 - t], axis=1)
        mu_norm = np.sqrt(mu @ gram @ mu)
        F = alpha @ gram @ mu + rho * mu_norm * np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", alpha, gram, alpha), 0))
        F = F / mu_norm**2  # unit scale, to share one axis
        line, = ax.plot(t, F, label=label)
        t_star = rectify(gram, rho).alpha[0]
        f_star = np.interp(t_star, t, F)
        ax.plot([t_star], [f_star], "o", color=line.get_color())
    ax.set_xlabel(r"$\alpha_0$ (weight of $g_0$ in $g_\alpha$)")
    ax.set_ylabel(r"dual objective $/\ \|\mu\|^2$")
    ax.set_title(rf"S1 dual along the simplex, $\rho$={rho}; dots: the package's $\alpha^*$", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_fusion_conflict(nus: Sequence[float], rhos: Sequence[float], fractions: Mapping[str, np.ndarray],
                         mark_nu: float | None = 0.3):
    """Curves of a conflict fraction against nu, one line per rho, one panel per entry of ``fractions``.

    Args:
        nus: The nu grid.
        rhos: The rho values (rows of each array).
        fractions: Panel title -> (len(rhos), len(nus)) array (e.g. from
            :func:`camegrad_mini.came_probes.fusion_conflict_fraction`).
        mark_nu: Draw a vertical line here (the paper's nu = 0.3), or None.

    Returns:
        A matplotlib figure.

    Explained in: Chapter 4, §4.6 (S3 brings conflict back).
    """
    fig, axes = plt.subplots(1, len(fractions), figsize=(4.4 * len(fractions), 3.5), sharey=True, squeeze=False)
    for ax, (title, frac) in zip(axes[0], fractions.items(), strict=True):
        frac = np.asarray(frac)
        if frac.shape != (len(rhos), len(nus)):
            raise ValueError(f"fractions[{title!r}] must have shape {(len(rhos), len(nus))}, got {frac.shape}")
        for rho, row in zip(rhos, frac, strict=True):
            ax.plot(nus, row, "o-", ms=3, label=rf"$\rho$={rho:g}")
        if mark_nu is not None:
            ax.axvline(mark_nu, color="grey", ls="--", lw=0.8)
        ax.set_xlabel(r"fusion weight $\nu$")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(r"fraction with $\langle g_{final}, g_i\rangle<0$ for some $i$")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_kappa_gaps(gaps: Mapping[str, np.ndarray]):
    """Log-scale distance between two runs that differ only in kappa, step by step.

    Args:
        gaps: Label -> (steps + 1,) array of max-abs parameter differences (the first entry, the
            shared initialisation, is 0 and is not drawn).

    Returns:
        A matplotlib figure.

    Explained in: Chapter 4, §4.5 (S2 and S3: kappa is a global scale).
    """
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for label, g in gaps.items():
        g = np.asarray(g, dtype=float)
        steps = np.arange(len(g))
        ax.semilogy(steps[1:], np.maximum(g[1:], 1e-17), label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(r"max$_j\,|\theta_j^{\kappa=1.5}-\theta_j^{\kappa=1}|$")
    ax.set_title("same seed, same batches: how far kappa moves the parameters", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
