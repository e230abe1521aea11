"""Figures for chapter 5 (experiments on test problems): seed bands, end points, sensitivity curves.

Every builder takes an optional matplotlib ``Axes`` and returns the ``Axes`` it drew on. Spread
over seeds is drawn as mean ± one sample standard deviation (ddof=1), the same statistic the
chapter's tables print, so the figures and the tables agree. A standard deviation describes how
much single seeds differ; it is not an interval for the mean, and overlapping sd bars say nothing
about whether two settings differ. For that, :func:`plot_sensitivity` with ``paired=True`` draws
the paired difference from the default setting with its t-based confidence interval
(:func:`camegrad_mini.stats.paired_difference`). Methods keep one colour everywhere
(:data:`METHOD_COLORS`; unknown labels cycle through the default palette).

Legibility at the site's width (a content column of about 750 px): a figure of several panels
reads best with one legend for the whole figure instead of a small one in every panel. Every
builder therefore takes ``legend=False``; :func:`figure_legend` then draws one legend above the
panels from the handles of all of them (each label once). Legends drawn inside a panel use the
font size "small" (relative to ``font.size``), not a fixed tiny size.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from ..stats import paired_difference
from .pareto import plot_landscape

__all__ = ["METHOD_COLORS", "method_color", "figure_legend", "plot_bands", "plot_endpoints", "plot_positions",
           "plot_sensitivity"]

METHOD_COLORS = {
    "LS": "black",
    "PCGrad": "tab:purple",
    "MGDA": "tab:green",
    "CAGrad": "tab:brown",
    "CAME-Grad": "tab:red",
}
_CYCLE = ("tab:blue", "tab:orange", "tab:cyan", "tab:olive", "tab:pink", "tab:gray")
_LEGEND_SIZE = "small"  # a panel's own legend, relative to rcParams["font.size"]


def method_color(label: str, index: int = 0) -> str:
    """The colour of a method's label (fixed for the five methods, cycled otherwise)."""
    return METHOD_COLORS.get(label, _CYCLE[index % len(_CYCLE)])


def figure_legend(fig, axes, *, ncol: int | None = None, fontsize: str | float = "medium", **kwargs):
    """One legend for the whole figure, above its panels, from the handles of ``axes``.

    Each label appears once (the first handle with that label wins), in the order the panels
    drew them. Draw the panels with ``legend=False`` first. The legend goes outside the axes,
    so create the figure with ``layout="constrained"`` (then the panels make room for it).

    Args:
        fig: The figure.
        axes: The axes whose handles to collect (any nesting, e.g. the array of ``plt.subplots``).
        ncol: Columns of the legend (default: every label in one row).
        fontsize: Font size of the labels.
        **kwargs: Passed to ``fig.legend`` (e.g. ``loc``).

    Returns:
        The legend.

    Explained in: Chapter 5, §5.2 (the main comparison) and §5.7 (sensitivity).
    """
    handles: dict[str, object] = {}
    for ax in np.ravel(np.asarray(axes, dtype=object)):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if not lab.startswith("_"):
                handles.setdefault(lab, h)
    if not handles:
        raise ValueError("figure_legend: the axes have no labelled artists")
    kwargs.setdefault("loc", "outside upper center")
    return fig.legend(list(handles.values()), list(handles), ncol=ncol or len(handles), fontsize=fontsize,
                      frameon=False, **kwargs)


def _axes(ax: Axes | None, figsize=(5.0, 3.2)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=80)
    return ax


