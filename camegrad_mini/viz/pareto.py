"""Figures and widgets for chapter 1: landscapes, Pareto sets, gradients and their common-descent cone.

Conventions shared by every builder (they match the book's text):

* task 0 (the report-generation role) is blue, task 1 (the clinical constraint) orange, the
  linear-scalarization gradient ``g_joint = w_0 g_0 + w_1 g_1`` black, the Pareto set red and
  the common-descent cone green;
* an *update direction* ``d`` is what an optimiser subtracts (``x <- x - eta d``); it decreases
  every task to first order iff ``<d, g_i> > 0`` for all ``i``: the cone
  ``C = {d : <d, g_i> > 0}``. In parameter space we draw where the point actually *moves*, i.e.
  ``-g_i`` and ``-C``; in gradient space we draw ``g_i`` and ``C`` themselves.

Every builder returns a matplotlib ``Figure``/``Axes``, an ipywidgets widget, or (for the
static site, where no Python kernel runs) an HTML string made by ``FuncAnimation.to_jshtml``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Wedge

from ..geometry import (ConflictMap, ScalarizationSweep, common_descent_arc, cosine, grid, hull_nearest_point,
                        pareto_stationarity_gap)

__all__ = [
    "TASK_COLORS",
    "plot_landscape",
    "plot_front",
    "draw_cone",
    "draw_gradients",
    "GradientScene",
    "gradient_figure",
    "plot_conflict_map",
    "plot_weight_sweep",
    "plot_scalarization_reach",
    "conflict_widget",
    "conflict_sweep_html",
]

TASK_COLORS = ("tab:blue", "tab:orange")
JOINT_COLOR = "black"
PARETO_COLOR = "tab:red"
CONE_COLOR = "tab:green"
TASK_LABELS = ("task 0 (report)", "task 1 (clinical)")


def _validate_weights(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.shape != (2,) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be two finite non-negative numbers, got {list(np.ravel(w))}")
    return w


def plot_landscape(problem, ax: Axes | None = None, xlim=(-2.0, 2.0), ylim=(-2.0, 2.0), n: int = 121,
                   levels: int = 8, pareto: bool = True, legend: bool = True) -> Axes:
    """Contours of both task losses over the plane, with the problem's Pareto set on top.

    Contour levels are quantiles of each loss on the grid, so both tasks get readable rings
    whatever their scale (the ill-conditioned pair spans two orders of magnitude).

    Explained in: Chapter 1, §1.3 (three two-dimensional test problems).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.0), dpi=80)
    X, Y, P = grid(xlim, ylim, n)
    L = problem.losses(P)
    for i in range(2):
        lv = np.unique(np.quantile(L[..., i], np.linspace(0.02, 0.9, levels)))
        ax.contour(X, Y, L[..., i], levels=lv, colors=TASK_COLORS[i], linewidths=0.8, alpha=0.7)
    handles = [Line2D([], [], color=TASK_COLORS[i], lw=1, label=f"$L_{i}$ contours") for i in range(2)]
    if pareto and hasattr(problem, "pareto_set"):
        ps = problem.pareto_set(201)
        ax.plot(ps[:, 0], ps[:, 1], color=PARETO_COLOR, lw=2.5, label="Pareto set")
        ax.plot(*ps[0], "o", color=TASK_COLORS[0], ms=6, mec="k")
        ax.plot(*ps[-1], "o", color=TASK_COLORS[1], ms=6, mec="k")
        handles.append(Line2D([], [], color=PARETO_COLOR, lw=2.5, label="Pareto set"))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$ (parameter)")
    ax.set_ylabel("$x_2$ (parameter)")
    ax.set_title(getattr(problem, "name", "problem"))
    if legend:
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.85)
    return ax


