"""Tests for camegrad_mini.viz.dynamics: geometry of the ellipses and that each builder draws."""
from __future__ import annotations

import numpy as np
import pytest

from camegrad_mini import sde
from camegrad_mini.problems import SharpFlatDoubleWell
from camegrad_mini.viz import dynamics as vd

H = np.array([[3.0, 0.8], [0.8, 1.5]])
SIGMA = np.array([[1.0, 0.2], [0.2, 0.5]])


def test_ellipse_points_lie_on_the_contour():
    cov = np.array([[2.0, 0.7], [0.7, 1.0]])
    pts = vd.ellipse_points(cov, n_std=2.0, n=50)
    q = np.einsum("ni,ij,nj->n", pts, np.linalg.inv(cov), pts)
    np.testing.assert_allclose(q, 4.0, rtol=1e-10)
    with pytest.raises(ValueError, match="2x2"):
        vd.ellipse_points(np.eye(3))
    with pytest.raises(ValueError, match="semi-definite"):
        vd.ellipse_points(np.array([[1.0, 2.0], [2.0, 1.0]]))


def _labelled(fig):
    # a twin axis (fig.axes[1] of the double-well plot) shares the x label of its host
    for ax in fig.axes:
        assert ax.get_ylabel()
        assert ax.get_xlabel() or any(o is not ax and o.bbox.bounds == ax.bbox.bounds and o.get_xlabel()
                                      for o in fig.axes)


def test_weak_error_plot():
    e = sde.quadratic_mean_weak_errors(1.0, [0.2, 0.1, 0.05], t_end=1.0)
    fig = vd.plot_weak_errors(e, t_end=1.0)
    _labelled(fig)
    assert fig.axes[0].get_xscale() == "log"


def test_stationary_comparison_plot():
    rng = np.random.default_rng(0)
    S1 = sde.stationary_cov_sgd(H, 0.3, SIGMA, 2)
    S0 = sde.stationary_cov_ou(H, 0.3, SIGMA, 2)
    fig = vd.plot_stationary_comparison(rng.multivariate_normal([0, 0], S1, 300),
                                        rng.multivariate_normal([0, 0], S0, 300), S1, S0, H)
    assert len(fig.axes) == 2
    _labelled(fig)
    with pytest.raises(ValueError, match="n_chains, 2"):
        vd.plot_stationary_comparison(np.zeros(5), np.zeros((5, 2)), S1, S0, H)


def test_variance_ratio_plot_curve_matches_formula():
    fig = vd.plot_variance_ratio(H, SIGMA, 2, points={1.0: 1.4}, n=50)
    _labelled(fig)
    x, y = fig.axes[0].lines[0].get_data()
    lam = np.linalg.eigvalsh(H).max()
    i = 25
    eta = x[i] / lam
    ref = np.trace(sde.stationary_cov_sgd(H, eta, SIGMA, 2)) / np.trace(sde.stationary_cov_ou(H, eta, SIGMA, 2))
    assert y[i] == pytest.approx(ref)
    assert np.all(np.diff(y) > 0)  # the gap grows monotonically towards the stability limit


def test_double_well_and_escape_plots():
    p = SharpFlatDoubleWell()
    fig = vd.plot_double_well(p, temperature=0.2, states=np.random.default_rng(0).normal(size=100))
    assert len(fig.axes) == 2
    _labelled(fig)
    fig2 = vd.plot_escape_times({"sharp": dict(inv_T=np.array([2.0, 4.0]), sim=np.array([10.0, 60.0]),
                                               sim_err=np.array([1.0, 5.0]), exact=np.array([11.0, 58.0]),
                                               kramers=np.array([8.0, 50.0]))})
    assert fig2.axes[0].get_yscale() == "log"
    _labelled(fig2)


def test_covariance_sweep_html():
    html = vd.covariance_sweep_html(H, SIGMA, 2, [0.2, 1.0, 1.8], dpi=40)
    assert "<script" in html and "img" in html
    with pytest.raises(ValueError, match="30"):
        vd.covariance_sweep_html(H, SIGMA, 2, np.linspace(0.1, 1.9, 31))
    with pytest.raises(ValueError, match="stability"):
        vd.covariance_sweep_html(H, SIGMA, 2, [0.5, 2.5])


def test_stationary_ellipses_plot_keeps_the_ou_ellipse_fixed():
    a = vd.plot_stationary_ellipses(H, SIGMA, 2, 0.2, lim=3.0)
    b = vd.plot_stationary_ellipses(H, SIGMA, 2, 1.8, lim=3.0)
    _labelled(a)
    ou_a, ou_b = a.axes[0].lines[1].get_xydata(), b.axes[0].lines[1].get_xydata()
    np.testing.assert_allclose(ou_a, ou_b)
    sgd_a, sgd_b = a.axes[0].lines[0].get_xydata(), b.axes[0].lines[0].get_xydata()
    assert np.abs(sgd_b).max() > 1.5 * np.abs(sgd_a).max()
    with pytest.raises(ValueError, match="eta_lmax"):
        vd.plot_stationary_ellipses(H, SIGMA, 2, 2.0)
