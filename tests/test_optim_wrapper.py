"""Tests of camegrad_mini.optim.CAMEGrad: the optimizer wrapper around per-task backward passes."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from camegrad_mini.optim import CAME, CAMEGrad, StepInfo, get_aggregator

torch.set_num_threads(1)


class TwoHead(nn.Module):
    """Encoder shared by two heads: like the official trainer's report decoder + classifier."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(3, 4)
        self.head0 = nn.Linear(4, 1)
        self.head1 = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)  # reached by no loss

    def losses(self, x: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> list[torch.Tensor]:
        z = torch.tanh(self.enc(x))
        l0 = ((self.head0(z).squeeze(-1) - y0) ** 2).mean()
        l1 = nn.functional.cross_entropy(self.head1(z), y1)
        return [l0, l1]


def batch(seed: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y0 = torch.randn(n, generator=g)
    y1 = torch.randint(0, 2, (n,), generator=g)
    return x, y0, y1


def make(aggregator="came", lr=0.1, base="sgd", seed=0, **kw):
    model = TwoHead(seed)
    if base == "sgd":
        inner = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        inner = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, CAMEGrad(inner, aggregator=aggregator, **kw)


def flat(tensors) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).double().numpy()


def task_grads(model: TwoHead, data) -> list[dict[str, torch.Tensor]]:
    """Per-task gradients by separate .backward() calls on a copy (independent of the wrapper)."""
    out = []
    for i in range(2):
        m = copy.deepcopy(model)
        m.losses(*data)[i].backward()
        out.append({n: (p.grad.clone() if p.grad is not None else None) for n, p in m.named_parameters()})
    return out


# ------------------------------------------------------------------------------ exact one step
def test_one_step_matches_hand_computed_came_update():
    model, opt = make("came", lr=0.1)
    start = copy.deepcopy(model)
    data = batch()
    w = np.array([1.0, 4.0])
    grads = task_grads(model, data)
    enc = ["enc.weight", "enc.bias"]
    g0, g1 = (flat([grads[i][n] for n in enc]) for i in range(2))
    # The method note, step by step, on explicit vectors (scipy for the one-dimensional dual).
    rho, kappa, nu = 0.5, 1.5, 0.2
    mu = (g0 + g1) / 2
    r = rho * np.linalg.norm(mu)
    obj = lambda x: (x * g0 + (1 - x) * g1) @ mu + r * np.linalg.norm(x * g0 + (1 - x) * g1)  # noqa: E731
    x = minimize_scalar(obj, bounds=(0, 1), method="bounded", options={"xatol": 1e-12}).x
    ga = x * g0 + (1 - x) * g1
    u_star = mu + r * ga / np.linalg.norm(ga)
    g_joint = w[0] * g0 + w[1] * g1
    u_en = u_star * kappa * np.linalg.norm(g_joint) / np.linalg.norm(u_star)
    g_final = (1 - nu) * u_en + nu * kappa * g_joint

    assert all(p.grad is None for p in model.parameters())
    info = opt.step(model.losses(*data), task_weights=w.tolist())

    new_enc = flat([model.enc.weight, model.enc.bias])
    old_enc = flat([start.enc.weight, start.enc.bias])
    assert np.allclose(new_enc, old_enc - 0.1 * g_final, rtol=1e-5, atol=1e-6)
    # heads get their own weighted gradient; the unused layer is untouched
    for i, head in enumerate(["head0", "head1"]):
        for n in ("weight", "bias"):
            exp = getattr(getattr(start, head), n).detach() - 0.1 * w[i] * grads[i][f"{head}.{n}"]
            assert torch.allclose(getattr(getattr(model, head), n), exp, atol=1e-6)
    assert torch.equal(model.unused.weight, start.unused.weight) and model.unused.weight.grad is None
    # diagnostics agree with the explicit vectors
    assert info.inner_products[0, 1] == pytest.approx(g0 @ g1, rel=1e-5)
    assert info.inner_product_01 == pytest.approx(g0 @ g1, rel=1e-5)
    assert info.conflict == bool(g0 @ g1 < 0)
    assert info.weighted_inner_products[0, 1] == pytest.approx(4 * g0 @ g1, rel=1e-5)
    assert info.norms["g_joint"] == pytest.approx(np.linalg.norm(g_joint), rel=1e-5)
    assert info.norms["u_en"] == pytest.approx(kappa * np.linalg.norm(g_joint), rel=1e-5)
    assert info.norms["g_final"] == pytest.approx(np.linalg.norm(g_final), rel=1e-5)
    assert info.shared_numel == 3 * 4 + 4
    assert isinstance(info, StepInfo) and opt.last_info is info and not info.skipped


def test_ls_aggregator_equals_single_weighted_backward():
    data = batch()
    model_a, opt = make("ls", base="adamw", lr=1e-2)
    model_b = copy.deepcopy(model_a)
    ref = torch.optim.AdamW(model_b.parameters(), lr=1e-2)
    for _ in range(3):
        opt.step(model_a.losses(*data), task_weights=[1.0, 4.0])
        ref.zero_grad()
        l0, l1 = model_b.losses(*data)
        (l0 + 4.0 * l1).backward()
        ref.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=False):
        assert torch.allclose(pa, pb, atol=1e-6)


