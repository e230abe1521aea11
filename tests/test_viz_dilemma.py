"""Tests for camegrad_mini.viz.dilemma: builders return what they promise, sweeps stay small."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from camegrad_mini.viz import dilemma as V


def _labelled(ax):
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_static_closed_form_figures_have_labelled_axes():
    fig = V.plot_energy_ratio_map(n=31)
    assert _labelled(fig.axes[0])
    fig = V.plot_diffusion_curves()
    assert len(fig.axes) == 2 and all(_labelled(a) for a in fig.axes)
    fig = V.plot_deviation_region(r_values=(1.0, 4.0), n=41, mark=(np.radians(150), 0.8, 4.0))
    assert len(fig.axes) == 2
    assert "deviating area" in fig.axes[0].get_title()


def test_vector_figure_reports_deviation_in_its_title():
    dev = V.vector_figure(np.radians(150), 0.8, 1.0).axes[0].get_title()
    ok = V.vector_figure(np.radians(150), 0.5, 1.0).axes[0].get_title()
    assert dev.endswith("deviation") and not dev.endswith("no deviation")
    assert ok.endswith("no deviation")


def test_landscape_figure_and_run():
    fig = V.landscape_figure(steps=12, n_seeds=4)
    assert len(fig.axes) == 3
    assert "steps conflict" in fig.axes[0].get_title()
    prob, w, noise, run = V.landscape_run(steps=5, n_seeds=3, kind="hessian", condition=5.0)
    assert run.xs.shape == (3, 6, 2) and noise.kind == "hessian"


def test_wells_figure_counts_escapes_in_title():
    fig = V.wells_figure(sigma=0.0, steps=20, n_seeds=5)
    assert "0/5 escaped" in fig.axes[0].get_title()
    fig = V.wells_small_multiples("corr", (-1.0, 1.0), steps=20, n_seeds=4)
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="param"):
        V.wells_small_multiples("colour", (1.0,))


def test_sweeps_are_kernel_free_html_and_bounded():
    html = V.vector_sweep([100, 140], w=0.8, r=1.0).data
    assert "<img" in html and "animation" in html.lower()
    html = V.landscape_sweep("corr", [-0.5, 0.5], steps=8, n_seeds=3).data
    assert html.count("frames[") >= 2 or html.count("data:image/png") >= 2
    with pytest.raises(ValueError, match="sweep"):
        V.vector_sweep(np.arange(31.0))
    with pytest.raises(ValueError, match="param"):
        V.landscape_sweep("nonsense", [0.0])


def test_widgets_use_core_controls_with_given_initial_values():
    import ipywidgets as W

    for build, kw in ((V.vector_widget, dict(w=0.3)), (V.landscape_widget, dict(w=0.3)), (V.wells_widget, dict(w=0.3))):
        with plt.ioff():
            widget = build(**kw)
        assert isinstance(widget, W.interactive)
        controls = {c.description: c for c in widget.children if hasattr(c, "description")}
        assert controls["weight w"].value == pytest.approx(0.3)
        for c in widget.children[:-1]:
            assert type(c).__module__.startswith("ipywidgets")


def test_plot_escape_counts_checks_shapes():
    fig = V.plot_escape_counts([-0.5, 0.5], [1.0, 2.0], np.array([[0, 3], [4, 9]]), n_seeds=10,
                               kappas=[1.0, 2.0], kappa_counts=[[1, 5]], kappa_corrs=[0.0])
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="counts"):
        V.plot_escape_counts([-0.5, 0.5], [1.0], np.zeros((2, 2)), n_seeds=10)
