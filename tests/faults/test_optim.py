"""Fault catalogue, optimizer: gradient scales the float32 Gram matrix could not hold, S1's
zero test against the wrong unit, and the official trainer's class name.

Each test reproduces one reported fault (issue 11, rows 5, 6 and 11) and asserts the fixed
behaviour. Scales are chosen to sit on both sides of the old failure points.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from camegrad_mini.optim import CAMEGrad
from camegrad_mini.optim import functional as F


class TwoHead(torch.nn.Module):
    """A shared linear trunk (64 x 32 weights) and two heads: two tasks that share parameters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Linear(32, 64)
        self.h0 = torch.nn.Linear(64, 1)
        self.h1 = torch.nn.Linear(64, 1)

    def losses(self, x: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> list[torch.Tensor]:
        z = torch.tanh(self.trunk(x))
        return [((self.h0(z).squeeze(-1) - y0) ** 2).mean(), ((self.h1(z).squeeze(-1) - y1) ** 2).mean()]


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 32, generator=g), torch.randn(16, generator=g), torch.randn(16, generator=g)


def _step_with_loss_scale(scale: float, aggregator: str = "came") -> tuple:
    """One SGD step on losses multiplied by ``scale`` (gradients scale with it)."""
    model = TwoHead()
    opt = CAMEGrad(torch.optim.SGD(model.parameters(), lr=1e-3), aggregator=aggregator)
    losses = [loss * scale for loss in model.losses(*_batch())]
    with torch.no_grad():
        info = opt.step(losses, task_weights=[1.0, 4.0])
    return model, info


@pytest.mark.parametrize("scale", [1e19, 1e-30])
@pytest.mark.parametrize("aggregator", ["came", "ls", "cagrad", "mgda", "pcgrad"])
def test_finite_gradients_far_from_one_are_aggregated_not_skipped(scale, aggregator):
    """Row 5: finite gradients near 1e19 were skipped as non-finite; near 1e-30 the float32
    Gram underflowed to 0 and CAME-Grad reported zero_gradients."""
    _, ref = _step_with_loss_scale(1.0, aggregator)
    _, info = _step_with_loss_scale(scale, aggregator)
    assert not info.skipped
    assert info.degenerate == ref.degenerate
    assert np.all(np.isfinite(info.inner_products))
    np.testing.assert_allclose(info.inner_products / scale**2, ref.inner_products, rtol=1e-5)
    # every aggregator is positively homogeneous: the same coefficients at every scale
    np.testing.assert_allclose(info.coefficients, ref.coefficients, rtol=1e-5)


