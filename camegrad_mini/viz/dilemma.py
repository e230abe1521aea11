"""Figures, widgets and kernel-free sweeps for chapter 3 (the Double Dilemma).

Four interactive views, each with a static twin for the site:

* the **vector picture** (:func:`vector_figure`, :func:`vector_widget`, :func:`vector_sweep`):
  two task gradients, their weighted sum, and where that point sits in the drift-deviation region;
* the **landscape** (:func:`landscape_figure`, :func:`landscape_widget`, :func:`landscape_sweep`):
  two quadratic tasks, their Pareto set, noisy LS trajectories over seeds, one-step noise ellipses,
  and the joint gradient's energy over time;
* the **angle picture** (:func:`angle_figure`, :func:`angle_widget`, :func:`angle_sweep`): the
  conflict angle on a slider; the drift's energy against ``tr Sigma_w`` of each noise kind, and the
  covariance ellipse of the weighted noise for each kind;
* the **sharp and flat wells** (:func:`wells_figure`, :func:`wells_widget`,
  :func:`wells_small_multiples`): noisy LS started in a sharp minimum, and how many seeds escape.

Every ``*_figure`` returns a matplotlib figure, every ``*_widget`` an ``ipywidgets.interactive``
(core widgets only; sliders do not update while dragging, so each change runs one simulation),
and every sweep an ``IPython.display.HTML`` made with ``FuncAnimation.to_jshtml`` (at most 30
frames, dpi 70 by default) that works without a kernel.
"""
from __future__ import annotations

from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.patches import Ellipse
from matplotlib.ticker import NullFormatter

from .. import dilemma
from ..problems import SharpFlatWells

__all__ = [
    "plot_energy_ratio_map",
    "plot_diffusion_curves",
    "plot_deviation_region",
    "vector_figure",
    "vector_widget",
    "vector_sweep",
    "landscape_run",
    "landscape_figure",
    "landscape_widget",
    "landscape_sweep",
    "wells_minima",
    "wells_figure",
    "wells_widget",
    "wells_small_multiples",
    "plot_escape_counts",
    "angle_figure",
    "angle_widget",
    "angle_sweep",
    "plot_kappa_decomposition",
]

TASK_COLORS = ("tab:blue", "tab:orange")
MAX_FRAMES = 30


def _check_frames(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or not 1 <= len(values) <= MAX_FRAMES:
        raise ValueError(f"a sweep takes 1 to {MAX_FRAMES} parameter values, got {values.shape}")
    return values


def _to_html(fig, draw, values, dpi: int, interval: int):
    from IPython.display import HTML

    fig.set_dpi(dpi)
    anim = FuncAnimation(fig, lambda i: draw(values[i]), frames=len(values), interval=interval, blit=False)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)


