"""Figures for chapter 2 (SGD as an SDE): stationary covariances, weak errors, escapes.

Conventions: SGD is blue, the SDE (Euler-Maruyama with a small step, or the OU formula) orange,
the stochastic modified equation green, exact formulas are lines and simulations are markers or
histograms. Every builder returns a matplotlib ``Figure`` (or an HTML string for a kernel-free
sweep) and never calls ``plt.show()``, so a chapter decides where the figure appears.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..sde import stationary_cov_ou, stationary_cov_sgd

__all__ = [
    "SGD_COLOR",
    "SDE_COLOR",
    "SME_COLOR",
    "ellipse_points",
    "draw_covariance_ellipse",
    "plot_weak_errors",
    "plot_stationary_comparison",
    "plot_variance_ratio",
    "plot_double_well",
    "plot_escape_times",
    "plot_stationary_ellipses",
    "covariance_sweep_html",
]

SGD_COLOR = "tab:blue"
SDE_COLOR = "tab:orange"
SME_COLOR = "tab:green"


def ellipse_points(cov, n_std: float = 2.0, n: int = 200) -> np.ndarray:
    """Points ``(n, 2)`` of the ellipse ``{x : x^T cov^{-1} x = n_std^2}`` (a Gaussian's contour)."""
    cov = np.asarray(cov, dtype=float)
    if cov.shape != (2, 2):
        raise ValueError(f"cov must be 2x2, got shape {cov.shape}")
    w, V = np.linalg.eigh(0.5 * (cov + cov.T))
    if w.min() < 0:
        raise ValueError(f"cov must be positive semi-definite, got eigenvalues {w.tolist()}")
    t = np.linspace(0.0, 2.0 * np.pi, n)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    return n_std * circle * np.sqrt(w) @ V.T


def draw_covariance_ellipse(ax: Axes, cov, n_std: float = 2.0, **kwargs) -> None:
    """Draw the ``n_std`` contour of a centred Gaussian with covariance ``cov`` on ``ax``."""
    pts = ellipse_points(cov, n_std)
    ax.plot(pts[:, 0], pts[:, 1], **kwargs)


def plot_weak_errors(errors: Mapping[str, np.ndarray], t_end: float) -> Figure:
    """Log-log weak error of the mean against ``eta``: the SDE (slope 1) and the SME (slope 2).

    ``errors`` is the dict of :func:`camegrad_mini.sde.quadratic_mean_weak_errors`.

    Explained in: Chapter 2, §2.2 (weak order one, and the stochastic modified equation).
    """
    eta = np.asarray(errors["eta"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=90)
    ax.loglog(eta, errors["error_sde"], "o-", color=SDE_COLOR, label="SDE  (drift $-\\nabla L$)")
    ax.loglog(eta, errors["error_sme"], "s-", color=SME_COLOR,
              label="SME  (drift $-\\nabla L - \\frac{\\eta}{4}\\nabla|\\nabla L|^2$)")
    for err, p, ls in ((errors["error_sde"], 1, ":"), (errors["error_sme"], 2, "--")):
        ref = 0.4 * err[-1] * (eta / eta[-1]) ** p  # shifted down so it does not hide the data
        ax.loglog(eta, ref, ls, color="gray", lw=1, label=f"reference slope {p}")
    ax.set_xticks(eta)
    ax.set_xticklabels([f"{e:g}" for e in eta])
    ax.minorticks_off()
    ax.set_xlabel("learning rate $\\eta$")
    ax.set_ylabel(f"$|\\,\\mathbb{{E}}\\,\\theta_{{\\mathrm{{SGD}}}} - "
                  f"\\mathbb{{E}}\\,\\theta_{{\\mathrm{{model}}}}|$ at $t={t_end:g}$")
    ax.set_title("Weak error of the mean on a quadratic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_stationary_comparison(sgd_states: np.ndarray, em_states: np.ndarray, S_sgd, S_ou, H,
                               n_scatter: int = 800, bins: int = 60) -> Figure:
    """Left: SGD and fine Euler-Maruyama states with the 2-sigma ellipses of both formulas.

    Right: histograms of both along the sharpest direction of ``H`` (its top eigenvector ``u``)
    with the two Gaussian densities ``N(0, u^T S u)``. ``*_states`` have shape ``(n_chains, 2)``.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    sgd_states = np.asarray(sgd_states)
    em_states = np.asarray(em_states)
    if sgd_states.ndim != 2 or sgd_states.shape[1] != 2 or em_states.ndim != 2 or em_states.shape[1] != 2:
        raise ValueError("sgd_states and em_states must have shape (n_chains, 2)")
    S_sgd, S_ou, H = (np.asarray(m, dtype=float) for m in (S_sgd, S_ou, H))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 4.0), dpi=90)
    k = min(n_scatter, len(sgd_states), len(em_states))
    ax0.scatter(em_states[:k, 0], em_states[:k, 1], s=4, alpha=0.35, color=SDE_COLOR,
                label="Euler-Maruyama (small step)")
    ax0.scatter(sgd_states[:k, 0], sgd_states[:k, 1], s=4, alpha=0.35, color=SGD_COLOR, label="SGD")
    draw_covariance_ellipse(ax0, S_sgd, color=SGD_COLOR, lw=2, label="2σ, discrete Lyapunov (SGD)")
    draw_covariance_ellipse(ax0, S_ou, color=SDE_COLOR, lw=2, ls="--", label="2σ, continuous Lyapunov (OU)")
    ax0.set_aspect("equal")
    ax0.set_xlabel("$\\theta_1$")
    ax0.set_ylabel("$\\theta_2$")
    ax0.set_title("Stationary clouds (final state of each chain)")
    ax0.legend(fontsize=7, loc="upper left")

    u = np.linalg.eigh(H)[1][:, -1]
    p_sgd, p_em = sgd_states @ u, em_states @ u
    lim = 4.0 * np.sqrt(max(u @ S_sgd @ u, u @ S_ou @ u))
    edges = np.linspace(-lim, lim, bins + 1)
    ax1.hist(p_sgd, bins=edges, density=True, alpha=0.45, color=SGD_COLOR, label="SGD")
    ax1.hist(p_em, bins=edges, density=True, alpha=0.45, color=SDE_COLOR, label="Euler-Maruyama")
    z = np.linspace(-lim, lim, 400)
    for S, color, ls, name in ((S_sgd, SGD_COLOR, "-", "discrete Lyapunov"),
                               (S_ou, SDE_COLOR, "--", "continuous Lyapunov")):
        v = u @ S @ u
        ax1.plot(z, np.exp(-z**2 / (2 * v)) / np.sqrt(2 * np.pi * v), ls, color=color, lw=2, label=name)
    ax1.set_xlabel("$u^\\top\\theta$  ($u$: sharpest direction of $H$)")
    ax1.set_ylabel("density")
    ax1.set_title("Along the sharpest direction")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_variance_ratio(H, noise_cov, batch_size: int, points: Mapping[float, float] | None = None,
                        n: int = 300) -> Figure:
    """Ratio ``tr S_SGD / tr S_OU`` against ``eta lambda_max`` up to the stability limit 2.

    In the eigenbasis of ``H`` each direction's ratio is ``1 / (1 - eta lambda_i / 2)``; the
    sharpest direction's ratio is drawn as a dotted line. ``points`` maps ``eta lambda_max`` to
    an empirical trace ratio (from simulations) drawn as markers.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    H = np.asarray(H, dtype=float)
    lam = np.linalg.eigvalsh(H)
    x = np.linspace(0.01, 1.97, n)
    ratio = []
    for xl in x:
        eta = xl / lam.max()
        ratio.append(np.trace(stationary_cov_sgd(H, eta, noise_cov, batch_size))
                     / np.trace(stationary_cov_ou(H, eta, noise_cov, batch_size)))
    fig, ax = plt.subplots(figsize=(5.6, 3.7), dpi=90)
    ax.semilogy(x, ratio, color=SGD_COLOR, lw=2, label="trace ratio (discrete / continuous Lyapunov)")
    ax.semilogy(x, 1.0 / (1.0 - x / 2.0), ":", color="k", label="sharpest direction: $1/(1-\\eta\\lambda_{\\max}/2)$")
    if points:
        px = np.array(sorted(points))
        ax.semilogy(px, [points[p] for p in px], "o", color="tab:red", label="SGD simulation")
    ax.axvline(2.0, color="gray", lw=1)
    ax.text(1.96, 1.05, "stability limit\n$\\eta = 2/\\lambda_{\\max}$", ha="right", va="bottom", fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("$\\eta\\,\\lambda_{\\max}(H)$")
    ax.set_ylabel("stationary variance: SGD / OU")
    ax.set_title("Where the OU picture breaks down")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_double_well(problem, temperature: float | None = None, states: np.ndarray | None = None,
                     xlim: Sequence[float] = (-2.5, 4.0)) -> Figure:
    """The 1-D sharp/flat double well with its critical points, barriers and curvatures.

    With ``temperature`` the Gibbs density ``exp(-L/T)/Z`` (the SDE's stationary law) is drawn on
    a second axis, and with ``states`` (final SGD positions) their histogram beside it.

    Explained in: Chapter 2, §2.5 (sharp versus flat minima: escape times).
    """
    cp = problem.critical_points()
    xs = np.linspace(xlim[0], xlim[1], 800)
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=90)
    ax.plot(xs, problem.loss(xs), color="k", lw=2, label="loss $L(x)$")
    for name, color in (("sharp", "tab:red"), ("saddle", "gray"), ("flat", "tab:green")):
        xc = cp[name]
        label = f"{name}: $L''={float(problem.hess(xc)):.2f}$"
        ax.plot([xc], [problem.loss(xc)], "o", color=color, ms=8, label=label)
    ax.set_xlabel("$x$")
    ax.set_ylabel("loss")
    ax.set_xlim(*xlim)
    handles, labels = ax.get_legend_handles_labels()
    if temperature is not None:
        ax2 = ax.twinx()
        dens = np.exp(-(problem.loss(xs) - problem.loss(xs).min()) / temperature)
        dens /= np.trapezoid(dens, xs)  # normalized on the plotted range (numpy >= 2, the package's floor)
        if states is not None:
            # matplotlib's stub lists bins as int | Sequence[float] | str, but hist takes any array of edges
            ax2.hist(np.ravel(states), bins=np.linspace(xlim[0], xlim[1], 90),  # type: ignore[arg-type]
                     density=True, color=SGD_COLOR, alpha=0.35, label="SGD chains (final states)")
        ax2.plot(xs, dens, color=SDE_COLOR, lw=1.8, label=f"Gibbs density $e^{{-L/T}}/Z$, $T={temperature:.3f}$")
        ax2.set_ylabel("density")
        ax2.set_ylim(bottom=0)
        # draw the loss curve and its markers above the histogram
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    ax.set_title("A sharp and a flat minimum")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_escape_times(curves: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Mean escape time (log scale) against ``1 / T`` for each well.

    ``curves[name]`` holds arrays ``inv_T``, ``sim`` and ``sim_err`` (simulation, markers with error
    bars), ``exact`` (the SDE's exact mean first-passage time, solid) and ``kramers`` (dashed).
    On this plot the Arrhenius law ``tau ~ exp(Delta L / T)`` is a straight line of slope ``Delta L``.

    Explained in: Chapter 2, §2.5 (sharp versus flat minima: escape times).
    """
    colors = {"sharp": "tab:red", "flat": "tab:green"}
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=90)
    for name, c in curves.items():
        color = colors.get(name, None)
        x = np.asarray(c["inv_T"])
        ax.errorbar(x, c["sim"], yerr=2 * np.asarray(c["sim_err"]), fmt="o", color=color, capsize=3,
                    label=f"{name}: SGD simulation (±2 s.e.)")
        ax.plot(x, c["exact"], "-", color=color, lw=1.5, label=f"{name}: exact SDE first passage")
        ax.plot(x, c["kramers"], "--", color=color, lw=1.2, label=f"{name}: Kramers")
    ax.set_yscale("log")
    ax.set_xlabel("inverse noise temperature $1/T = 2B/(\\eta\\sigma^2)$")
    ax.set_ylabel("mean escape time  ($t = k\\eta$)")
    ax.set_title("Arrhenius law: escape time grows like $e^{\\Delta L/T}$")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _scaled_covs(H, noise_cov, batch_size: int, eta_lmax: float):
    lam = np.linalg.eigvalsh(np.asarray(H, dtype=float)).max()
    if not 0 < eta_lmax < 2:
        raise ValueError(f"eta_lmax must lie in (0, 2), below the stability limit; got {eta_lmax}")
    eta = eta_lmax / lam
    return (stationary_cov_sgd(H, eta, noise_cov, batch_size) / eta,
            stationary_cov_ou(H, eta, noise_cov, batch_size) / eta)


def plot_stationary_ellipses(H, noise_cov, batch_size: int, eta_lmax: float, lim: float | None = None) -> Figure:
    """2-sigma ellipses of SGD's and the OU process's stationary covariances at ``eta = eta_lmax / lambda_max``.

    Both covariances are divided by ``eta`` (the OU one is proportional to it), so the OU ellipse
    never moves and any change is SGD's discrete-time excess. Used by the chapter's slider.

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    S_sgd, S_ou = _scaled_covs(H, noise_cov, batch_size, eta_lmax)
    if lim is None:
        lim = 2.2 * np.sqrt(np.linalg.eigvalsh(S_sgd).max())
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=80)
    draw_covariance_ellipse(ax, S_sgd, color=SGD_COLOR, lw=2, label="SGD (discrete Lyapunov)")
    draw_covariance_ellipse(ax, S_ou, color=SDE_COLOR, lw=2, ls="--", label="OU (continuous Lyapunov)")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("$\\theta_1/\\sqrt{\\eta}$")
    ax.set_ylabel("$\\theta_2/\\sqrt{\\eta}$")
    ax.set_title(f"2σ ellipses, $\\eta\\lambda_{{\\max}} = {eta_lmax:.2f}$")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def covariance_sweep_html(H, noise_cov, batch_size: int, eta_lmax: Sequence[float], dpi: int = 70) -> str:
    """A kernel-free sweep (``to_jshtml``) of the two stationary ellipses as ``eta lambda_max`` grows.

    Each frame draws the 2-sigma ellipses of the discrete (SGD) and continuous (OU) Lyapunov
    covariances, normalized by ``eta`` so the OU ellipse stays fixed and the SGD one visibly
    inflates towards the stability limit. At most 30 frames (the site embeds every frame).

    Explained in: Chapter 2, §2.4 (numerics that check the algebra).
    """
    H = np.asarray(H, dtype=float)
    eta_lmax = list(eta_lmax)
    if not 1 <= len(eta_lmax) <= 30:
        raise ValueError(f"eta_lmax must have 1 to 30 values (frames), got {len(eta_lmax)}")
    if max(eta_lmax) >= 2 or min(eta_lmax) <= 0:
        raise ValueError("eta_lmax values must lie in (0, 2), below the stability limit")
    covs = [_scaled_covs(H, noise_cov, batch_size, e) for e in eta_lmax]
    lim = 2.2 * np.sqrt(max(np.linalg.eigvalsh(c[0]).max() for c in covs))
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=dpi)
    (l_sgd,) = ax.plot([], [], color=SGD_COLOR, lw=2, label="SGD (discrete Lyapunov)")
    (l_ou,) = ax.plot([], [], color=SDE_COLOR, lw=2, ls="--", label="OU (continuous Lyapunov)")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("$\\theta_1/\\sqrt{\\eta}$")
    ax.set_ylabel("$\\theta_2/\\sqrt{\\eta}$")
    ax.legend(fontsize=8, loc="upper left")
    title = ax.set_title("")
    fig.tight_layout()

    def frame(i):
        p1, p0 = ellipse_points(covs[i][0]), ellipse_points(covs[i][1])
        l_sgd.set_data(p1[:, 0], p1[:, 1])
        l_ou.set_data(p0[:, 0], p0[:, 1])
        title.set_text(f"2σ ellipses, $\\eta\\lambda_{{\\max}} = {eta_lmax[i]:.2f}$")
        return l_sgd, l_ou, title

    anim = FuncAnimation(fig, frame, frames=len(eta_lmax), interval=400, blit=False)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return html
