"""Figures, widgets and kernel-free sweeps for chapter 3 (the Double Dilemma).

Three interactive views, each with a static twin for the site:

* the **vector picture** (:func:`vector_figure`, :func:`vector_widget`, :func:`vector_sweep`):
  two task gradients, their weighted sum, and where that point sits in the drift-deviation region;
* the **landscape** (:func:`landscape_figure`, :func:`landscape_widget`, :func:`landscape_sweep`):
  two quadratic tasks, their Pareto set, noisy LS trajectories over seeds, one-step noise ellipses,
  and the joint gradient's energy over time;
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

from .. import dilemma as D
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
    magnitude ratio rho), with the drift-deviation boundary ``cos(theta) = -min(rho, 1/rho)``."""
    theta = np.linspace(0, np.pi, n)
    log_rho = np.linspace(-1.5, 1.5, n)
    T, LR = np.meshgrid(theta, log_rho)
    E = D.energy_ratio_closed_form(T, 10**LR)
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    im = ax.pcolormesh(np.degrees(T), LR, E, cmap="RdBu", vmin=0, vmax=2, shading="auto")
    cs = ax.contour(np.degrees(T), LR, E, levels=[0.25, 0.5, 0.75, 1.0, 1.5], colors="k", linewidths=0.6)
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    rho = 10**log_rho
    ax.plot(np.degrees(np.arccos(-np.minimum(rho, 1 / rho))), log_rho, "k--", lw=2,
            label=r"deviation boundary $\cos\theta=-\min(\rho,1/\rho)$")
    ax.set_xlabel(r"conflict angle $\theta$ between $g_0$ and $g_1$ (degrees)")
    ax.set_ylabel(r"$\log_{10}\rho,\ \rho=\omega_1\|g_1\|/(\omega_0\|g_0\|)$")
    ax.set_title("joint-gradient energy ratio (colour); drift deviates right of the dashed line", fontsize=9)
    fig.colorbar(im, ax=ax, label="energy ratio")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_diffusion_curves():
    """Two panels: weighted isotropic noise variance against the noise correlation ``c``, and the
    diffusion trace of gradient-aligned noise against the conflict angle for several ``c``."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    c = np.linspace(-1, 1, 201)
    for w, s1 in ((0.5, 1.0), (0.8, 1.0), (0.8, 0.25)):
        var = D.weighted_noise_variance(D.two_task_weights(w), np.array([1.0, s1]), c)
        a.plot(c, var, label=rf"$\omega=({1-w:.1f},{w:.1f})$, $s_1/s_0={s1:g}$")
    a.set_xlabel(r"cross-task noise correlation $c$")
    a.set_ylabel(r"Var$(\omega_0\xi_0+\omega_1\xi_1)$ per coordinate ($s_0=1$)")
    a.set_title("additive noise: decays as c → −1; no angle in sight", fontsize=9)
    a.legend(fontsize=7)
    theta = np.linspace(0, np.pi, 181)
    w = D.two_task_weights(0.5)
    for cc in (-1.0, 0.0, 0.5, 1.0):
        tr = w[0] ** 2 + w[1] ** 2 + 2 * cc * w[0] * w[1] * np.cos(theta)  # sigma = |g_i| = 1
        b.plot(np.degrees(theta), tr, label=f"c = {cc:g}" + ("  (= energy)" if cc == 1 else ""))
    b.set_xlabel(r"conflict angle $\theta$ (degrees)")
    b.set_ylabel(r"tr Cov (weighted noise), $\sigma=\|g_i\|=1$")
    b.set_title(r"gradient-aligned noise $\xi_i=\sigma\zeta_i g_i$, $\omega=(0.5,0.5)$", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_deviation_region(r_values=(1.0, 3.0, 10.0), n: int = 241, mark=None):
    """Small multiples over the magnitude ratio ``r``: the (angle, weight) region where
    ``<g_joint, g_i> < 0`` for some task, shaded from *direct* inner products on a grid, with the
    closed-form thresholds ``w_lo``, ``w_hi`` drawn on top. ``mark=(theta, w, r)`` adds a point
    to the panel with that ``r``."""
    r_values = list(r_values)
    theta = np.linspace(0, np.pi, n)
    wgrid = np.linspace(0, 1, n)
    fig, axes = plt.subplots(1, len(r_values), figsize=(3.3 * len(r_values), 3.2), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], r_values):
        T, W = np.meshgrid(theta, wgrid)
        G = D.polar_gradients(T, r)  # (n, n, 2, 2)
        w_stack = np.stack([1 - W, W], -1)
        gj = (G * w_stack[..., None]).sum(-2)
        al = np.einsum("...ij,...j->...i", G, gj)
        hurt0, hurt1 = al[..., 0] < 0, al[..., 1] < 0
        code = np.where(hurt0, 1.0, np.where(hurt1, 2.0, 0.0))
        ax.contourf(np.degrees(T), W, code, levels=[-0.5, 0.5, 1.5, 2.5],
                    colors=["white", "#9ecae1", "#fdd0a2"])
        w_lo, w_hi = D.deviation_weight_thresholds(theta, r)
        conf = np.cos(theta) < 0
        ax.plot(np.degrees(theta[conf]), w_lo[conf], "k-", lw=1.2)
        ax.plot(np.degrees(theta[conf]), w_hi[conf], "k--", lw=1.2)
        ax.axvline(90, color="grey", lw=0.6, ls=":")
        frac = D.deviation_area_fraction(r)
        ax.set_title(f"r = |g1|/|g0| = {r:g}; deviating area {frac:.2f}", fontsize=9)
        ax.set_xlabel(r"conflict angle $\theta$ (degrees)")
        if mark is not None and np.isclose(mark[2], r):
            ax.plot(np.degrees(mark[0]), mark[1], "k*", ms=12)
    axes[0, 0].set_ylabel(r"task-1 weight $w$  ($\omega=(1-w,w)$)")
    axes[0, 0].text(3, 0.9, "blue: task 0 hurt\norange: task 1 hurt\nsolid $w_{lo}$, dashed $w_{hi}$",
                    fontsize=7, va="top", bbox=dict(fc="white", ec="none", alpha=0.7))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# 1. the vector picture
# ----------------------------------------------------------------------------------------------
def _draw_vectors(axes, theta: float, w: float, r: float) -> None:
    a, b = axes
    a.clear()
    b.clear()
    G = D.polar_gradients(theta, r)
    wts = D.two_task_weights(w)
    gj = D.joint_gradient(G, wts)
    al = D.task_alignment(G, wts)
    ratio = float(D.energy_ratio(G, wts))
    lim = 1.15 * max(1.0, r)
    for i in range(2):
        a.annotate("", xy=G[i], xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=TASK_COLORS[i], lw=1.2, alpha=0.5))
        a.annotate("", xy=wts[i] * G[i], xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=TASK_COLORS[i], lw=2.2))
        a.text(*(1.06 * G[i]), f"$g_{i}$" + (" (hurt)" if al[i] < 0 else ""), color=TASK_COLORS[i], fontsize=9)
    a.annotate("", xy=gj, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="k", lw=2.5))
    a.text(*(gj + 0.05 * lim), r"$g_{joint}$", fontsize=10)
    a.set_xlim(-lim, lim)
    a.set_ylim(-0.35 * lim, lim)
    a.set_aspect("equal")
    a.axhline(0, color="grey", lw=0.5)
    a.axvline(0, color="grey", lw=0.5)
    a.set_xlabel("gradient coordinate 1")
    a.set_ylabel("gradient coordinate 2")
    a.set_title(rf"$\theta$={np.degrees(theta):.0f}°, w={w:.2f}, r={r:.2f}: energy ratio {ratio:.2f}, "
                + ("deviation" if (al < 0).any() else "no deviation"), fontsize=9)
    theta_g = np.linspace(0, np.pi, 181)
    w_lo, w_hi = D.deviation_weight_thresholds(theta_g, r)
    conf = np.cos(theta_g) < 0
    b.fill_between(np.degrees(theta_g), 0, np.where(conf, w_lo, 0), color="#fdd0a2", label="task 1 hurt")
    b.fill_between(np.degrees(theta_g), np.where(conf, w_hi, 1), 1, color="#9ecae1", label="task 0 hurt")
    b.plot(np.degrees(theta), w, "k*", ms=13)
    b.set_xlim(0, 180)
    b.set_ylim(0, 1)
    b.set_xlabel(r"conflict angle $\theta$ (degrees)")
    b.set_ylabel("task-1 weight w")
    b.set_title(f"deviation region at r = {r:.2f}", fontsize=9)
    b.legend(fontsize=8, loc="center left")


def vector_figure(theta: float = np.radians(120), w: float = 0.8, r: float = 1.0):
    """The two task gradients (thin), weighted (thick), their sum, and the (theta, w) region."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))
    _draw_vectors(axes, theta, w, r)
    fig.tight_layout()
    return fig