# ----------------------------------------------------------------------------------------------
# static figures of the closed forms
# ----------------------------------------------------------------------------------------------
def plot_energy_ratio_map(n: int = 181):
    """Energy ratio ``|g_joint|^2 / (w_0^2|g_0|^2 + w_1^2|g_1|^2)`` over (conflict angle, weighted
    magnitude ratio gamma_w), with the drift-deviation boundary ``cos(phi) = -min(gamma_w, 1/gamma_w)``.

    Explained in: Chapter 3, §3.2 (the energy of the joint gradient).
    """
    phi = np.linspace(0, np.pi, n)
    log_gamma_w = np.linspace(-1.5, 1.5, n)
    T, LR = np.meshgrid(phi, log_gamma_w)
    E = dilemma.energy_ratio_closed_form(T, 10**LR)
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    im = ax.pcolormesh(np.degrees(T), LR, E, cmap="RdBu", vmin=0, vmax=2, shading="auto")
    cs = ax.contour(np.degrees(T), LR, E, levels=[0.25, 0.5, 0.75, 1.0, 1.5], colors="k", linewidths=0.6)
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    gamma_w = 10**log_gamma_w
    ax.plot(np.degrees(np.arccos(-np.minimum(gamma_w, 1 / gamma_w))), log_gamma_w, "k--", lw=2,
            label=r"deviation boundary $\cos\varphi=-\min(\gamma_\omega,1/\gamma_\omega)$")
    ax.set_xlabel(r"conflict angle $\varphi$ between $g_0$ and $g_1$ (degrees)")
    ax.set_ylabel(r"$\log_{10}\gamma_\omega,\ \gamma_\omega=\omega_1\|g_1\|/(\omega_0\|g_0\|)$")
    ax.set_title("joint-gradient energy ratio (colour); drift deviates right of the dashed line", fontsize=9)
    fig.colorbar(im, ax=ax, label="energy ratio")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_diffusion_curves():
    """Two panels: weighted isotropic noise variance against the noise correlation ``c``, and the
    diffusion trace of gradient-aligned noise against the conflict angle for several ``c``.

    Explained in: Chapter 3, §3.4 (the diffusion term: the covariance of the weighted noise).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    c = np.linspace(-1, 1, 201)
    for w, s1 in ((0.5, 1.0), (0.8, 1.0), (0.8, 0.25)):
        var = dilemma.weighted_noise_variance(dilemma.two_task_weights(w), np.array([1.0, s1]), c)
        a.plot(c, var, label=rf"$\omega=({1-w:.1f},{w:.1f})$, $\sigma_1/\sigma_0={s1:g}$")
    a.set_xlabel(r"cross-task noise correlation $c$")
    a.set_ylabel(r"Var$(\omega_0\xi_0+\omega_1\xi_1)$ per coordinate ($\sigma_0=1$)")
    a.set_title("additive noise: decays as c → −1; no angle in sight", fontsize=9)
    a.legend(fontsize=7)
    phi = np.linspace(0, np.pi, 181)
    w = dilemma.two_task_weights(0.5)
    for cc in (-1.0, 0.0, 0.5, 1.0):
        tr = w[0] ** 2 + w[1] ** 2 + 2 * cc * w[0] * w[1] * np.cos(phi)  # sigma = |g_i| = 1
        b.plot(np.degrees(phi), tr, label=f"c = {cc:g}" + ("  (= energy)" if cc == 1 else ""))
    b.set_xlabel(r"conflict angle $\varphi$ (degrees)")
    b.set_ylabel(r"tr Cov (weighted noise), $\sigma=\|g_i\|=1$")
    b.set_title(r"gradient-aligned noise $\xi_i=\sigma\zeta_i g_i$, $\omega=(0.5,0.5)$", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_deviation_region(gamma_values=(1.0, 3.0, 10.0), n: int = 241, mark=None):
    """Small multiples over the magnitude ratio ``gamma``: the (angle, weight) region where
    ``<g_joint, g_i> < 0`` for some task, shaded from *direct* inner products on a grid, with the
    closed-form thresholds ``w_lo``, ``w_hi`` drawn on top. ``mark=(phi, w, gamma)`` adds a point
    to the panel with that ``gamma``.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    gamma_values = list(gamma_values)
    phi = np.linspace(0, np.pi, n)
    wgrid = np.linspace(0, 1, n)
    fig, axes = plt.subplots(1, len(gamma_values), figsize=(3.3 * len(gamma_values), 3.2), sharey=True,
                             squeeze=False)
    for ax, gamma in zip(axes[0], gamma_values, strict=True):
        T, W = np.meshgrid(phi, wgrid)
        G = dilemma.polar_gradients(T, gamma)  # (n, n, 2, 2)
        w_stack = np.stack([1 - W, W], -1)
        gj = (G * w_stack[..., None]).sum(-2)
        al = np.einsum("...ij,...j->...i", G, gj)
        hurt0, hurt1 = al[..., 0] < 0, al[..., 1] < 0
        code = np.where(hurt0, 1.0, np.where(hurt1, 2.0, 0.0))
        ax.contourf(np.degrees(T), W, code, levels=[-0.5, 0.5, 1.5, 2.5],
                    colors=["white", "#9ecae1", "#fdd0a2"])
        w_lo, w_hi = dilemma.deviation_weight_thresholds(phi, gamma)
        conf = np.cos(phi) < 0
        ax.plot(np.degrees(phi[conf]), w_lo[conf], "k-", lw=1.2)
        ax.plot(np.degrees(phi[conf]), w_hi[conf], "k--", lw=1.2)
        ax.axvline(90, color="grey", lw=0.6, ls=":")
        frac = dilemma.deviation_area_fraction(gamma)
        ax.set_title(rf"$\gamma=\|g_1\|/\|g_0\|$ = {gamma:g}; deviating area {frac:.2f}", fontsize=9)
        ax.set_xlabel(r"conflict angle $\varphi$ (degrees)")
        if mark is not None and np.isclose(mark[2], gamma):
            ax.plot(np.degrees(mark[0]), mark[1], "k*", ms=12)
    axes[0, 0].set_ylabel(r"task-1 weight $w$  ($\omega=(1-w,w)$)")
    axes[0, 0].text(3, 0.9, "blue: task 0 hurt\norange: task 1 hurt\nsolid $w_{lo}$, dashed $w_{hi}$",
                    fontsize=7, va="top", bbox=dict(fc="white", ec="none", alpha=0.7))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# 1. the vector picture
# ----------------------------------------------------------------------------------------------
def _draw_weighted_pair(ax, G: np.ndarray, wts: np.ndarray, gj: np.ndarray, gamma: float,
                        hurt: np.ndarray | None = None) -> None:
    """The two task gradients (faint), their weighted versions and ``g_joint`` from the origin, on
    equal axes sized for the magnitude ratio ``gamma``; ``hurt[i]`` marks a task the joint step
    hurts. Used by the vector picture and the angle picture."""
    lim = 1.15 * max(1.0, gamma)
    for i in range(2):
        ax.annotate("", xy=G[i], xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=TASK_COLORS[i], lw=1.2, alpha=0.5))
        ax.annotate("", xy=wts[i] * G[i], xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=TASK_COLORS[i], lw=2.2))
        label = f"$g_{i}$" + (" (hurt)" if hurt is not None and hurt[i] else "")
        ax.text(*(1.06 * G[i]), label, color=TASK_COLORS[i], fontsize=9)
    ax.annotate("", xy=gj, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="k", lw=2.5))
    ax.text(*(gj + 0.05 * lim), r"$g_{joint}$", fontsize=10)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-0.35 * lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="grey", lw=0.5)