def plot_front(problem, ax: Axes | None = None, n: int = 201, **kwargs) -> Axes:
    """The Pareto front: the image ``(L_0, L_1)`` of the Pareto set in objective space.

    Explained in: Chapter 1, §1.3 (three two-dimensional test problems).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.0, 3.6), dpi=80)
    F = problem.losses(problem.pareto_set(n))
    kwargs.setdefault("color", PARETO_COLOR)
    kwargs.setdefault("lw", 2.0)
    kwargs.setdefault("label", "Pareto front")
    ax.plot(F[:, 0], F[:, 1], **kwargs)
    ax.set_xlabel("$L_0$ (report loss)")
    ax.set_ylabel("$L_1$ (clinical loss)")
    ax.set_title(f"front of {getattr(problem, 'name', 'problem')}")
    return ax


def draw_cone(ax: Axes, arc: tuple[float, float] | None, origin=(0.0, 0.0), radius: float = 1.0,
              flip: bool = False, **kwargs) -> Wedge | None:
    """Shade the arc of directions ``(start, end)`` (radians) as a wedge; ``flip`` draws ``-C``.

    Returns the patch, or ``None`` when the cone is empty (nothing is drawn).
    """
    if arc is None:
        return None
    start, end = np.degrees(arc[0]), np.degrees(arc[1])
    if flip:
        start, end = start + 180.0, end + 180.0
    kwargs.setdefault("color", CONE_COLOR)
    kwargs.setdefault("alpha", 0.25)
    kwargs.setdefault("lw", 0)
    patch = Wedge(tuple(origin), radius, start, end, **kwargs)
    ax.add_patch(patch)
    return patch


def _arrow(ax: Axes, origin, vec, color, label: str | None, lw: float = 2.0):
    tip = np.asarray(origin, dtype=float) + np.asarray(vec, dtype=float)
    ann = ax.annotate("", xy=tuple(tip), xytext=tuple(origin),
                      arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, shrinkA=0, shrinkB=0, mutation_scale=12))
    txt = None
    if label:
        txt = ax.annotate(label, xy=tuple(tip), xytext=(4, 4), textcoords="offset points", color=color, fontsize=9,
                          fontweight="bold")
    return ann, txt


def draw_gradients(ax: Axes, g0, g1, weights: Sequence[float] | np.ndarray = (1.0, 4.0), origin=(0.0, 0.0),
                   normalize: float | None = None, motion: bool = False, cone: bool = True,
                   hull: bool = True) -> dict:
    """Draw ``g_0``, ``g_1`` and ``g_joint = w_0 g_0 + w_1 g_1`` with the common-descent cone.

    ``normalize=r`` draws every arrow with length ``r`` (directions only, for parameter-space
    pictures where magnitudes would not fit); ``motion=True`` draws the movement directions
    ``-g`` and the wedge ``-C`` instead of ``g`` and ``C``. ``hull`` adds the segment
    ``[g_0, g_1]`` and its point nearest to 0 (zero length = Pareto stationary). Returns a dict
    of the artists drawn, keyed by role.
    """
    w = _validate_weights(weights)
    g0 = np.asarray(g0, dtype=float)
    g1 = np.asarray(g1, dtype=float)
    gj = w[0] * g0 + w[1] * g1
    sign = -1.0 if motion else 1.0
    vecs = {"g0": g0, "g1": g1, "joint": gj}
    if normalize is not None:
        vecs = {k: (normalize * v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v) for k, v in vecs.items()}
    radius = normalize if normalize is not None else 1.1 * float(max(np.linalg.norm(v) for v in vecs.values()))
    prefix = "$-" if motion else "$"
    out: dict = {}
    if cone:
        out["cone"] = draw_cone(ax, common_descent_arc([g0, g1]), origin=origin, radius=radius, flip=motion,
                                label="common descent" + (" (motion)" if motion else " cone $C$"))
    if hull and not motion:
        ax.plot([g0[0], g1[0]], [g0[1], g1[1]], ls="--", color="0.4", lw=1)
        p = hull_nearest_point(g0, g1)
        out["hull_point"] = ax.plot(*(np.asarray(origin) + p), "s", color="0.3", ms=5)[0]
    names = {"g0": f"{prefix}g_0$", "g1": f"{prefix}g_1$", "joint": f"{prefix}g_{{joint}}$"}
    colors = {"g0": TASK_COLORS[0], "g1": TASK_COLORS[1], "joint": JOINT_COLOR}
    for k, v in vecs.items():
        out[k] = _arrow(ax, origin, sign * v, colors[k], names[k], lw=1.6 if k == "joint" else 2.2)[0]
    return out


class GradientScene:
    """A two-panel picture of one point: the landscape (left) and gradient space (right).

    The static parts (contours, Pareto set) are drawn once; :meth:`update` redraws the point,
    its arrows and cones, so the same scene serves the static figure, the widget and the
    animation.
    """

    def __init__(self, problem, xlim=(-2.0, 2.0), ylim=(-2.0, 2.0), figsize=(8.6, 4.0), dpi: int = 70, n: int = 101):
        self.problem = problem
        self.fig, (self.ax_x, self.ax_g) = plt.subplots(1, 2, figsize=figsize, dpi=dpi)
        plot_landscape(problem, self.ax_x, xlim=xlim, ylim=ylim, n=n)
        self.ax_g.set_aspect("equal")
        self.ax_g.set_xlabel("gradient component 1")
        self.ax_g.set_ylabel("gradient component 2")
        self.ax_g.axhline(0, color="0.8", lw=0.8, zorder=0)
        self.ax_g.axvline(0, color="0.8", lw=0.8, zorder=0)
        self._dynamic: list = []
        self.info: dict = {}

    def _clear(self) -> None:
        for a in self._dynamic:
            a.remove()
        self._dynamic = []

    def update(self, x, weights: Sequence[float] = (1.0, 4.0)) -> dict:
        """Draw the gradients at ``x``; returns the numbers shown in the titles."""
        self._clear()
        w = _validate_weights(weights)
        x = np.asarray(x, dtype=float)
        G = self.problem.grads(x)
        g0, g1 = G[0], G[1]
        gj = w[0] * g0 + w[1] * g1
        arc = common_descent_arc([g0, g1])
        in_cone = bool(gj @ g0 > 0 and gj @ g1 > 0)
        c = float(cosine(g0, g1))
        info = dict(x=x, g0=g0, g1=g1, joint=gj, cos=c, dot=float(g0 @ g1),
                    cone_deg=0.0 if arc is None else float(np.degrees(arc[1] - arc[0])), joint_in_cone=in_cone,
                    gap=float(pareto_stationarity_gap(g0, g1)))
        before_x = set(self.ax_x.get_children())
        before_g = set(self.ax_g.get_children())
        self.ax_x.plot(*x, "o", color="k", ms=6, zorder=5)
        draw_gradients(self.ax_x, g0, g1, w, origin=x, normalize=0.6, motion=True, hull=False)
        draw_gradients(self.ax_g, g0, g1, w)
        lim = 1.25 * max(np.linalg.norm(v) for v in (g0, g1, gj, np.ones(2) * 1e-9))
        self.ax_g.set_xlim(-lim, lim)
        self.ax_g.set_ylim(-lim, lim)
        self._dynamic = [a for a in self.ax_x.get_children() if a not in before_x]
        self._dynamic += [a for a in self.ax_g.get_children() if a not in before_g]
        state = "conflict" if info["dot"] < 0 else "no conflict"
        self.ax_x.set_title(f"{getattr(self.problem, 'name', 'problem')}: x = ({x[0]:.2f}, {x[1]:.2f})", fontsize=10)
        self.ax_g.set_title(f"cos = {c:+.2f} ({state}); cone {info['cone_deg']:.0f}°; "
                            f"$g_{{joint}}$ {'inside' if in_cone else 'OUTSIDE'}", fontsize=9)
        self.info = info
        return info


def gradient_figure(problem, x, weights: Sequence[float] = (1.0, 4.0), **kwargs) -> Figure:
    """A static :class:`GradientScene` at point ``x`` (keyword arguments go to the scene).

    Explained in: Chapter 1, §1.4 (gradients, conflict and the cone of common descent).
    """
    scene = GradientScene(problem, **kwargs)
    scene.update(x, weights)
    scene.fig.tight_layout()
    return scene.fig


def plot_conflict_map(cmap: ConflictMap, ax: Axes | None = None, problem=None, colorbar: bool = True) -> Axes:
    """Colour the plane by ``cos(g_0, g_1)``; outline ``cos = 0``; hatch where ``g_joint`` leaves the cone.

    Red = conflict (negative cosine), blue = agreement. The hatched region is where the fixed
    weights ``cmap.weights`` give a joint step that does not decrease every task.

    Explained in: Chapter 1, §1.5 (where do gradients conflict?).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.0), dpi=80)
    mesh = ax.pcolormesh(cmap.X, cmap.Y, cmap.cos, cmap="RdBu", vmin=-1, vmax=1, shading="auto")
    ax.contour(cmap.X, cmap.Y, np.nan_to_num(cmap.cos), levels=[0.0], colors="k", linewidths=1.0)
    if cmap.joint_leaves_cone.any():
        ax.contourf(cmap.X, cmap.Y, cmap.joint_leaves_cone.astype(float), levels=[0.5, 1.5], colors="none",
                    hatches=["////"])
        ax.contour(cmap.X, cmap.Y, cmap.joint_leaves_cone.astype(float), levels=[0.5], colors="0.2",
                   linewidths=0.8, linestyles="--")
    if problem is not None and hasattr(problem, "pareto_set"):
        ps = problem.pareto_set(201)
        ax.plot(ps[:, 0], ps[:, 1], color="gold", lw=2.5)
        ax.set_title(getattr(problem, "name", "problem"), fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, shrink=0.8, label=r"$\cos(g_0, g_1)$")
    return ax


