"""Tests for camegrad_mini.viz.experiments: each builder draws what it promises and checks its input."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from camegrad_mini.problems import QuadraticPair
from camegrad_mini.viz import experiments as VE


def test_method_colors_are_fixed_and_cycle_otherwise():
    assert VE.method_color("CAME-Grad") == "tab:red"
    assert VE.method_color("S1 only", 0) != VE.method_color("S1 only", 1)


def test_plot_bands_draws_mean_lines_and_sd_bands():
    gen = np.random.default_rng(0)
    curves = {"LS": gen.random((4, 50)) + 1.0, "CAME-Grad": gen.random((4, 50)) + 2.0}
    ax = VE.plot_bands(curves, ylabel="gap", log=True, every=5)
    assert len(ax.lines) == 2
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), curves["CAME-Grad"].mean(0)[::5])
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "gap"
    with pytest.raises(ValueError, match="seeds"):
        VE.plot_bands({"LS": np.ones((1, 5))})
    with pytest.raises(ValueError, match="smooth"):
        VE.plot_bands(curves, smooth=0)


def test_plot_bands_smoothing_is_a_moving_average():
    v = np.array([[0.0, 2.0, 4.0, 6.0], [2.0, 4.0, 6.0, 8.0]])
    ax = VE.plot_bands({"LS": v}, smooth=2)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.0, 4.0, 6.0])
    with pytest.raises(ValueError, match="empty"):
        VE.plot_bands({})


def test_plot_endpoints_draws_paths_and_last_iterates():
    xs = {"LS": np.linspace([0.0, 1.0], [0.9, 0.0], 11)[None].repeat(3, 0),
          "MGDA": np.linspace([0.0, 1.0], [0.0, 0.0], 11)[None].repeat(3, 0)}
    ax = VE.plot_endpoints(QuadraticPair(), xs)
    dots = [ln for ln in ax.lines if ln.get_label() in ("LS", "MGDA")]
    assert len(dots) == 2
    np.testing.assert_allclose(dots[0].get_xdata(), [0.9, 0.9, 0.9])
    assert any(ln.get_label() == "start" for ln in ax.lines)
    with pytest.raises(ValueError, match="seed"):
        VE.plot_endpoints(QuadraticPair(), xs, trajectory_seed=5)


def test_plot_positions_one_row_per_method():
    pos = {"LS": np.array([0.99, 0.98]), "MGDA": np.array([0.4, 0.6]), "CAME-Grad": np.array([0.0, 1.0])}
    ax = VE.plot_positions(pos, title="FF")
    assert [t.get_text() for t in ax.get_yticklabels()] == list(pos)
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [0.4, 0.6])
    assert ax.get_title() == "FF"
    with pytest.raises(ValueError, match="empty"):
        VE.plot_positions({})


def test_plot_sensitivity_marks_the_default():
    vals = [0.0, 0.5, 1.0]
    curves = {"SGD": np.arange(12.0).reshape(3, 4), "Adam": np.ones((3, 4))}
    ax = VE.plot_sensitivity(vals, curves, xlabel="rho", default=0.5)
    assert ax.get_xlabel() == "rho"
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == 0.5
    with pytest.raises(ValueError, match="shape"):
        VE.plot_sensitivity(vals, {"SGD": np.ones((2, 4))})


def test_plot_sensitivity_paired_draws_t_intervals_from_the_default():
    from camegrad_mini.stats import paired_difference

    gen = np.random.default_rng(3)
    seed_effect = gen.normal(0.0, 1.0, 6)
    v = np.stack([seed_effect + k * 0.1 + gen.normal(0.0, 0.02, 6) for k in range(3)])
    ax = VE.plot_sensitivity([0.0, 0.5, 1.0], {"SGD": v}, default=0.5, ylabel="gap", paired=True)
    line = ax.lines[0]
    expected = [paired_difference(row, v[1]) for row in v]
    np.testing.assert_allclose(line.get_ydata(), [e.mean for e in expected])
    assert line.get_ydata()[1] == 0.0
    # the error bar of the last point spans exactly the t interval
    segs = [c for c in ax.collections if c.get_segments()][0].get_segments()
    np.testing.assert_allclose(np.asarray(segs[2])[:, 1], [expected[2].lo, expected[2].hi])
    assert ax.get_ylabel() == "Δ gap vs default"
    assert any(ln.get_ydata()[0] == 0.0 and ln.get_linestyle() == "-" for ln in ax.lines[1:])
    with pytest.raises(ValueError, match="default"):
        VE.plot_sensitivity([0.0, 0.5, 1.0], {"SGD": v}, default=0.3, paired=True)
    with pytest.raises(ValueError, match="log"):
        VE.plot_sensitivity([0.0, 0.5, 1.0], {"SGD": v}, default=0.5, paired=True, log=True)


def test_legend_false_leaves_one_shared_figure_legend():
    import matplotlib.pyplot as plt

    gen = np.random.default_rng(1)
    fig, axes = plt.subplots(1, 2, layout="constrained")
    curves = {"LS": gen.random((3, 20)) + 1.0, "CAME-Grad": gen.random((3, 20)) + 2.0}
    VE.plot_bands(curves, ax=axes[0], legend=False)
    VE.plot_bands({"LS": curves["LS"], "MGDA": curves["CAME-Grad"]}, ax=axes[1], legend=False)
    assert axes[0].get_legend() is None and axes[1].get_legend() is None
    leg = VE.figure_legend(fig, axes)
    assert [t.get_text() for t in leg.get_texts()] == ["LS", "CAME-Grad", "MGDA"]  # each label once, in order
    assert leg in fig.legends
    with pytest.raises(ValueError, match="labelled"):
        VE.figure_legend(fig, [fig.add_subplot(3, 3, 9)])


def test_panel_legends_are_not_tiny_and_endpoints_can_skip_theirs():
    xs = {"LS": np.linspace([0.0, 1.0], [0.9, 0.0], 11)[None].repeat(2, 0)}
    assert VE.plot_endpoints(QuadraticPair(), xs, legend=False).get_legend() is None
    ax = VE.plot_endpoints(QuadraticPair(), xs)
    assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 8


def test_plot_sensitivity_without_legend_labels_curves_by_key():
    v = np.arange(12.0).reshape(3, 4)
    ax = VE.plot_sensitivity([0.0, 0.5, 1.0], {"SGD": v}, default=0.5, legend=False)
    assert ax.get_legend() is None
    assert "SGD" in ax.get_legend_handles_labels()[1]
    ax = VE.plot_sensitivity([0.0, 0.5, 1.0], {"SGD": v}, default=0.5, paired=True)
    assert "SGD (95% t-CI)" in [t.get_text() for t in ax.get_legend().get_texts()]