def _draw_vectors(axes, phi: float, w: float, gamma: float) -> None:
    a, b = axes
    a.clear()
    b.clear()
    G = dilemma.polar_gradients(phi, gamma)
    wts = dilemma.two_task_weights(w)
    gj = dilemma.joint_gradient(G, wts)
    al = dilemma.task_alignment(G, wts)
    ratio = float(dilemma.energy_ratio(G, wts))
    _draw_weighted_pair(a, G, wts, gj, gamma, hurt=al < 0)
    a.axvline(0, color="grey", lw=0.5)
    a.set_xlabel("gradient coordinate 1")
    a.set_ylabel("gradient coordinate 2")
    a.set_title(rf"$\varphi$={np.degrees(phi):.0f}°, w={w:.2f}, $\gamma$={gamma:.2f}: energy ratio {ratio:.2f}, "
                + ("deviation" if (al < 0).any() else "no deviation"), fontsize=9)
    phi_g = np.linspace(0, np.pi, 181)
    w_lo, w_hi = dilemma.deviation_weight_thresholds(phi_g, gamma)
    conf = np.cos(phi_g) < 0
    b.fill_between(np.degrees(phi_g), 0, np.where(conf, w_lo, 0), color="#fdd0a2", label="task 1 hurt")
    b.fill_between(np.degrees(phi_g), np.where(conf, w_hi, 1), 1, color="#9ecae1", label="task 0 hurt")
    b.plot(np.degrees(phi), w, "k*", ms=13)
    b.set_xlim(0, 180)
    b.set_ylim(0, 1)
    b.set_xlabel(r"conflict angle $\varphi$ (degrees)")
    b.set_ylabel("task-1 weight w")
    b.set_title(rf"deviation region at $\gamma$ = {gamma:.2f}", fontsize=9)
    b.legend(fontsize=8, loc="center left")


def vector_figure(phi: float = np.radians(120), w: float = 0.8, gamma: float = 1.0):
    """The two task gradients (thin), weighted (thick), their sum, and the (phi, w) region."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))
    _draw_vectors(axes, phi, w, gamma)
    fig.tight_layout()
    return fig


def vector_widget(phi_deg: float = 120.0, w: float = 0.8, gamma: float = 1.0):
    """Sliders for the conflict angle (degrees), the weight of task 1 and the magnitude ratio.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    import ipywidgets as W

    def show(phi_deg, w, gamma):
        vector_figure(np.radians(phi_deg), w, gamma)
        plt.show()

    return W.interactive(
        show,
        phi_deg=W.FloatSlider(value=phi_deg, min=0, max=180, step=5, description="angle (°)", continuous_update=False),
        w=W.FloatSlider(value=w, min=0, max=1, step=0.05, description="weight w", continuous_update=False),
        gamma=W.FloatLogSlider(value=gamma, base=10, min=-1, max=1, step=0.05, description="γ=|g1|/|g0|",
                               continuous_update=False),
    )


def vector_sweep(phis_deg=tuple(range(90, 181, 5)), w: float = 0.8, gamma: float = 1.0, dpi: int = 70):
    """Kernel-free form of :func:`vector_widget`: one frame per conflict angle.

    Explained in: Chapter 3, §3.3 (drift term deviation).
    """
    vals = _check_frames(phis_deg)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))

    def draw(t):
        _draw_vectors(axes, np.radians(t), w, gamma)
        fig.tight_layout()

    draw(vals[0])
    return _to_html(fig, draw, vals, dpi, interval=400)


# ----------------------------------------------------------------------------------------------
# 1b. the angle picture: drift energy against the diffusion of each noise kind
# ----------------------------------------------------------------------------------------------
KIND_COLORS = {"isotropic": "tab:green", "hessian": "tab:purple", "gradient": "tab:red"}
KIND_LABELS = {"isotropic": "isotropic", "hessian": "curvature-shaped", "gradient": "gradient-aligned"}
ANGLE_DEFAULTS = dict(gamma=1.0, w=0.5, corr=0.5, sigma=1.0)


def _angle_axes(figsize=(9.6, 5.6)):
    fig = plt.figure(figsize=figsize)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.05, 1])
    return fig, (fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1:]),
                 *(fig.add_subplot(gs[1, j]) for j in range(3)))


