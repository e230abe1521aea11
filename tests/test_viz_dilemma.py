"""Tests for camegrad_mini.viz.dilemma: builders return what they promise, sweeps stay small."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from camegrad_mini.viz import dilemma as dilemma_plots


def _labelled(ax):
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_static_closed_form_figures_have_labelled_axes():
    fig = dilemma_plots.plot_energy_ratio_map(n=31)
    assert _labelled(fig.axes[0])
    fig = dilemma_plots.plot_diffusion_curves()
    assert len(fig.axes) == 2 and all(_labelled(a) for a in fig.axes)
    fig = dilemma_plots.plot_deviation_region(gamma_values=(1.0, 4.0), n=41, mark=(np.radians(150), 0.8, 4.0))
    assert len(fig.axes) == 2
    assert "deviating area" in fig.axes[0].get_title()


def test_vector_figure_reports_deviation_in_its_title():
    dev = dilemma_plots.vector_figure(np.radians(150), 0.8, 1.0).axes[0].get_title()
    ok = dilemma_plots.vector_figure(np.radians(150), 0.5, 1.0).axes[0].get_title()
    assert dev.endswith("deviation") and not dev.endswith("no deviation")
    assert ok.endswith("no deviation")


def test_landscape_figure_and_run():
    fig = dilemma_plots.landscape_figure(steps=12, n_seeds=4)
    assert len(fig.axes) == 3
    assert "steps conflict" in fig.axes[0].get_title()
    prob, w, noise, run = dilemma_plots.landscape_run(steps=5, n_seeds=3, kind="hessian", condition=5.0)
    assert run.xs.shape == (3, 6, 2) and noise.kind == "hessian"


def test_wells_figure_counts_escapes_in_title():
    fig = dilemma_plots.wells_figure(sigma=0.0, steps=20, n_seeds=5)
    assert "0/5 escaped" in fig.axes[0].get_title()
    fig = dilemma_plots.wells_small_multiples("corr", (-1.0, 1.0), steps=20, n_seeds=4)
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="param"):
        dilemma_plots.wells_small_multiples("colour", (1.0,))


def test_sweeps_are_kernel_free_html_and_bounded():
    html = dilemma_plots.vector_sweep([100, 140], w=0.8, gamma=1.0).data
    assert "<img" in html and "animation" in html.lower()
    html = dilemma_plots.landscape_sweep("corr", [-0.5, 0.5], steps=8, n_seeds=3).data
    assert html.count("frames[") >= 2 or html.count("data:image/png") >= 2
    with pytest.raises(ValueError, match="sweep"):
        dilemma_plots.vector_sweep(np.arange(31.0))
    with pytest.raises(ValueError, match="param"):
        dilemma_plots.landscape_sweep("nonsense", [0.0])


def test_widgets_use_core_controls_with_given_initial_values():
    import ipywidgets as W

    for build, kw in ((dilemma_plots.vector_widget, dict(w=0.3)), (dilemma_plots.landscape_widget, dict(w=0.3)),
                      (dilemma_plots.wells_widget, dict(w=0.3))):
        with plt.ioff():
            widget = build(**kw)
        assert isinstance(widget, W.interactive)
        controls = {c.description: c for c in widget.children if hasattr(c, "description")}
        assert controls["weight w"].value == pytest.approx(0.3)
        for c in widget.children[:-1]:
            assert type(c).__module__.startswith("ipywidgets")


def test_plot_escape_counts_checks_shapes():
    fig = dilemma_plots.plot_escape_counts([-0.5, 0.5], [1.0, 2.0], np.array([[0, 3], [4, 9]]), n_seeds=10,
                               kappas=[1.0, 2.0], kappa_counts=[[1, 5]], kappa_corrs=[0.0])
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="counts"):
        dilemma_plots.plot_escape_counts([-0.5, 0.5], [1.0], np.zeros((2, 2)), n_seeds=10)


def test_angle_figure_panels_and_trends():
    fig = dilemma_plots.angle_figure(120.0, corr=0.5)
    assert len(fig.axes) == 5 and all(_labelled(a) for a in fig.axes[:3])
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("gradient-aligned: falls with the energy" in t for t in labels)
    assert any("isotropic: ignores the angle" in t for t in labels)
    titles = [a.get_title() for a in fig.axes[2:]]
    assert all("tr Σ_ω =" in t for t in titles)
    fig = dilemma_plots.angle_figure(150.0, corr=-0.5, gamma=2.0, w=0.3)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any("gradient-aligned: rises as the energy falls" in t for t in labels)
    plt.close("all")


def test_angle_widget_and_sweep():
    import ipywidgets as W

    with plt.ioff():
        widget = dilemma_plots.angle_widget(90.0, corr=0.3)
    assert isinstance(widget, W.interactive)
    controls = {c.description: c for c in widget.children if hasattr(c, "description")}
    assert controls["angle φ (°)"].value == pytest.approx(90.0)
    assert controls["noise corr c"].value == pytest.approx(0.3)
    html = dilemma_plots.angle_sweep([60.0, 150.0], corr=0.5).data
    assert "<img" in html and "animation" in html.lower()


def test_plot_kappa_decomposition():
    d = {name: {"counts": np.array([1, 5]), "time": np.array([20.0, 40.0]), "temperature": np.array([0.1, 0.2])}
         for name in ("fixed steps", "matched time")}
    fig = dilemma_plots.plot_kappa_decomposition([1.0, 2.0], d, n_seeds=10)
    assert len(fig.axes) == 2 and all(_labelled(a) for a in fig.axes)
    with pytest.raises(ValueError, match="one entry per kappa"):
        dilemma_plots.plot_kappa_decomposition([1.0, 2.0, 3.0], d, n_seeds=10)