def test_grad_scaler_whose_scaled_gram_overflows_float32_still_steps_correctly():
    """Row 5: scaled gradients were finite but their squared norms overflowed float32, so the
    step was reported skipped while the base optimizer took a plain LS step."""
    data = _batch()
    m_ref = TwoHead()
    o_ref = CAMEGrad(torch.optim.SGD(m_ref.parameters(), lr=1e-2))
    info_ref = o_ref.step(m_ref.losses(*data), task_weights=[1.0, 4.0])
    m_amp = TwoHead()
    o_amp = CAMEGrad(torch.optim.SGD(m_amp.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**66)  # gradients ~1e19 once scaled
    info = o_amp.step(m_amp.losses(*data), task_weights=[1.0, 4.0], scaler=scaler)
    scaler.update()
    assert not info.skipped and scaler.get_scale() == 2.0**66
    np.testing.assert_allclose(info.coefficients, info_ref.coefficients, rtol=1e-5)
    for p, q in zip(m_amp.parameters(), m_ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_step_reported_skipped_is_never_taken_with_a_grad_scaler():
    """Row 5: with a GradScaler, a step reported skipped must not move the parameters, and the
    scaler must back off (here the loss is non-finite while its gradients are finite)."""
    model = TwoHead()
    start = copy.deepcopy(model)
    opt = CAMEGrad(torch.optim.SGD(model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    l0, l1 = model.losses(*_batch())
    info = opt.step([l0, l1 + float("inf")], task_weights=[1.0, 4.0], scaler=scaler)
    scaler.update()
    assert info.skipped
    assert scaler.get_scale() == 2.0**11
    for p, q in zip(model.parameters(), start.parameters(), strict=True):
        assert torch.equal(p, q)


def _rectify_hurts_task0(s: float) -> tuple[float, float, str | None]:
    j = np.array([[s, 0.0], [-0.3, 1.0]])
    g = F.gram_matrix(j)
    rect = F.rectify(g, 0.5)
    final = F.came_grad(g, [1.0, 4.0])
    g0 = j[0] / np.linalg.norm(j[0])
    return float(g0 @ F.combine(j, rect.u_star)), float(g0 @ F.combine(j, final.coefficients)), rect.degenerate


@pytest.mark.parametrize("s", [1.05e-6, 9.6e-7, 1e-9, 1e-12])
def test_rectify_keeps_its_correction_when_task_gradients_differ_in_scale(s):
    """Row 6: S1 compared ||g_alpha*|| with the largest task gradient, so a small but genuine
    g_alpha* (g0 = (s, 0), g1 = (-0.3, 1), weights (1, 4)) counted as 0 below s = 1e-6 and the
    final step hurt task 0 (-1.80 instead of +0.73)."""
    u_dot, final_dot, degenerate = _rectify_hurts_task0(s)
    ref_u, ref_final, _ = _rectify_hurts_task0(1.05e-6)
    assert degenerate is None
    assert u_dot == pytest.approx(ref_u, abs=1e-5) and u_dot > 0.1
    assert final_dot == pytest.approx(ref_final, abs=1e-5) and final_dot > 0


def _ball_points(mu: np.ndarray, radius: float, rng: np.random.Generator, n: int = 64) -> np.ndarray:
    d = rng.normal(size=(n, mu.shape[0]))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return mu + radius * d * rng.uniform(0, 1, size=(n, 1)) ** (1 / mu.shape[0])


@given(
    tasks=st.integers(2, 4),
    dim=st.integers(2, 5),
    exponent=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_rectify_is_max_min_optimal_across_scale_separations(tasks, dim, exponent, seed):
    """Row 6 (property): with one task gradient 10^-exponent times the others, u* is still at
    least as good as every sampled point of the trust region, per task at that task's scale,
    and 'g_alpha_zero' is reported only for a genuine cancellation."""
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(tasks, dim))
    j[0] *= 10.0 ** (-exponent)
    rho = 0.5
    res = F.rectify(F.gram_matrix(j), rho)
    if res.degenerate == "mu_zero":
        return
    mu = j.mean(0)
    u = F.combine(j, res.u_star)
    norms = np.linalg.norm(j, axis=1)
    assert np.linalg.norm(u - mu) <= rho * np.linalg.norm(mu) * (1 + 1e-9)
    if res.degenerate == "g_alpha_zero":
        g_alpha = res.alpha @ j
        assert np.linalg.norm(g_alpha) <= 1e-6 * (res.alpha @ norms)
    # the max-min value, each task measured in units of its own gradient's norm
    pts = np.vstack([_ball_points(mu, rho * np.linalg.norm(mu), rng), mu])
    best_sampled = (pts @ j.T).min(axis=1).max()
    tol = 1e-7 * norms.min() * np.linalg.norm(mu)
    assert (j @ u).min() >= best_sampled - tol


def test_official_class_name_is_importable():
    """Row 11: the official trainer imports ``CAME_Grad``; it must be this package's CAMEGrad."""
    from camegrad_mini.optim import CAME_Grad

    assert CAME_Grad is CAMEGrad
    model = TwoHead()
    opt = CAME_Grad(torch.optim.AdamW(model.parameters(), lr=1e-4), rho=0.5, kappa=1.5, nu=0.2)
    info = opt.step(model.losses(*_batch()), task_weights=[1.0, 4.0])
    assert not info.skipped and math.isfinite(info.norms["g_final"])


def test_clipping_huge_finite_gradients_clips_them():
    """Row 5 (same fault in the clip): with gradient entries near 1e19, torch's float32 total
    norm overflowed and the gradients went to the base optimizer unclipped."""
    model = TwoHead()
    opt = CAMEGrad(torch.optim.SGD(model.parameters(), lr=1e-3), max_grad_norm=1.0)
    info = opt.step([loss * 1e19 for loss in model.losses(*_batch())], task_weights=[1.0, 4.0])
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
    assert not info.skipped and math.isfinite(info.grad_norm) and info.grad_norm > 1e18
    assert total == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("scale", [1e19, 1e-30])
@pytest.mark.parametrize("aggregator", ["came", "mgda", "cagrad"])
def test_flat_buffer_path_keeps_the_float64_fallback(scale, aggregator):
    """Row 5 again, through the flat buffer (three tasks, two steps: the Gram matrix is a matrix
    product over the buffer): the float32 product overflows or underflows and must be redone
    in float64, not skipped, with the coefficients of scale 1."""
    def run(s):
        model = TwoHead()
        opt = CAMEGrad(torch.optim.SGD(model.parameters(), lr=1e-30), aggregator=aggregator)
        x, y0, y1 = _batch()
        for _ in range(2):
            l0, l1 = model.losses(x, y0, y1)
            info = opt.step([l0 * s, l1 * s, (model.trunk(x) ** 2).mean() * s], task_weights=[1.0, 4.0, 0.5])
        assert opt._layout is not None  # the flat path ran
        return info

    ref, info = run(1.0), run(scale)
    assert not info.skipped and info.degenerate == ref.degenerate
    np.testing.assert_allclose(info.inner_products / scale**2, ref.inner_products, rtol=1e-5)
    np.testing.assert_allclose(info.coefficients, ref.coefficients, rtol=1e-5)