def vector_widget(theta_deg: float = 120.0, w: float = 0.8, r: float = 1.0):
    """Sliders for the conflict angle (degrees), the weight of task 1 and the magnitude ratio."""
    import ipywidgets as W

    def show(theta_deg, w, r):
        vector_figure(np.radians(theta_deg), w, r)
        plt.show()

    return W.interactive(
        show,
        theta_deg=W.FloatSlider(value=theta_deg, min=0, max=180, step=5, description="angle (°)", continuous_update=False),
        w=W.FloatSlider(value=w, min=0, max=1, step=0.05, description="weight w", continuous_update=False),
        r=W.FloatLogSlider(value=r, base=10, min=-1, max=1, step=0.05, description="|g1|/|g0|", continuous_update=False),
    )


def vector_sweep(thetas_deg=np.arange(90, 181, 5), w: float = 0.8, r: float = 1.0, dpi: int = 70):
    """Kernel-free form of :func:`vector_widget`: one frame per conflict angle."""
    vals = _check_frames(thetas_deg)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9))

    def draw(t):
        _draw_vectors(axes, np.radians(t), w, r)
        fig.tight_layout()

    draw(vals[0])
    return _to_html(fig, draw, vals, dpi, interval=400)


# ----------------------------------------------------------------------------------------------
# 2. the two-task landscape with noisy LS
# ----------------------------------------------------------------------------------------------
def _ellipse(ax, center, cov, n_sd: float = 2.0, **kw) -> None:
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0, None)
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    ax.add_patch(Ellipse(center, 2 * n_sd * np.sqrt(vals[1]), 2 * n_sd * np.sqrt(vals[0]), angle=angle, **kw))