def plot_weight_sweep(problem, ts: Sequence[float] | np.ndarray, points, ax_x: Axes | None = None,
                      ax_f: Axes | None = None, label: str = "LS minimiser") -> Figure | SubFigure:
    """Where the weighted-sum minimiser lands as the weight ``alpha_1`` on task 1 sweeps ``[0, 1]``.

    The weighted sum is ``(1 - alpha_1) L_0 + alpha_1 L_1``; ``ts`` holds the weights
    ``alpha_1``. ``points[k]`` is the minimiser found for ``ts[k]`` (one row per weight, or
    several rows per weight flattened with ``ts`` repeated). Left: parameter space over the
    landscape; right: objective space over the Pareto front. Colour encodes ``alpha_1``.

    Explained in: Chapter 1, §1.6 (sweeping the scalarization weight).
    """
    ts = np.asarray(ts, dtype=float)
    P = np.asarray(points, dtype=float)
    if P.shape != (len(ts), 2):
        raise ValueError(f"points must have shape (len(ts), 2) = ({len(ts)}, 2), got {P.shape}")
    fig: Figure | SubFigure  # the axes' own figure: a subfigure when they sit in one
    if ax_x is None or ax_f is None:
        fig, (ax_x, ax_f) = plt.subplots(1, 2, figsize=(8.6, 3.6), dpi=80, layout="constrained")
    else:
        fig = ax_x.figure
    plot_landscape(problem, ax_x, n=101, legend=False)
    sc = ax_x.scatter(P[:, 0], P[:, 1], c=ts, cmap="viridis", vmin=0, vmax=1, s=22, zorder=5, edgecolors="k",
                      linewidths=0.3)
    plot_front(problem, ax_f)
    F = problem.losses(P)
    ax_f.scatter(F[:, 0], F[:, 1], c=ts, cmap="viridis", vmin=0, vmax=1, s=22, zorder=5, edgecolors="k",
                 linewidths=0.3, label=label)
    ax_f.legend(fontsize=8, loc="upper right")
    fig.colorbar(sc, ax=[ax_x, ax_f], shrink=0.85, label=r"weight $\alpha_1$ on task 1")
    return fig


