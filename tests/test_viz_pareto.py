"""Tests for camegrad_mini.viz.pareto: each builder returns the artists it promises, fast."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.patches import Wedge
from matplotlib.text import Annotation

from camegrad_mini import geometry as geo
from camegrad_mini.problems import FonsecaFleming, QuadraticPair
from camegrad_mini.viz import pareto


def _wedges(ax):
    return [p for p in ax.patches if isinstance(p, Wedge)]


def test_plot_landscape_draws_contours_and_the_pareto_set():
    p = QuadraticPair.ill_conditioned()
    ax = pareto.plot_landscape(p, n=41)
    assert len(ax.collections) >= 2  # one contour set per task
    (line,) = [ln for ln in ax.lines if ln.get_label() == "Pareto set"]
    np.testing.assert_allclose(line.get_xydata(), p.pareto_set(201))
    assert ax.get_xlabel() and ax.get_ylabel()
    assert ax.get_legend() is not None


def test_plot_front_is_the_image_of_the_pareto_set():
    p = FonsecaFleming()
    ax = pareto.plot_front(p, n=11)
    np.testing.assert_allclose(ax.lines[0].get_xydata(), p.losses(p.pareto_set(11)))
    assert "L_0" in ax.get_xlabel() and "L_1" in ax.get_ylabel()


def test_draw_gradients_without_conflict_shades_a_cone_and_draws_three_arrows():
    fig, ax = plt.subplots()
    art = pareto.draw_gradients(ax, [1.0, 0.0], [0.0, 1.0], (1.0, 1.0))
    assert isinstance(art["cone"], Wedge)
    assert art["cone"].theta2 - art["cone"].theta1 == pytest.approx(90.0)
    arrows = [a for a in ax.texts if isinstance(a, Annotation) and a.arrow_patch is not None]
    assert len(arrows) == 3
    # the joint arrow ends at w0 g0 + w1 g1
    np.testing.assert_allclose(art["joint"].xy, (1.0, 1.0))


def test_draw_gradients_at_a_pareto_stationary_point_draws_no_cone():
    fig, ax = plt.subplots()
    art = pareto.draw_gradients(ax, [1.0, 0.0], [-2.0, 0.0], (1.0, 1.0))
    assert art["cone"] is None and not _wedges(ax)
    # the hull point sits at the origin (0 is in the hull)
    np.testing.assert_allclose(art["hull_point"].get_xydata()[0], (0.0, 0.0), atol=1e-12)


def test_draw_gradients_motion_mode_flips_arrows_and_cone():
    fig, ax = plt.subplots()
    art = pareto.draw_gradients(ax, [1.0, 0.0], [0.0, 1.0], (1.0, 1.0), origin=(2.0, 2.0), normalize=0.5, motion=True)
    np.testing.assert_allclose(art["g0"].xy, (1.5, 2.0))
    assert art["cone"].theta1 == pytest.approx(180.0)
    assert art["cone"].r == pytest.approx(0.5)


def test_draw_gradients_rejects_bad_weights():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="weights"):
        pareto.draw_gradients(ax, [1.0, 0.0], [0.0, 1.0], (1.0, -1.0))


def test_gradient_scene_reports_conflict_and_cleans_up_between_updates():
    scene = pareto.GradientScene(QuadraticPair(), n=31)
    info = scene.update((-0.9, 0.0), (1.0, 4.0))  # inside the conflict disk, near task 0's minimum
    assert info["dot"] < 0 and not info["joint_in_cone"]
    n_children = len(scene.ax_g.get_children())
    info = scene.update((0.0, 1.5), (1.0, 1.0))  # outside the disk: no conflict
    assert info["dot"] > 0 and info["joint_in_cone"]
    assert info["cone_deg"] == pytest.approx(180.0 - np.degrees(np.arccos(info["cos"])))
    assert len(scene.ax_g.get_children()) <= n_children + 1  # old arrows were removed, not piled up
    assert "OUTSIDE" not in scene.ax_g.get_title()


def test_gradient_figure_has_two_labelled_panels():
    fig = pareto.gradient_figure(QuadraticPair.ill_conditioned(), (0.0, 0.6), n=31)
    assert len(fig.axes) == 2
    assert all(ax.get_xlabel() for ax in fig.axes)


def test_plot_conflict_map_colours_by_cosine_and_hatches_the_leave_region():
    p = QuadraticPair()
    m = geo.conflict_map(p, (1.0, 4.0), n=41)
    ax = pareto.plot_conflict_map(m, problem=p)
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1 and meshes[0].get_clim() == (-1, 1)
    assert any(getattr(c, "hatches", None) == ["////"] for c in ax.collections)
    assert len(ax.figure.axes) == 2  # the map and its colour bar


def test_plot_weight_sweep_places_one_marker_per_weight():
    q = QuadraticPair.ill_conditioned()
    ts = np.linspace(0, 1, 7)
    P = np.array([q.ls_minimizer((1 - t, t)) for t in ts])
    fig = pareto.plot_weight_sweep(q, ts, P)
    ax_x, ax_f = fig.axes[:2]
    np.testing.assert_allclose(ax_x.collections[-1].get_offsets(), P)
    np.testing.assert_allclose(ax_f.collections[-1].get_offsets(), q.losses(P))
    with pytest.raises(ValueError, match="points"):
        pareto.plot_weight_sweep(q, ts, P[:3])


def test_conflict_widget_builds_with_controls_and_redraws(capsys):
    probs = {"pair": QuadraticPair(), "ff": FonsecaFleming()}
    w = pareto.conflict_widget(probs, x0=(0.2, 0.4), weight=4.0)
    assert set(w.controls) == {"name", "x1", "x2", "w1"}
    assert w.controls["w1"].value == 4.0 and w.controls["name"].value == "pair"
    w.controls["name"].value = "ff"  # triggers a redraw without raising
    with pytest.raises(ValueError, match="problem0"):
        pareto.conflict_widget(probs, problem0="nope")
    with pytest.raises(ValueError, match="weight"):
        pareto.conflict_widget(probs, weight=-1.0)


def test_conflict_sweep_html_embeds_one_frame_per_point_and_closes_its_figure():
    path = np.c_[np.linspace(-1, 1, 3), np.full(3, 0.5)]
    before = plt.get_fignums()
    html = pareto.conflict_sweep_html(QuadraticPair(), path, dpi=30)
    assert html.count("data:image/jpeg;base64") == 3
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="path"):
        pareto.conflict_sweep_html(QuadraticPair(), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="frame_format"):
        pareto.conflict_sweep_html(QuadraticPair(), path, frame_format="gif")


def test_plot_scalarization_reach_splits_the_front_and_plots_every_minimiser():
    p = FonsecaFleming()
    s = np.linspace(1.0, -1.0, 401)
    F, position = p.losses(s[:, None] * p.a), (1 - s) / 2
    sweep = geo.scalarization_sweep(F, np.linspace(0, 1, 51))
    marks = ((1 - 1 / np.sqrt(2)) / 2, (1 + 1 / np.sqrt(2)) / 2)
    fig = pareto.plot_scalarization_reach(sweep, F, position, marks=marks, marks_label="inflection points")
    ax_f, ax_w = fig.axes
    labels = [t.get_text() for t in ax_f.get_legend().get_texts()]
    assert "only a local minimiser" in labels and "a global minimiser" in labels and "inflection points" in labels
    glob, loc = sweep.reached("global"), sweep.reached("local")
    n_local_only, n_global = [len(c.get_offsets()) for c in ax_f.collections]
    assert (n_local_only, n_global) == ((loc & ~glob).sum(), glob.sum())
    local_dots, global_dots = ax_w.collections
    assert len(local_dots.get_offsets()) == len(sweep.local_index)
    np.testing.assert_allclose(global_dots.get_offsets(), np.c_[sweep.weights, position[sweep.global_index]])
    assert sorted(ln.get_ydata()[0] for ln in ax_w.lines) == pytest.approx(sorted(marks))
    assert "alpha_1" in ax_w.get_xlabel() and "L_0" in ax_f.get_xlabel()
    plt.close(fig)
    with pytest.raises(ValueError, match="position"):
        pareto.plot_scalarization_reach(sweep, F, position[:-1])