def landscape_run(theta0_deg=120.0, w=0.5, sigma=0.5, corr=0.0, lr=0.1, steps=60, condition=1.0,
                  kind="isotropic", n_seeds=32, seed=0):
    """The problem, weights, noise and :class:`~camegrad_mini.dilemma.LSRun` behind the landscape view."""
    prob = D.conflict_pair(np.radians(theta0_deg), condition=condition)
    wts = D.two_task_weights(w)
    noise = D.TaskNoise(sigma=sigma, corr=corr, kind=kind)
    run = D.simulate_ls(prob, wts, noise, lr=lr, steps=int(steps), x0=(0.0, 0.0), n_seeds=n_seeds, seed=seed)
    return prob, wts, noise, run


def _draw_landscape(axes, theta0_deg, w, sigma, corr, lr, steps, condition, kind, n_seeds, seed) -> None:
    a, b, c = axes
    for ax in axes:
        ax.clear()
    prob, wts, noise, run = landscape_run(theta0_deg, w, sigma, corr, lr, steps, condition, kind, n_seeds, seed)
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
        _ellipse(a, star, D.stationary_cov(prob, wts, noise, lr), 2.0, fc="none", ec="tab:red", lw=1.5)
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
    c.plot(k, np.nanmean(D.gradient_cosine(run.grads), 0), "-", color="tab:brown", label=r"$\cos\theta$ (drift)")
    c.axhline(0, color="grey", lw=0.5)
    c.set_ylim(-1.05, 2.05)
    c.set_xlabel("step")
    c.legend(fontsize=8)


def _landscape_axes(figsize=(9.5, 4.3)):
    fig = plt.figure(figsize=figsize)
    gs = fig.add_gridspec(2, 2, width_ratios=[1.25, 1])
    return fig, (fig.add_subplot(gs[:, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 1]))