@pytest.mark.parametrize("name", ["ls", "pcgrad", "mgda", "cagrad", "came"])
def test_every_aggregator_runs_through_the_wrapper(name):
    model, opt = make(name, base="adamw", lr=1e-2)
    data = batch()
    first = sum(model.losses(*data)).item()
    for _ in range(15):
        info = opt.step(model.losses(*data), task_weights=[1.0, 4.0])
    assert info.method == name and info.num_tasks == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(model.losses(*data)).item() < first  # it optimizes
    if name in ("came", "cagrad", "mgda"):
        assert info.alpha is not None and info.alpha.sum() == pytest.approx(1.0)


def test_graph_freed_and_grad_not_polluted():
    model, opt = make("came")
    losses = model.losses(*batch())
    opt.backward(losses, task_weights=[1.0, 4.0])
    assert all(p.grad is None for p in model.parameters())  # per-task grads stay in buffers
    with pytest.raises(RuntimeError):
        losses[1].backward()  # the graph was freed after the last task
    opt.step()
    assert model.enc.weight.grad is not None and model.unused.weight.grad is None


# ------------------------------------------------------------------------------ shared parameters
def test_shared_all_combines_head_parameters_too():
    data = batch()
    m_auto, o_auto = make("came")
    m_all, o_all = make("came", shared="all")
    i_auto = o_auto.step(m_auto.losses(*data), task_weights=[1.0, 4.0])
    i_all = o_all.step(m_all.losses(*data), task_weights=[1.0, 4.0])
    assert i_all.shared_numel == i_auto.shared_numel + (4 + 1) + (8 + 2)
    assert not torch.allclose(m_auto.head0.weight, m_all.head0.weight)
    # explicit list: only the encoder weight is combined, its bias gets the LS sum
    m_ex, o_ex = make("came", shared=[TwoHead().enc.weight])  # other tensors: nothing matches
    info = o_ex.step(m_ex.losses(*data), task_weights=[1.0, 4.0])
    assert info.degenerate == "no_shared_parameters" and info.shared_numel == 0
    m_ex, o_ex = make("came")
    o_ex = CAMEGrad(torch.optim.SGD(m_ex.parameters(), lr=0.1), shared=[m_ex.enc.weight])
    assert o_ex.step(m_ex.losses(*data), task_weights=[1.0, 4.0]).shared_numel == 12


def test_single_task():
    model, opt = make("came", shared="all")
    start = copy.deepcopy(model)
    l0 = model.losses(*batch())[0]
    info = opt.step([l0], task_weights=[2.0])
    assert info.degenerate == "single_task"
    m = copy.deepcopy(start)
    m.losses(*batch())[0].backward()
    # kappa * omega * g with kappa = 1.5
    assert torch.allclose(model.enc.weight, start.enc.weight - 0.1 * 1.5 * 2.0 * m.enc.weight.grad, atol=1e-6)
    model, opt = make("came")  # auto: one task reaches everything alone -> its weighted gradient
    info = opt.step([model.losses(*batch())[0]])
    assert info.degenerate == "no_shared_parameters"