def plot_scalarization_reach(sweep: ScalarizationSweep, losses, position, marks: Sequence[float] = (),
                             marks_label: str = "marked positions",
                             axes: Sequence[Axes] | None = None) -> Figure | SubFigure:
    """What linear scalarization can reach on a sampled Pareto set, from a
    :class:`~camegrad_mini.geometry.ScalarizationSweep`.

    ``losses`` (n, 2) are the curve's points in objective space and ``position`` (n,) their
    position along the set (0 = task 0's minimiser, 1 = task 1's), both in the order the sweep
    was computed on. Left: the front, its points marked by what the sweep found them to be: the
    global minimiser of some weighted sum (red), only a local minimiser (purple), or a minimiser
    for none of the swept weights (grey, dashed). Right: where the minimisers sit along the set
    as the weight ``alpha_1`` on task 1 grows, local ones as small dots, global ones as black
    dots. ``marks`` are positions to flag in both panels (the inflection points, say): dotted
    lines on the right, black crosses on the front, named ``marks_label`` in the legend.

    Explained in: Chapter 1, §1.6 (which points can a weighted sum reach?).
    """
    F = np.asarray(losses, dtype=float)
    pos = np.asarray(position, dtype=float)
    if F.shape != (sweep.n_points, 2) or pos.shape != (sweep.n_points,):
        raise ValueError(f"losses must have shape ({sweep.n_points}, 2) and position ({sweep.n_points},), "
                         f"got {F.shape} and {pos.shape}")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8.6, 3.5), dpi=80, layout="constrained")
    ax_f, ax_w = axes
    fig = ax_f.figure
    glob, loc = sweep.reached("global"), sweep.reached("local")
    # NaN outside the class breaks the line into its pieces; reached points are dots, because
    # near a fold of the minimiser branch the swept weights hit the curve only here and there
    ax_f.plot(np.where(~loc, F[:, 0], np.nan), np.where(~loc, F[:, 1], np.nan), color="0.6", ls="--", lw=1.5,
              label="minimiser for no swept weight")
    for mask, color, label in ((loc & ~glob, "tab:purple", "only a local minimiser"),
                               (glob, PARETO_COLOR, "a global minimiser")):
        ax_f.scatter(F[mask, 0], F[mask, 1], s=8, color=color, label=label, zorder=3)
    order = np.argsort(pos)
    for k, m in enumerate(marks):
        ax_f.plot(np.interp(m, pos[order], F[order, 0]), np.interp(m, pos[order], F[order, 1]), "kx", ms=7,
                  label=marks_label if k == 0 else None, zorder=4)
    ax_f.set_xlabel("$L_0$ (report loss)")
    ax_f.set_ylabel("$L_1$ (clinical loss)")
    ax_f.set_title("which points of the front a weight reaches", fontsize=10)
    ax_f.legend(fontsize=7, loc="upper right")
    ax_w.scatter(sweep.weights[sweep.local_weight], pos[sweep.local_index], s=2, color="tab:purple",
                 label="local minimiser")
    ax_w.scatter(sweep.weights, pos[sweep.global_index], s=4, color="k", label="global minimiser")
    for k, m in enumerate(marks):
        ax_w.axhline(m, color="0.4", ls=":", lw=1, label=marks_label if k == 0 else None)
    ax_w.set_xlim(0, 1)
    ax_w.set_ylim(-0.02, 1.02)
    ax_w.set_xlabel(r"weight $\alpha_1$ on task 1")
    ax_w.set_ylabel("position along the Pareto set")
    ax_w.set_title("minimisers of the weighted sum", fontsize=10)
    ax_w.legend(fontsize=7, loc="center right", markerscale=3)
    return fig