LANDSCAPE_DEFAULTS = dict(theta0_deg=120.0, w=0.5, sigma=0.5, corr=0.0, lr=0.1, steps=60, condition=1.0,
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
    family (condition number), learning rate and steps."""
    import ipywidgets as W

    p = {**LANDSCAPE_DEFAULTS, **initial}

    def show(theta0_deg, w, sigma, corr, kind, condition, lr, steps):
        landscape_figure(theta0_deg=theta0_deg, w=w, sigma=sigma, corr=corr, kind=kind, condition=condition,
                         lr=lr, steps=steps, n_seeds=p["n_seeds"], seed=p["seed"])
        plt.show()

    cu = dict(continuous_update=False)
    return W.interactive(
        show,
        theta0_deg=W.FloatSlider(value=p["theta0_deg"], min=0, max=180, step=5, description="start angle", **cu),
        w=W.FloatSlider(value=p["w"], min=0, max=1, step=0.05, description="weight w", **cu),
        sigma=W.FloatSlider(value=p["sigma"], min=0, max=3, step=0.1, description="noise σ", **cu),
        corr=W.FloatSlider(value=p["corr"], min=-1, max=1, step=0.1, description="noise corr c", **cu),
        kind=W.Dropdown(options=list(D.NOISE_KINDS), value=p["kind"], description="noise kind"),
        condition=W.Dropdown(options=[("isotropic bowls", 1.0), ("ill-conditioned bowls", 5.0)],
                             value=p["condition"], description="family"),
        lr=W.FloatSlider(value=p["lr"], min=0.01, max=0.3, step=0.01, description="lr η", **cu),
        steps=W.IntSlider(value=p["steps"], min=10, max=300, step=10, description="steps", **cu),
    )


def landscape_sweep(param: str = "corr", values=np.linspace(-1, 1, 11), dpi: int = 70, **fixed):
    """Kernel-free form of :func:`landscape_widget`: one frame per value of ``param``."""
    if param not in LANDSCAPE_DEFAULTS:
        raise ValueError(f"param must be one of {sorted(LANDSCAPE_DEFAULTS)}, got {param!r}")
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
@lru_cache(maxsize=64)
def wells_minima(w: float = 0.5, problem: SharpFlatWells = SharpFlatWells()) -> tuple[np.ndarray, np.ndarray]:
    """The sharp and the flat local minimum of the LS loss with weights ``(1 - w, w)``."""
    wts = D.two_task_weights(w)
    s = D.descend(problem, wts, problem.sharp_center, lr=0.01, steps=3000)
    f = D.descend(problem, wts, problem.flat_center, lr=0.01, steps=3000)
    return s, f


WELLS_DEFAULTS = dict(sigma=2.5, corr=0.0, w=0.5, step_scale=1.0, lr=0.05, steps=400, n_seeds=40, seed=0)


def _draw_wells(axes, sigma, corr, w, step_scale, lr, steps, n_seeds, seed, problem=SharpFlatWells()) -> None:
    a, b = axes
    a.clear()
    b.clear()
    wts = D.two_task_weights(w)
    s, f = wells_minima(float(w), problem)
    noise = D.TaskNoise(sigma=sigma, corr=corr)
    run = D.simulate_ls(problem, wts, noise, lr=lr, steps=int(steps), x0=s, n_seeds=n_seeds, seed=seed,
                        step_scale=step_scale, record_grads=False)
    xg, yg = np.meshgrid(np.linspace(-2.0, 2.3, 151), np.linspace(-1.6, 1.6, 121))
    Lg = problem.weighted_loss(np.stack([xg, yg], -1), wts)
    a.contourf(xg, yg, Lg, levels=20, cmap="Greys_r", alpha=0.55)
    a.contour(xg, yg, Lg, levels=20, colors="grey", linewidths=0.3)
    for k in range(min(10, n_seeds)):
        a.plot(run.xs[k, :, 0], run.xs[k, :, 1], "-", lw=0.4, alpha=0.6, color="tab:green")
    esc = D.escaped(run.final, s, f)
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
    var = float(D.weighted_noise_variance(wts, noise.sigmas, corr))
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
    """Sliders: noise scale, cross-task correlation, weight, energy factor kappa, lr and steps."""
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
    """Kernel-free form of :func:`wells_widget`: one row per value of ``param``."""
    if param not in WELLS_DEFAULTS:
        raise ValueError(f"param must be one of {sorted(WELLS_DEFAULTS)}, got {param!r}")
    vals = _check_frames(values)
    if len(vals) > 6:
        raise ValueError("small multiples take at most 6 values")
    p = {**WELLS_DEFAULTS, **fixed}
    fig, axes = plt.subplots(len(vals), 2, figsize=(10.0, 3.3 * len(vals)), dpi=dpi,
                             gridspec_kw=dict(width_ratios=[1.4, 1]), squeeze=False)
    for row, v in zip(axes, vals):
        _draw_wells(row, **{**p, param: v})
    fig.tight_layout()
    return fig


def plot_escape_counts(corrs, sigmas, counts, n_seeds: int, w: float = 0.5, kappas=None, kappa_counts=None,
                       kappa_corrs=None):
    """Escape counts against the noise correlation (one line per sigma), the same counts against
    the weighted noise's standard deviation (do they collapse onto one curve?), and optionally
    against the energy factor kappa."""
    corrs, sigmas, counts = np.asarray(corrs), np.asarray(sigmas), np.asarray(counts)
    if counts.shape != (len(sigmas), len(corrs)):
        raise ValueError(f"counts must have shape (len(sigmas), len(corrs)) = {(len(sigmas), len(corrs))}, got {counts.shape}")
    ncol = 3 if kappas is not None else 2
    fig, axes = plt.subplots(1, ncol, figsize=(3.6 * ncol, 3.4))
    wts = D.two_task_weights(w)
    for s, row in zip(sigmas, counts):
        axes[0].plot(corrs, row / n_seeds, "o-", ms=3, label=f"σ = {s:g}")
        sd = np.sqrt(D.weighted_noise_variance(wts, np.array([s, s]), corrs))
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
        for cc, row in zip(kappa_corrs, kc):
            axes[2].plot(kappas, row / n_seeds, "s-", ms=3, label=f"c = {cc:g}")
        axes[2].set_xlabel("energy factor κ (multiplies the whole step)")
        axes[2].set_title("more energy: κ scales drift and noise", fontsize=9)
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)
    fig.tight_layout()
    return fig