def plot_bands(curves: Mapping[str, np.ndarray], ax: Axes | None = None, *, ylabel: str = "metric",
               log: bool = False, every: int = 1, smooth: int = 1, title: str | None = None,
               legend: bool = True) -> Axes:
    """Mean ± sd over seeds of a per-step metric, one band per method.

    Args:
        curves: ``label -> (S, K)`` array (seeds by steps), S >= 2.
        ax: Axes to draw on (a new figure if None).
        ylabel: Y-axis label.
        log: Log-scale y axis (the band's lower edge is clipped to stay positive).
        every: Plot every ``every``-th step (keeps the stored figure small).
        smooth: Moving-average window (in steps) applied to each seed's curve before the
            statistics; a noisy metric then shows where a method hovers rather than every jolt.
            The x value of a window is its last step.
        title: Optional title.
        legend: Draw a legend in the panel (False: leave it to :func:`figure_legend`).

    Explained in: Chapter 5, §5.2 (the main comparison).
    """
    if not curves:
        raise ValueError("curves must not be empty")
    if int(smooth) != smooth or smooth < 1:
        raise ValueError(f"smooth must be a positive integer, got {smooth}")
    ax = _axes(ax)
    for i, (label, values) in enumerate(curves.items()):
        v = np.asarray(values, dtype=float)
        if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < smooth:
            raise ValueError(f"curves[{label!r}] must have shape (seeds >= 2, steps >= smooth), got {v.shape}")
        if smooth > 1:
            c = np.cumsum(np.pad(v, ((0, 0), (1, 0))), axis=1)
            v = (c[:, smooth:] - c[:, :-smooth]) / smooth
        k = (np.arange(v.shape[1]) + smooth - 1)[::every]
        m, s = v.mean(0)[::every], v.std(0, ddof=1)[::every]
        lo = np.maximum(m - s, 1e-6 if log else -np.inf)
        color = method_color(label, i)
        ax.plot(k, m, color=color, lw=1.4, label=label)
        ax.fill_between(k, lo, m + s, color=color, alpha=0.18, lw=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=_LEGEND_SIZE, ncol=2)
    return ax


def plot_endpoints(problem, xs: Mapping[str, np.ndarray], ax: Axes | None = None, *,
                   xlim=(-2.0, 2.0), ylim=(-2.0, 2.0), trajectory_seed: int = 0, legend: bool = True) -> Axes:
    """The problem's landscape, one trajectory per method (seed ``trajectory_seed``) and every
    seed's last iterate (dots).

    Args:
        problem: A two-task problem from :mod:`camegrad_mini.problems`.
        xs: ``label -> (S, K + 1, 2)`` iterates (e.g. ``Run.xs``).
        ax: Axes (new figure if None).
        xlim, ylim: Plot window.
        trajectory_seed: Which seed's path to draw.
        legend: Draw a legend in the panel (False: leave it to :func:`figure_legend`).

    Explained in: Chapter 5, §5.2 (the main comparison).
    """
    if not xs:
        raise ValueError("xs must not be empty")
    ax = _axes(ax, figsize=(4.6, 4.2))
    plot_landscape(problem, ax=ax, xlim=xlim, ylim=ylim, n=81, legend=False)
    for i, (label, path) in enumerate(xs.items()):
        p = np.asarray(path, dtype=float)
        if p.ndim != 3 or p.shape[-1] != 2 or not 0 <= trajectory_seed < p.shape[0]:
            raise ValueError(f"xs[{label!r}] must be (S, K+1, 2) with seed {trajectory_seed} in range, got {p.shape}")
        c = method_color(label, i)
        ax.plot(p[trajectory_seed, :, 0], p[trajectory_seed, :, 1], color=c, lw=0.8, alpha=0.8)
        ax.plot(p[:, -1, 0], p[:, -1, 1], "o", color=c, ms=4, mec="white", mew=0.4, label=label)
    ax.plot(*np.asarray(next(iter(xs.values())))[trajectory_seed, 0], "k*", ms=9, label="start")
    if legend:
        ax.legend(fontsize=_LEGEND_SIZE, loc="upper left", framealpha=0.85)
    return ax