def _draw_angle(axes, phi_deg: float, gamma: float, w: float, corr: float, sigma: float = 1.0) -> None:
    vec, curves, *ell = axes
    for ax in axes:
        ax.clear()
    wts = dilemma.two_task_weights(w)
    grid = dilemma.angle_diffusion(np.radians(np.linspace(0, 180, 181)), gamma, wts, sigma, corr)
    here = dilemma.angle_diffusion(np.radians(phi_deg), gamma, wts, sigma, corr)
    G, gj = here.grads[0], here.g_joint[0]
    _draw_weighted_pair(vec, G, wts, gj, gamma)
    vec.set_xlabel("coordinate 1")
    vec.set_ylabel("coordinate 2")
    vec.set_title(rf"$\varphi$={phi_deg:.0f}°, $\gamma$={gamma:.2f}, w={w:.2f}", fontsize=9)
    deg = np.degrees(grid.phi)
    curves.plot(deg, sigma**2 * grid.energy, "k-", lw=2.4, label=r"drift energy $\sigma^2\|g_{joint}\|^2$")
    for kind, tr in grid.trace.items():
        curves.plot(deg, tr, "-", color=KIND_COLORS[kind], lw=1.6,
                    label=rf"tr $\Sigma_\omega$, {KIND_LABELS[kind]}: {grid.trend(kind)}")
        curves.plot(phi_deg, here.trace[kind][0], "o", color=KIND_COLORS[kind], ms=6)
    curves.plot(phi_deg, sigma**2 * here.energy[0], "ko", ms=6)
    curves.axvline(phi_deg, color="grey", lw=0.8, ls=":")
    curves.axvspan(90, 180, color="0.93", zorder=0)
    top = max(float(sigma**2 * grid.energy.max()), *(float(t.max()) for t in grid.trace.values()))
    curves.set_xlim(0, 180)
    curves.set_ylim(0, 1.55 * top)
    curves.set_xlabel(r"conflict angle $\varphi$ (degrees; shaded: conflict)")
    curves.set_ylabel("energy / total noise variance")
    curves.set_title(f"noise correlation c = {corr:+.2f}: does the diffusion follow the energy?", fontsize=9)
    curves.legend(fontsize=7, loc="upper right", ncol=1)
    span = 2.2 * np.sqrt(max(float(np.max([t.max() for t in grid.trace.values()])), 1e-9))
    for ax, (kind, cov) in zip(ell, here.cov.items(), strict=True):
        C = cov[0]
        width, height, angle = (float(v) for v in dilemma.ellipse_axes(C, 2.0))
        ax.add_patch(Ellipse((0, 0), width, height, angle=angle, fc=KIND_COLORS[kind], ec=KIND_COLORS[kind],
                             alpha=0.35, lw=1.5))
        if height < 1e-3 * span:  # rank one: draw the segment, a flat ellipse would vanish
            u = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]) * width / 2
            ax.plot([-u[0], u[0]], [-u[1], u[1]], "-", color=KIND_COLORS[kind], lw=2.5)
        if np.linalg.norm(gj) > 0:
            d = gj / np.linalg.norm(gj) * 0.9 * span
            ax.annotate("", xy=d, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="k", lw=1.0, alpha=0.6))
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_aspect("equal")
        ax.set_xlabel("noise, coordinate 1")
        ax.set_title(f"{KIND_LABELS[kind]}: tr Σ_ω = {float(np.trace(C)):.3f}", fontsize=9)
    ell[0].set_ylabel("noise, coordinate 2")


def angle_figure(phi_deg: float = 120.0, **params):
    """The angle picture: the weighted gradients and ``g_joint`` (top left); over all conflict
    angles, the drift energy ``sigma^2 |g_joint|^2`` and ``tr Sigma_w`` of each noise kind, with the
    current angle marked (top right); and the 2-s.d. ellipse of ``Sigma_w`` for each kind at the
    current angle, ``g_joint``'s direction as an arrow (bottom). ``params``: ``gamma``, ``w``,
    ``corr``, ``sigma`` (defaults ``ANGLE_DEFAULTS``)."""
    p = {**ANGLE_DEFAULTS, **params}
    fig, axes = _angle_axes()
    _draw_angle(axes, phi_deg, **p)
    fig.tight_layout()
    return fig


def angle_widget(phi_deg: float = 120.0, **initial):
    """Sliders: conflict angle, magnitude ratio gamma, weight w and the noises' correlation c.

    Explained in: Chapter 3, §3.4 (the conflict angle on a slider).
    """
    import ipywidgets as W

    p = {**ANGLE_DEFAULTS, **initial}

    def show(phi_deg, gamma, w, corr):
        angle_figure(phi_deg, gamma=gamma, w=w, corr=corr, sigma=p["sigma"])
        plt.show()

    cu = dict(continuous_update=False)
    return W.interactive(
        show,
        phi_deg=W.FloatSlider(value=phi_deg, min=0, max=180, step=5, description="angle φ (°)", **cu),
        gamma=W.FloatLogSlider(value=p["gamma"], base=10, min=-1, max=1, step=0.05, description="γ=|g1|/|g0|", **cu),
        w=W.FloatSlider(value=p["w"], min=0, max=1, step=0.05, description="weight w", **cu),
        corr=W.FloatSlider(value=p["corr"], min=-1, max=1, step=0.1, description="noise corr c", **cu),
    )


