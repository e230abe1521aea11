"""Tests for camegrad_mini.viz.came: chapter 4's figures, widget and sweep."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from camegrad_mini import came_probes
from camegrad_mini.viz import came as V


def _labelled(ax):
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_vector_figure_reports_conflicting_methods():
    fig = V.vector_figure(150.0, 3.0, 0.8, 0.5, 1.5, 0.2)
    vec, bars = fig.axes
    assert _labelled(vec) and _labelled(bars)
    assert "u*" in bars.get_title() and "MGDA" not in bars.get_title()
    # exactly opposite gradients: MGDA's min-norm point is 0 (up to rounding), so it cannot conflict
    title = V.vector_figure(180.0, 3.0, 0.8, 0.5, 1.5, 0.2).axes[1].get_title()
    assert "MGDA" not in title and "PCGrad" not in title and "LS" in title
    fig = V.vector_figure(60.0, 1.0, 0.5, 0.5, 1.5, 0.2)
    assert fig.axes[1].get_title() == "conflicting: none"
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name in came_probes.METHOD_NAMES:
        assert name in labels


@pytest.mark.parametrize("kw, match", [(dict(w=1.5), "w "), (dict(rho=1.0), "rho"), (dict(nu=-0.1), "nu"),
                                        (dict(kappa=0.0), "kappa"), (dict(r=0.0), "r must")])
def test_vector_figure_validates(kw, match):
    args = dict(theta_deg=120.0, r=1.0, w=0.5, rho=0.5, kappa=1.5, nu=0.2)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        V.vector_figure(**args)


def test_sweep_is_kernel_free_and_bounded():
    html = V.vector_sweep([100.0, 140.0], r=2.0).data
    assert "<img" in html and "animation" in html.lower()
    with pytest.raises(ValueError, match="1 to 30"):
        V.vector_sweep(np.arange(31.0))
    with pytest.raises(ValueError, match="unknown"):
        V.vector_sweep([100.0], colour=1)


def test_widget_uses_core_controls_with_initial_values():
    import ipywidgets as W

    with plt.ioff():
        widget = V.vector_widget(theta_deg=150.0, r=3.0, w=0.8, rho=0.3, kappa=2.0, nu=0.4)
    assert isinstance(widget, W.interactive)
    controls = {c.description: c.value for c in widget.children if hasattr(c, "description")}
    assert controls["angle (°)"] == 150.0 and controls["weight w"] == pytest.approx(0.8)
    assert controls["rho"] == pytest.approx(0.3) and controls["nu"] == pytest.approx(0.4)
    assert controls["|g1|/|g0|"] == pytest.approx(3.0)
    for c in widget.children[:-1]:
        assert type(c).__module__.startswith("ipywidgets")


def test_other_figures():
    fig = V.plot_dual_objective({"a": came_probes.polar_pair(2.0, 1.0), "b": came_probes.polar_pair(3.0, 5.0)})
    assert _labelled(fig.axes[0]) and len(fig.axes[0].lines) == 4
    with pytest.raises(ValueError, match="two gradients"):
        V.plot_dual_objective({"bad": np.ones((3, 2))})
    nus, rhos = [0.0, 0.5, 1.0], [0.2, 0.5]
    fig = V.plot_fusion_conflict(nus, rhos, {"x": np.zeros((2, 3)), "y": np.ones((2, 3))})
    assert len(fig.axes) == 2 and _labelled(fig.axes[0])
    with pytest.raises(ValueError, match="shape"):
        V.plot_fusion_conflict(nus, rhos, {"x": np.zeros((3, 2))})
    fig = V.plot_kappa_gaps({"SGD": np.array([0.0, 1e-2, 2e-2]), "AdamW": np.array([0.0, 1e-8, 1e-8])})
    assert _labelled(fig.axes[0]) and fig.axes[0].get_yscale() == "log"