def conflict_widget(problems: Mapping[str, object], x0: Sequence[float] = (0.0, 0.6), weight: float = 4.0,
                    problem0: str | None = None):
    """An ipywidgets control panel around :class:`GradientScene`.

    Controls: the problem, the point ``(x_1, x_2)`` and the weight ``w_1`` of task 1 (``w_0 =
    1``; the official trainer uses ``w_1 = 4``). Each change redraws the figure in an ``Output``
    widget. Core ipywidgets only, so it works in JupyterLab, classic Jupyter and Colab.

    Explained in: Chapter 1, §1.7 (explore: gradients, weights and the cone).
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not problems:
        raise ValueError("problems must name at least one problem")
    names = list(problems)
    problem0 = names[0] if problem0 is None else problem0
    if problem0 not in problems:
        raise ValueError(f"problem0 must be one of {names}, got {problem0!r}")
    if weight < 0:
        raise ValueError(f"weight must be non-negative, got {weight}")
    style = {"description_width": "90px"}
    controls = dict(
        name=widgets.Dropdown(options=names, value=problem0, description="problem", style=style),
        x1=widgets.FloatSlider(value=float(x0[0]), min=-2.0, max=2.0, step=0.05, description="x1",
                               continuous_update=False, style=style),
        x2=widgets.FloatSlider(value=float(x0[1]), min=-2.0, max=2.0, step=0.05, description="x2",
                               continuous_update=False, style=style),
        w1=widgets.FloatSlider(value=float(weight), min=0.0, max=8.0, step=0.25, description="ω1 (task 1)",
                               continuous_update=False, style=style),
    )

    def show(name, x1, x2, w1):
        scene = GradientScene(problems[name])
        scene.update((x1, x2), (1.0, w1))
        scene.fig.tight_layout()
        display(scene.fig)
        plt.close(scene.fig)

    out = widgets.interactive_output(show, controls)
    box = widgets.VBox([widgets.HBox([controls["name"], controls["w1"]]),
                        widgets.HBox([controls["x1"], controls["x2"]]), out])
    box.controls = controls  # handy for tests and for readers who want to drive it from code
    box.output = out
    return box


def conflict_sweep_html(problem, path, weights: Sequence[float] = (1.0, 4.0), dpi: int = 70,
                        interval: int = 400, frame_format: str = "jpeg") -> str:
    """The kernel-free form of the widget: a ``to_jshtml`` animation of the point moving along ``path``.

    ``path`` is an ``(n_frames, 2)`` array (keep ``n_frames <= 30`` and ``dpi <= 70`` so the page
    stays small). Frames are JPEG by default: 20 PNG frames of this figure weigh about 1.8 MB,
    as JPEG about 0.75 MB. The figure is closed before returning, so nothing else is displayed.

    Explained in: Chapter 1, §1.7 (explore: gradients, weights and the cone).
    """
    if frame_format not in ("png", "jpeg"):
        raise ValueError(f"frame_format must be 'png' or 'jpeg', got {frame_format!r}")
    path = np.asarray(path, dtype=float)
    if path.ndim != 2 or path.shape[1] != 2 or not (1 <= len(path) <= 60):
        raise ValueError(f"path must have shape (n_frames, 2) with 1 <= n_frames <= 60, got {path.shape}")
    scene = GradientScene(problem, dpi=dpi)
    scene.update(path[0], weights)
    scene.fig.tight_layout()

    def frame(k):
        scene.update(path[k], weights)
        return []

    anim = FuncAnimation(scene.fig, frame, frames=len(path), interval=interval, blit=False)
    try:
        with plt.rc_context({"animation.frame_format": frame_format}):
            html = anim.to_jshtml(default_mode="once")
    finally:
        plt.close(scene.fig)
    return html