def angle_sweep(phis_deg=tuple(range(0, 181, 20)), dpi: int = 60, **params):
    """Kernel-free form of :func:`angle_widget`: one frame per conflict angle.

    Explained in: Chapter 3, §3.4 (the conflict angle on a slider).
    """
    vals = _check_frames(phis_deg)
    p = {**ANGLE_DEFAULTS, **params}
    fig, axes = _angle_axes()

    def draw(v):
        _draw_angle(axes, v, **p)
        fig.tight_layout()

    draw(vals[0])
    return _to_html(fig, draw, vals, dpi, interval=600)


# ----------------------------------------------------------------------------------------------
# 2. the two-task landscape with noisy LS
# ----------------------------------------------------------------------------------------------
def _ellipse(ax, center, cov, n_sd: float = 2.0, **kw) -> None:
    width, height, angle = dilemma.ellipse_axes(cov, n_sd)
    ax.add_patch(Ellipse(center, float(width), float(height), angle=float(angle), **kw))


def landscape_run(phi0_deg=120.0, w=0.5, sigma=0.5, corr=0.0, lr=0.1, steps=60, condition=1.0,
                  kind="isotropic", n_seeds=32, seed=0):
    """The problem, weights, noise and :class:`~camegrad_mini.dilemma.LSRun` behind the landscape view.

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """
    prob = dilemma.conflict_pair(np.radians(phi0_deg), condition=condition)
    wts = dilemma.two_task_weights(w)
    noise = dilemma.TaskNoise(sigma=sigma, corr=corr, kind=kind)
    run = dilemma.simulate_ls(prob, wts, noise, lr=lr, steps=int(steps), x0=(0.0, 0.0), n_seeds=n_seeds, seed=seed)
    return prob, wts, noise, run


def _draw_landscape(axes, phi0_deg, w, sigma, corr, lr, steps, condition, kind, n_seeds, seed) -> None:
    a, b, c = axes
    for ax in axes:
        ax.clear()
    prob, wts, noise, run = landscape_run(phi0_deg, w, sigma, corr, lr, steps, condition, kind, n_seeds, seed)
    xg, yg = np.meshgrid(np.linspace(-1.6, 1.6, 121), np.linspace(-0.9, 1.6, 101))
    Lg = prob.weighted_loss(np.stack([xg, yg], -1), wts)
    a.contour(xg, yg, Lg, levels=np.quantile(Lg, np.linspace(0.02, 0.9, 12)), colors="grey", linewidths=0.5)
    ps = prob.pareto_set(101)
    a.plot(ps[:, 0], ps[:, 1], "k-", lw=2.5, alpha=0.6, label="Pareto set")
    for i in range(2):
        a.plot(*prob.centers[i], "o", color=TASK_COLORS[i], ms=8, label=f"task {i} minimum")
    star = prob.ls_minimizer(wts)
    for s in range(min(6, run.xs.shape[0])):
        a.plot(run.xs[s, :, 0], run.xs[s, :, 1], "-", color="tab:green", lw=0.6, alpha=0.5)
    mean = run.xs.mean(0)
    a.plot(mean[:, 0], mean[:, 1], "-", color="darkgreen", lw=2, label="mean over seeds")
    a.plot(*star, "k*", ms=14, label="LS minimizer")
    for k in np.linspace(0, run.xs.shape[1] - 1, 3).astype(int):
        cov = lr**2 * noise.weighted_cov(prob, mean[k], wts)
        _ellipse(a, mean[k], cov, 2.0, fc="tab:purple", ec="tab:purple", alpha=0.3)
    a.plot([], [], "o", color="tab:purple", alpha=0.5, label="2 s.d., one step's noise")
    if sigma > 0 and lr * np.linalg.eigvalsh(np.einsum("t,tij->ij", wts, prob.hessians)).max() < 2:
        _ellipse(a, star, dilemma.stationary_cov(prob, wts, noise, lr), 2.0, fc="none", ec="tab:red", lw=1.5)
        a.plot([], [], "o", mfc="none", mec="tab:red", label="2 s.d., stationary spread")
    a.set_xlim(-1.6, 1.6)
    a.set_ylim(-0.9, 1.6)
    a.set_aspect("equal")
    a.set_xlabel("$x_1$")
    a.set_ylabel("$x_2$")
    a.legend(fontsize=7.5, loc="lower left", ncol=2, handlelength=1.2, columnspacing=0.8)
    dev = run.deviation_fraction(observed=True)
    conf = run.conflict_fraction(observed=True)
    a.set_title(f"{kind} noise, c={corr:+.2f}: {100*conf:.0f}% of steps conflict, {100*dev:.0f}% deviate", fontsize=9.5)
    k = np.arange(run.grads.shape[1])
    b.semilogy(k, run.joint_energy(observed=True).mean(0), color="tab:red", label=r"observed $E\|\hat g_{joint}\|^2$")
    b.semilogy(k, run.joint_energy(observed=False).mean(0), color="k", label=r"drift $\|g_{joint}\|^2$")
    b.set_ylabel("energy")
    b.yaxis.set_minor_formatter(NullFormatter())  # minor log labels crowd a small panel
    b.legend(fontsize=8)
    b.set_title("joint-gradient energy over time (mean over seeds)", fontsize=9.5)
    c.plot(k, np.nanmean(run.energy_ratio(observed=False), 0), "k-", label="energy ratio (drift)")
    c.plot(k, np.nanmean(dilemma.gradient_cosine(run.grads), 0), "-", color="tab:brown", label=r"$\cos\varphi$ (drift)")
    c.axhline(0, color="grey", lw=0.5)
    c.set_ylim(-1.05, 2.05)
    c.set_xlabel("step")
    c.legend(fontsize=8)