# ------------------------------------------------------------------------------ accumulation, AMP
def test_accumulation_equals_full_batch():
    x, y0, y1 = batch(n=8)
    m_full, o_full = make("came")
    m_acc, o_acc = make("came")
    i_full = o_full.step(m_full.losses(x, y0, y1), task_weights=[1.0, 4.0])
    for sl in (slice(0, 4), slice(4, 8)):
        losses = m_acc.losses(x[sl], y0[sl], y1[sl])
        o_acc.backward([loss / 2 for loss in losses], task_weights=[1.0, 4.0])
    i_acc = o_acc.step()
    assert i_acc.num_backward == 2
    for pa, pb in zip(m_full.parameters(), m_acc.parameters(), strict=False):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert np.allclose(i_full.inner_products, i_acc.inner_products, rtol=1e-4)


def test_grad_scaler_path_matches_unscaled():
    data = batch()
    m_ref, o_ref = make("came", base="adamw", lr=1e-2)
    m_amp, o_amp = make("came", base="adamw", lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(3):
        i_ref = o_ref.step(m_ref.losses(*data), task_weights=[1.0, 4.0])
        o_amp.backward(m_amp.losses(*data), task_weights=[1.0, 4.0], scaler=scaler)
        i_amp = o_amp.step(scaler=scaler)
        scaler.update()
    assert i_amp.grad_scale == 2.0**12
    # recipe B: losses scaled by the caller, the scaler given to step() only
    m_b, o_b = make("came", base="adamw", lr=1e-2)
    scaler_b = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(3):
        o_b.backward([scaler_b.scale(loss) for loss in m_b.losses(*data)], task_weights=[1.0, 4.0])
        i_b = o_b.step(scaler=scaler_b)
        scaler_b.update()
    assert np.allclose(i_b.losses, i_amp.losses) and np.allclose(i_b.inner_products, i_amp.inner_products)
    for pa, pb in zip(m_b.parameters(), m_amp.parameters(), strict=False):
        assert torch.equal(pa, pb)
    assert np.allclose(i_amp.inner_products, i_ref.inner_products, rtol=1e-4)  # reported unscaled
    for pa, pb in zip(m_ref.parameters(), m_amp.parameters(), strict=False):
        assert torch.allclose(pa, pb, atol=1e-5)
    with pytest.raises(ValueError, match="scaler"):
        o_amp.backward(m_amp.losses(*data), scaler=scaler)
        o_amp.step()


def test_grad_scaler_skips_on_overflow():
    model, opt = make("came")
    start = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    l0, l1 = model.losses(*batch())
    info = opt.step([l0, l1 * float("inf")], scaler=scaler)
    scaler.update()
    assert info.skipped and scaler.get_scale() == 2.0**11
    for p, q in zip(model.parameters(), start.parameters(), strict=False):
        assert torch.equal(p, q)


def test_grad_scaler_with_clip_unscales_first():
    model, opt = make("came", max_grad_norm=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    info = opt.step(model.losses(*batch()), task_weights=[1.0, 4.0], scaler=scaler)
    scaler.update()
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    assert total == pytest.approx(1e-3, rel=1e-3)  # clipped in unscaled units
    assert info.grad_norm < 2.0**12 * 1e-3 * 100 and not info.skipped


def test_bfloat16_parameters():
    model, opt = make("came", base="adamw", lr=1e-3)
    model.to(torch.bfloat16)
    x, y0, y1 = batch()
    info = opt.step(model.losses(x.bfloat16(), y0.bfloat16(), y1), task_weights=[1.0, 4.0])
    assert np.all(np.isfinite(info.inner_products)) and info.norms["g_final"] > 0
    assert model.enc.weight.grad.dtype == torch.bfloat16


def test_max_grad_norm_clips_final_gradient():
    model, opt = make("came", max_grad_norm=1e-3)
    info = opt.step(model.losses(*batch()), task_weights=[1.0, 4.0])
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
    assert info.grad_norm > 1e-3 and total == pytest.approx(1e-3, rel=1e-3)
    assert info.clip_coef == pytest.approx(1e-3 / info.grad_norm, rel=1e-3)


# ------------------------------------------------------------------------------ non-finite policy
def test_nonfinite_skip_warns_and_leaves_params():
    model, opt = make("came", base="adamw")
    opt.step(model.losses(*batch()))  # creates AdamW state
    before = copy.deepcopy(opt.state_dict())
    start = copy.deepcopy(model)
    l0, l1 = model.losses(*batch())
    with pytest.warns(RuntimeWarning, match=r"task\(s\) \[1\]"):
        info = opt.step([l0, l1 * float("nan")])
    assert info.skipped and info.coefficients is None
    for p, q in zip(model.parameters(), start.parameters(), strict=False):
        assert torch.equal(p, q)
    assert torch.equal(opt.state_dict()["base"]["state"][0]["exp_avg"], before["base"]["state"][0]["exp_avg"])
    # infinite gradient with a finite loss (sqrt at 0) is caught too
    with pytest.warns(RuntimeWarning):
        bad = (model.enc.bias - model.enc.bias.detach()).abs().sqrt().sum()
        assert opt.step([model.losses(*batch())[0], bad]).skipped
    # the next finite step works normally
    assert not opt.step(model.losses(*batch())).skipped


def test_nonfinite_raise():
    model, opt = make("came", nonfinite="raise")
    l0, l1 = model.losses(*batch())
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step([l0 * float("inf"), l1])
    assert opt.step(model.losses(*batch())).skipped is False  # pending state was cleared


# ------------------------------------------------------------------------------ checkpoint, scheduler
@pytest.mark.parametrize("name", ["came", "pcgrad"])
def test_state_dict_round_trip(name):
    data = batch()
    model, opt = make(name, base="adamw", lr=1e-2)
    x3 = torch.randn(8, 3, generator=torch.Generator().manual_seed(5))

    def losses(m):
        l0, l1 = m.losses(*data)
        return [l0, l1, (m.enc(x3) ** 2).mean()]  # three tasks: PCGrad's random order matters

    for _ in range(3):
        opt.step(losses(model), task_weights=[1.0, 4.0, 0.5])
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "model": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)  # weights_only=True (the default) must accept the wrapper's state
    sd, saved = ckpt["opt"], ckpt["model"]
    for _ in range(3):
        opt.step(losses(model), task_weights=[1.0, 4.0, 0.5])

    model2, opt2 = make(name, base="adamw", lr=1e-2, seed=123)
    model2.load_state_dict(saved)
    opt2.load_state_dict(sd)
    sd2 = opt2.state_dict()
    assert sd2["camegrad"] == sd["camegrad"]
    assert sd2["base"]["param_groups"] == sd["base"]["param_groups"]
    for k, st in sd["base"]["state"].items():
        for key, val in st.items():
            assert torch.equal(sd2["base"]["state"][k][key], val)
    for _ in range(3):
        opt2.step(losses(model2), task_weights=[1.0, 4.0, 0.5])
    for p, q in zip(model.parameters(), model2.parameters(), strict=False):
        assert torch.equal(p, q)
    assert opt2.last_info.step == opt.last_info.step == 6

    _, other = make("ls")
    with pytest.raises(ValueError, match="aggregator"):
        other.load_state_dict(sd)


def test_lr_scheduler_drives_the_wrapper():
    model, opt = make("came", lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(3):
            opt.step(model.losses(*batch()), task_weights=[1.0, 4.0])
            sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert opt.param_groups is opt.optimizer.param_groups
    one = torch.optim.lr_scheduler.OneCycleLR(make("came", lr=0.1)[1], max_lr=0.1, total_steps=10)
    assert one.get_last_lr()[0] < 0.1


def test_zero_grad_clears_pending_and_grads():
    model, opt = make("came")
    opt.step(model.losses(*batch()))
    opt.backward(model.losses(*batch()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="backward"):
        opt.step()


# ------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": 1.0}, "rho"),
        ({"kappa": 0.9}, "kappa"),
        ({"nu": -0.1}, "nu"),
        ({"eps": -1e-8}, "eps"),
        ({"shared": "some"}, "shared"),
        ({"nonfinite": "ignore"}, "nonfinite"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"aggregator": "nashmtl"}, "aggregator"),
        ({"aggregator": "cagrad", "cagrad_rescale": 5}, "rescale"),
        ({"aggregator": "pcgrad", "seed": -1}, "seed"),
    ],
)
def test_constructor_value_errors(kwargs, match):
    model = TwoHead()
    with pytest.raises(ValueError, match=match):
        CAMEGrad(torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_call_value_errors():
    model, opt = make("came")
    with pytest.raises(ValueError, match="base_optimizer"):
        CAMEGrad(model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_weights"):
        opt.step(model.losses(*batch()), task_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="task_weights"):
        opt.step(model.losses(*batch()), task_weights=[1.0, -2.0])
    opt.zero_grad()
    opt.backward(model.losses(*batch()), task_weights=[1.0, 4.0])
    with pytest.raises(ValueError, match="task_weights"):
        opt.backward(model.losses(*batch()), task_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="losses"):
        opt.backward(model.losses(*batch())[:1], task_weights=[1.0])
    with pytest.raises(ValueError, match="losses"):
        opt.backward([])
    with pytest.raises(ValueError, match="closure"):
        opt.step(closure=lambda: 0.0)
    assert CAMEGrad(torch.optim.SGD(model.parameters(), lr=0.1), kappa=0.5, allow_kappa_below_one=True)


def test_sparse_gradients_are_rejected():
    emb = nn.Embedding(5, 3, sparse=True)
    opt = CAMEGrad(torch.optim.SGD(emb.parameters(), lr=0.1))
    out = emb(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sparse"):
        opt.step([out.sum(), out.pow(2).sum()])


def test_aggregator_objects_and_names():
    model = TwoHead()
    agg = CAME(rho=0.3, kappa=1.0, nu=0.0)
    opt = CAMEGrad(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=agg)
    assert opt.aggregator is agg
    assert get_aggregator("CAME_Grad").name == "came" and get_aggregator("sum").name == "ls"
    assert get_aggregator("cagrad", c=0.2, rescale=0).config() == {"c": 0.2, "rescale": 0}
    opt.aggregator.nu = 0.5  # hyperparameters may change between steps
    assert opt.step(model.losses(*batch())).norms["g_final"] > 0


# ------------------------------------------------------------------------------ flat buffer
def _three_task_losses(model: TwoHead, data, step: int, tasks: int = 3) -> list[torch.Tensor]:
    """The two heads' losses and ``tasks - 2`` more on the encoder only."""
    out = model.losses(*data)
    for k in range(tasks - 2):
        x3 = torch.randn(8, 3, generator=torch.Generator().manual_seed(50 + 7 * step + k), dtype=data[0].dtype)
        out.append(((model.enc(x3) - k / 4) ** 2).mean())
    return out


WEIGHTS_10 = [1.0, 4.0, 0.5, 1.0, 2.0, 0.3, 1.5, 1.0, 0.7, 3.0]


def _train(name: str, flat: bool, tasks: int, micro: int, scaler: bool, **kw):
    """Four SGD steps through the flat buffer, or through the per-tensor path (the path of a
    step whose reach pattern changed, or of any step with mixed or low-precision gradients)."""
    model = TwoHead(0).double()
    opt = CAMEGrad(torch.optim.SGD(model.parameters(), lr=0.1), aggregator=name, **kw)
    opt._use_flat = flat
    infos = []
    amp = torch.amp.GradScaler("cpu", init_scale=2.0**8) if scaler else None
    for step in range(4):
        x, y0, y1 = batch(seed=step)
        for sl in np.array_split(np.arange(8), micro):
            data = (x[sl].double(), y0[sl].double(), y1[sl])
            losses = _three_task_losses(model, data, step, tasks)
            opt.backward([loss / micro for loss in losses], task_weights=WEIGHTS_10[:tasks], scaler=amp)
        infos.append(opt.step(scaler=amp))
        if amp is not None:
            amp.update()
    return model, infos, opt


@pytest.mark.parametrize("name", ["ls", "pcgrad", "mgda", "cagrad", "came"])
@pytest.mark.parametrize(
    "tasks, micro, scaler, kw",
    [(2, 1, False, {}), (3, 1, False, {}), (3, 2, False, {"shared": "all"}), (2, 2, True, {}),
     (3, 1, False, {"shared": "enc.weight"}), (2, 1, False, {"max_grad_norm": 1e-2}),
     # ten tasks: the Gram matrix goes through _flat.chunked_gram (CHUNKED_FROM); with "all",
     # the last task reaches only some of the combined parameters
     (10, 1, False, {}), (10, 2, False, {"shared": "all"})],
)
def test_flat_buffer_steps_equal_per_tensor_steps(name, tasks, micro, scaler, kw):
    if kw.get("shared") == "enc.weight":  # explicit: the bias and the heads become weighted sums
        kw = {"shared": [p for n, p in TwoHead(0).named_parameters() if n == "enc.weight"]}
    flat_model, flat_infos, flat_opt = _train(name, True, tasks, micro, scaler, **kw)
    ref_model, ref_infos, ref_opt = _train(name, False, tasks, micro, scaler, **kw)
    # each path did run (two tasks in one process use the per-tensor path by design)
    assert (flat_opt._layout is not None) == (tasks > 2) and ref_opt._layout is None
    for p, q in zip(flat_model.parameters(), ref_model.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    for a, b in zip(flat_infos, ref_infos, strict=False):
        np.testing.assert_allclose(a.inner_products, b.inner_products, rtol=1e-10, atol=1e-16)
        assert a.shared_numel == b.shared_numel and a.degenerate == b.degenerate


def test_flat_buffer_follows_a_change_of_reach_pattern():
    model, opt = make("came", lr=0.1)
    ref_model, _ = make("came", lr=0.1)
    seen = []
    for step in range(6):
        tasks = 4 if step in (2, 3) else 3  # steps 2-3 add a task, steps 4-5 drop it again
        for m, o in ((model, opt), (ref_model, CAMEGrad(torch.optim.SGD(ref_model.parameters(), lr=0.1)))):
            if m is ref_model:
                o._use_flat = False
            o.step(_three_task_losses(m, batch(seed=step), step, tasks), task_weights=WEIGHTS_10[:tasks])
        seen.append(opt._layout.num_tasks if opt._layout is not None else None)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert seen == [3, 3, 4, 4, 3, 3]  # a new buffer, planned from the graphs, whenever T changes


def test_flat_buffer_grad_is_overwritten_not_leaked():
    model, opt = make("came")
    for step in range(3):
        opt.step(_three_task_losses(model, batch(), step), task_weights=[1.0, 4.0, 0.5])
    assert opt._layout is not None
    assert model.unused.weight.grad is None
    assert not model.enc.weight._backward_hooks  # the slot hooks live only inside a step
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {"enc.weight", "enc.bias", "head0.weight", "head0.bias", "head1.weight", "head1.bias"}
    opt.backward(_three_task_losses(model, batch(), 3), task_weights=[1.0, 4.0, 0.5])
    assert all(p.grad is None for p in model.parameters())  # released at the first backward()


@pytest.mark.parametrize("rows", [3, 12])
def test_flat_gram_kernels_match_float64_across_chunk_boundaries(rows):
    from camegrad_mini.optim import _flat

    g = torch.Generator().manual_seed(0)
    sizes = [70001, 5, 40000]  # crosses GRAM_CHUNK and COPY_CHUNK boundaries, odd remainders
    full = torch.randn(rows + 1, sum(sizes), generator=g)
    full[rows, sizes[0] : sizes[0] + sizes[1]] = 0.0  # the last row misses the middle tensor
    ref = (full.double() @ full.double().T).numpy()
    scale = np.abs(ref).max()
    held = full[:rows]
    np.testing.assert_allclose(_flat.block_gram(held).numpy(), ref[:rows, :rows], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(_flat.block_gram(held, torch.float64).numpy(), ref[:rows, :rows], rtol=1e-12)
    bounds = np.cumsum([0] + sizes)
    last = [(slice(int(a), int(b)), None if k == 1 else full[rows, a:b].clone())
            for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=False))]
    np.testing.assert_allclose(_flat.chunked_gram(held, last).numpy(), ref, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(_flat.chunked_gram(held, last, torch.float64).numpy(), ref, rtol=1e-12)