def plot_positions(positions: Mapping[str, np.ndarray], ax: Axes | None = None, *,
                   title: str | None = None, middle: tuple[float, float] = (0.25, 0.75)) -> Axes:
    """Where each method ends along the Pareto set: one row of dots (one per seed) per method.

    Args:
        positions: ``label -> (S,)`` positions in [0, 1] (0 = task 0's end, 1 = task 1's end).
        ax: Axes (new figure if None).
        title: Optional title.
        middle: The interval shaded as "the middle of the front".

    Explained in: Chapter 5, §5.3 (where on the front?).
    """
    if not positions:
        raise ValueError("positions must not be empty")
    ax = _axes(ax, figsize=(5.0, 2.6))
    ax.axvspan(*middle, color="0.9", zorder=0)
    labels = list(positions)
    rng = np.random.default_rng(0)  # fixed vertical jitter, so that the figure is reproducible
    for i, label in enumerate(labels):
        p = np.asarray(positions[label], dtype=float).reshape(-1)
        y = i + rng.uniform(-0.15, 0.15, p.size)
        ax.plot(p, y, "o", color=method_color(label, i), ms=4, alpha=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("position along the Pareto set (0: task 0's optimum, 1: task 1's)")
    if title:
        ax.set_title(title)
    return ax


def plot_sensitivity(values: Sequence[float], curves: Mapping[str, np.ndarray], ax: Axes | None = None, *,
                     xlabel: str = "hyperparameter", ylabel: str = "metric", default: float | None = None,
                     log: bool = False, paired: bool = False, level: float = 0.95, legend: bool = True) -> Axes:
    """A metric against one hyperparameter, one curve per label, the default value marked.

    With ``paired=False`` each point is the mean over seeds with a bar of ± one sample standard
    deviation (the spread between seeds). With ``paired=True`` each point is the mean per-seed
    difference from the ``default`` grid value, ``metric(value) - metric(default)``, with its
    ``level`` t confidence interval as the bar (:func:`camegrad_mini.stats.paired_difference`;
    the runs must share their seeds), and a line at zero: a bar that misses zero is a difference
    the seeds resolve.

    Args:
        values: The hyperparameter grid, length G.
        curves: ``label -> (G, S)`` per-seed metric at each grid value (e.g. one per base optimizer).
        ax: Axes (new figure if None).
        xlabel, ylabel: Axis labels (with ``paired=True`` the y label reads "Δ <ylabel> vs default").
        default: The default value (the official code's), drawn as a dashed vertical line;
            required, and one of ``values``, when ``paired=True``.
        log: Log-scale y axis (not with ``paired=True``: differences can be negative).
        paired: Draw paired differences from the default with confidence intervals.
        level: Confidence level of the paired intervals.
        legend: Draw a legend in the panel, whose labels say what the bars are ("SGD (± sd)",
            "SGD (95% t-CI)"). With False the curves are labelled by their key alone ("SGD"), so
            that :func:`figure_legend` can share one legend between an sd panel and a paired
            panel; say what the bars are elsewhere (e.g. in column titles).

    Explained in: Chapter 5, §5.7 (sensitivity to rho, nu and kappa).
    """
    if not curves:
        raise ValueError("curves must not be empty")
    x = np.asarray(values, dtype=float)
    ref = None
    if paired:
        if log:
            raise ValueError("paired=True plots differences, which can be negative: log must be False")
        hits = np.flatnonzero(np.isclose(x, default)) if default is not None else np.array([], dtype=int)
        if hits.size != 1:
            raise ValueError(f"paired=True needs default to be one of values {list(x)}, got {default}")
        ref = int(hits[0])
    ax = _axes(ax, figsize=(3.6, 3.0))
    for i, (label, v) in enumerate(curves.items()):
        v = np.asarray(v, dtype=float)
        if v.shape[0] != x.size or v.ndim != 2 or v.shape[1] < 2:
            raise ValueError(f"curves[{label!r}] must have shape ({x.size}, seeds >= 2), got {v.shape}")
        c = _CYCLE[i % len(_CYCLE)]
        if ref is None:
            m, s = v.mean(1), v.std(1, ddof=1)
            ax.errorbar(x, m, yerr=s, color=c, marker="o", ms=4, capsize=3, lw=1.2,
                        label=f"{label} (± sd)" if legend else label)
        else:
            d = [paired_difference(row, v[ref], level) for row in v]
            m = np.array([e.mean for e in d])
            err = np.array([[e.mean - e.lo for e in d], [e.hi - e.mean for e in d]])
            ax.errorbar(x, m, yerr=err, color=c, marker="o", ms=4, capsize=3, lw=1.2,
                        label=f"{label} ({100 * level:g}% t-CI)" if legend else label)
    if ref is not None:
        ax.axhline(0.0, color="0.6", lw=0.8)
        ylabel = f"Δ {ylabel} vs default"
    if default is not None:
        ax.axvline(default, color="0.4", ls="--", lw=1, label="default (official code)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=_LEGEND_SIZE)
    return ax