def _landscape_axes(figsize=(9.5, 4.3)):
    fig = plt.figure(figsize=figsize)
    gs = fig.add_gridspec(2, 2, width_ratios=[1.25, 1])
    return fig, (fig.add_subplot(gs[:, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1]))


LANDSCAPE_DEFAULTS = dict(phi0_deg=120.0, w=0.5, sigma=0.5, corr=0.0, lr=0.1, steps=60, condition=1.0,
                          kind="isotropic", n_seeds=32, seed=0)


def landscape_figure(**params):
    """The landscape view for the given parameters (defaults: ``LANDSCAPE_DEFAULTS``)."""
    p = {**LANDSCAPE_DEFAULTS, **params}
    fig, axes = _landscape_axes()
    _draw_landscape(axes, **p)
    fig.tight_layout()
    return fig


def landscape_widget(**initial):
    """Sliders: start conflict angle, weight, noise scale and correlation, noise kind, problem
    family (condition number), learning rate and steps.

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """
    import ipywidgets as W

    p = {**LANDSCAPE_DEFAULTS, **initial}

    def show(phi0_deg, w, sigma, corr, kind, condition, lr, steps):
        landscape_figure(phi0_deg=phi0_deg, w=w, sigma=sigma, corr=corr, kind=kind, condition=condition,
                         lr=lr, steps=steps, n_seeds=p["n_seeds"], seed=p["seed"])
        plt.show()

    cu = dict(continuous_update=False)
    return W.interactive(
        show,
        phi0_deg=W.FloatSlider(value=p["phi0_deg"], min=0, max=180, step=5, description="start angle φ₀", **cu),
        w=W.FloatSlider(value=p["w"], min=0, max=1, step=0.05, description="weight w", **cu),
        sigma=W.FloatSlider(value=p["sigma"], min=0, max=3, step=0.1, description="noise σ", **cu),
        corr=W.FloatSlider(value=p["corr"], min=-1, max=1, step=0.1, description="noise corr c", **cu),
        kind=W.Dropdown(options=list(dilemma.NOISE_KINDS), value=p["kind"], description="noise kind"),
        condition=W.Dropdown(options=[("isotropic bowls", 1.0), ("ill-conditioned bowls", 5.0)],
                             value=p["condition"], description="family"),
        lr=W.FloatSlider(value=p["lr"], min=0.01, max=0.3, step=0.01, description="lr η", **cu),
        steps=W.IntSlider(value=p["steps"], min=10, max=300, step=10, description="steps", **cu),
    )


def landscape_sweep(param: str = "corr", values=None, dpi: int = 70, **fixed):
    """Kernel-free form of :func:`landscape_widget`: one frame per value of ``param``
    (``values`` defaults to ``np.linspace(-1, 1, 11)``).

    Explained in: Chapter 3, §3.5 (noisy LS on a two-task landscape).
    """
    if param not in LANDSCAPE_DEFAULTS:
        raise ValueError(f"param must be one of {sorted(LANDSCAPE_DEFAULTS)}, got {param!r}")
    if values is None:
        values = np.linspace(-1, 1, 11)
    vals = _check_frames(values)
    p = {**LANDSCAPE_DEFAULTS, **fixed}
    fig, axes = _landscape_axes()

    def draw(v):
        _draw_landscape(axes, **{**p, param: v})
        fig.tight_layout()

    draw(vals[0])
    return _to_html(fig, draw, vals, dpi, interval=500)


# ----------------------------------------------------------------------------------------------
# 3. sharp and flat wells: does noisy LS escape?
# ----------------------------------------------------------------------------------------------
_DEFAULT_WELLS = SharpFlatWells()  # frozen, so one shared default instance is safe (and a stable cache key)


@lru_cache(maxsize=64)
def wells_minima(w: float = 0.5, problem: SharpFlatWells = _DEFAULT_WELLS) -> tuple[np.ndarray, np.ndarray]:
    """The sharp and the flat local minimum of the LS loss with weights ``(1 - w, w)``.

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    wts = dilemma.two_task_weights(w)
    s = dilemma.descend(problem, wts, problem.sharp_center, lr=0.01, steps=3000)
    f = dilemma.descend(problem, wts, problem.flat_center, lr=0.01, steps=3000)
    return s, f


WELLS_DEFAULTS = dict(sigma=2.5, corr=0.0, w=0.5, step_scale=1.0, lr=0.05, steps=400, n_seeds=40, seed=0)


def _draw_wells(axes, sigma, corr, w, step_scale, lr, steps, n_seeds, seed, problem=_DEFAULT_WELLS) -> None:
    a, b = axes
    a.clear()
    b.clear()
    wts = dilemma.two_task_weights(w)
    s, f = wells_minima(float(w), problem)
    noise = dilemma.TaskNoise(sigma=sigma, corr=corr)
    run = dilemma.simulate_ls(problem, wts, noise, lr=lr, steps=int(steps), x0=s, n_seeds=n_seeds, seed=seed,
                        step_scale=step_scale, record_grads=False)
    xg, yg = np.meshgrid(np.linspace(-2.0, 2.3, 151), np.linspace(-1.6, 1.6, 121))
    Lg = problem.weighted_loss(np.stack([xg, yg], -1), wts)
    a.contourf(xg, yg, Lg, levels=20, cmap="Greys_r", alpha=0.55)
    a.contour(xg, yg, Lg, levels=20, colors="grey", linewidths=0.3)
    for k in range(min(10, n_seeds)):
        a.plot(run.xs[k, :, 0], run.xs[k, :, 1], "-", lw=0.4, alpha=0.6, color="tab:green")
    esc = dilemma.escaped(run.final, s, f)
    a.plot(run.final[~esc, 0], run.final[~esc, 1], ".", color="tab:blue", ms=5, label="ended in sharp well")
    a.plot(run.final[esc, 0], run.final[esc, 1], ".", color="tab:red", ms=5, label="escaped to flat well")
    a.plot(*s, "kx", ms=9, mew=2)
    a.plot(*f, "k+", ms=11, mew=2)
    a.set_xlim(-2.0, 2.3)
    a.set_ylim(-1.6, 1.6)
    a.set_aspect("equal")
    a.set_xlabel("$x_1$")
    a.set_ylabel("$x_2$")
    a.legend(fontsize=7, loc="lower left")
    var = float(dilemma.weighted_noise_variance(wts, noise.sigmas, corr))
    a.set_title(f"σ={sigma:.1f}, c={corr:+.1f}, w={w:.2f}, κ={step_scale:.1f}: "
                f"{int(esc.sum())}/{n_seeds} escaped", fontsize=9)
    d_s = np.linalg.norm(run.xs - s, axis=-1)
    d_f = np.linalg.norm(run.xs - f, axis=-1)
    b.plot(np.arange(run.xs.shape[1]), (d_f < d_s).mean(0), color="tab:red")
    b.set_ylim(-0.02, 1.02)
    b.set_xlabel("step")
    b.set_ylabel("fraction of seeds in the flat well")
    b.set_title(f"weighted noise variance {var:.2f}; temperature κη·Var/2 = {step_scale*lr*var/2:.3f}", fontsize=8)


def wells_figure(**params):
    """Noisy LS from the sharp minimum: trajectories, end points and the escaped fraction over time."""
    p = {**WELLS_DEFAULTS, **params}
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8), gridspec_kw=dict(width_ratios=[1.4, 1]))
    _draw_wells(axes, **p)
    fig.tight_layout()
    return fig


def wells_widget(**initial):
    """Sliders: noise scale, cross-task correlation, weight, energy factor kappa, lr and steps.

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    import ipywidgets as W

    p = {**WELLS_DEFAULTS, **initial}

    def show(sigma, corr, w, step_scale, lr, steps):
        wells_figure(sigma=sigma, corr=corr, w=w, step_scale=step_scale, lr=lr, steps=steps,
                     n_seeds=p["n_seeds"], seed=p["seed"])
        plt.show()

    cu = dict(continuous_update=False)
    return W.interactive(
        show,
        sigma=W.FloatSlider(value=p["sigma"], min=0, max=4, step=0.25, description="noise σ", **cu),
        corr=W.FloatSlider(value=p["corr"], min=-1, max=1, step=0.1, description="noise corr c", **cu),
        w=W.FloatSlider(value=p["w"], min=0.1, max=0.9, step=0.05, description="weight w", **cu),
        step_scale=W.FloatSlider(value=p["step_scale"], min=0.5, max=3, step=0.25, description="energy κ", **cu),
        lr=W.FloatSlider(value=p["lr"], min=0.01, max=0.07, step=0.01, description="lr η", **cu),
        steps=W.IntSlider(value=p["steps"], min=100, max=1000, step=100, description="steps", **cu),
    )


def wells_small_multiples(param: str = "corr", values=(-0.8, 0.0, 0.8), dpi: int = 70, **fixed):
    """Kernel-free form of :func:`wells_widget`: one row per value of ``param``.

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    if param not in WELLS_DEFAULTS:
        raise ValueError(f"param must be one of {sorted(WELLS_DEFAULTS)}, got {param!r}")
    vals = _check_frames(values)
    if len(vals) > 6:
        raise ValueError("small multiples take at most 6 values")
    p = {**WELLS_DEFAULTS, **fixed}
    fig, axes = plt.subplots(len(vals), 2, figsize=(10.0, 3.3 * len(vals)), dpi=dpi,
                             gridspec_kw=dict(width_ratios=[1.4, 1]), squeeze=False)
    for row, v in zip(axes, vals, strict=True):
        _draw_wells(row, **{**p, param: v})
    fig.tight_layout()
    return fig


def plot_escape_counts(corrs, sigmas, counts, n_seeds: int, w: float = 0.5, kappas=None, kappa_counts=None,
                       kappa_corrs=None):
    """Escape counts against the noise correlation (one line per sigma), the same counts against
    the weighted noise's standard deviation (do they collapse onto one curve?), and optionally
    against the energy factor kappa.

    Explained in: Chapter 3, §3.6 (a sharp minimum that more noise would escape).
    """
    corrs, sigmas, counts = np.asarray(corrs), np.asarray(sigmas), np.asarray(counts)
    if counts.shape != (len(sigmas), len(corrs)):
        raise ValueError(f"counts must have shape (len(sigmas), len(corrs)) = {(len(sigmas), len(corrs))}, "
                         f"got {counts.shape}")
    ncol = 3 if kappas is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(3.6 * ncol, 3.4))
    wts = dilemma.two_task_weights(w)
    for s, row in zip(sigmas, counts, strict=True):
        axes[0].plot(corrs, row / n_seeds, "o-", ms=3, label=f"σ = {s:g}")
        sd = np.sqrt(dilemma.weighted_noise_variance(wts, np.array([s, s]), corrs))
        axes[1].plot(sd, row / n_seeds, "o", ms=4, label=f"σ = {s:g}")
    axes[0].set_xlabel("cross-task noise correlation c")
    axes[0].set_ylabel(f"fraction escaped ({n_seeds} seeds)")
    axes[0].legend(fontsize=7)
    axes[0].set_title("escape against c", fontsize=9)
    axes[1].set_xlabel("s.d. of the weighted noise, √Var")
    axes[1].set_title("same runs against √Var: one curve", fontsize=9)
    axes[1].legend(fontsize=7)
    if kappas is not None:
        kc = np.asarray(kappa_counts)
        for cc, row in zip(kappa_corrs, kc, strict=True):
            axes[2].plot(kappas, row / n_seeds, "s-", ms=3, label=f"c = {cc:g}")
        axes[2].set_xlabel("energy factor κ (multiplies the whole step)")
        axes[2].set_title("more energy: κ scales drift and noise", fontsize=9)
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)
    fig.tight_layout()
    return fig



KAPPA_STYLES = {"fixed steps": ("k", "o-"), "matched time": ("tab:red", "s-"),
                "matched temperature": ("tab:blue", "^-"), "matched both": ("tab:grey", "d--")}


def plot_kappa_decomposition(kappas, decomposition: dict, n_seeds: int):
    """Escaped fraction against the energy factor kappa for the four settings of
    :func:`~camegrad_mini.dilemma.kappa_escape_decomposition` (left), and where each setting sits
    in (SDE time, temperature) (right).

    Explained in: Chapter 3, §3.6 (temperature or time? Taking kappa apart).
    """
    kappas = np.asarray(kappas, dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for name, d in decomposition.items():
        color, style = KAPPA_STYLES.get(name, ("tab:green", "o-"))
        if len(d["counts"]) != len(kappas):
            raise ValueError(f"counts of {name!r} must have one entry per kappa")
        a.plot(kappas, np.asarray(d["counts"]) / n_seeds, style, color=color, ms=4, label=name)
        b.plot(d["time"], d["temperature"], style, color=color, ms=4, label=name)
    a.set_xlabel("energy factor κ (multiplies the whole step)")
    a.set_ylabel(f"fraction escaped ({n_seeds} seeds)")
    a.set_ylim(-0.03, 1.03)
    a.legend(fontsize=7.5)
    a.set_title("what is left of κ's effect when time or temperature is matched", fontsize=9)
    b.set_xlabel(r"SDE time $t_{end}=\kappa\eta\cdot$steps")
    b.set_ylabel(r"temperature $\kappa\eta\,\mathrm{Var}/2$")
    b.set_title("the settings in (time, temperature)", fontsize=9)
    fig.tight_layout()
    return fig
