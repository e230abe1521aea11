"""The trainer under torchrun: two CPU processes (gloo) against one process, and mixed precision.

Two processes split every global batch (``batch_size`` studies, ``batch_size / 2`` each), so a
2-process run must take the steps of a 1-process run with the same ``batch_size``: the same loss
curve, the same gradient statistics and the same parameters, to float tolerance (the sums are
done in another order). Rank 0 alone writes the files. A run cut by ``--max-train-seconds``
resumes under two processes to the uninterrupted result. Everything runs the ``tiny`` config on
one thread per process; about 45 s on two cores.

The mixed-precision choice (bf16 where the GPU has it, fp16 with a GradScaler where not) is
tested without a GPU by handing :func:`camegrad_mini.rrg.train.amp_mode` the GPU's answer.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from camegrad_mini.rrg import train as T

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")
LOSS_COLUMNS = ("lr", "loss_report", "loss_cls", "norm_report", "norm_cls", "grad_norm", "clip_coef")
# what one training writes into its folder (and nothing per rank)
OUTPUTS = {".lock", "best.pt", "best.pt.sha256", "config.json", "generations_test.jsonl", "last.pt",
           "last.pt.sha256", "metrics.csv", "steps.csv", "summary.json"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """An R2Gen-layout folder with the first 24 / 8 / 8 studies of the shipped annotation (phantom
    images): every process loads it in a fraction of the time the whole annotation takes."""
    from camegrad_mini.rrg.paths import data_samples_dir

    ann = json.loads((data_samples_dir() / "annotation.json").read_text())
    root = tmp_path_factory.mktemp("small_iu")
    small = {split: ann[split][:n] for split, n in (("train", 24), ("val", 8), ("test", 8))}
    (root / "annotation.json").write_text(json.dumps(small))
    return root


def _torchrun(out: Path, method: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", T.EXIT_HOOK_ENV):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "camegrad_mini.rrg.train", "--method", method, "--seed", "0", "--config", "tiny", "--out", str(out),
           "--device", "cpu", "--num-threads", "1", "--no-progress", "--images", "phantom", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, small_root):
    """The reference: one process, the same config (the same global batch of 8 studies)."""
    over = dict(data_root=str(small_root), images="phantom", device="cpu")
    data = T.prepare_data(T.get_config("tiny", **over), "cpu")
    root = tmp_path_factory.mktemp("one")
    for m in ("ls", "came"):
        T.train(T.get_config("tiny", method=m, **over), root / m, resume=False, data=data)
    return root


def _assert_same_run(a: Path, b: Path) -> None:
    """Same steps, loss curve, gradient statistics and final parameters, to float tolerance."""
    ra, rb = _rows(a / "steps.csv"), _rows(b / "steps.csv")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [str(i) for i in range(6)]
    for x, y in zip(ra, rb, strict=True):
        for c in LOSS_COLUMNS:
            assert float(x[c]) == pytest.approx(float(y[c]), rel=1e-4, abs=1e-7), (x["step"], c)
        # the inner product of two nearly orthogonal gradients is a difference of large sums: it is
        # compared on the scale of the product of the norms (its cosine to 1e-4)
        scale = float(x["norm_report"]) * float(x["norm_cls"])
        assert float(x["inner"]) == pytest.approx(float(y["inner"]), abs=1e-4 * scale), x["step"]
        assert float(x["cosine"]) == pytest.approx(float(y["cosine"]), abs=1e-4), x["step"]
        assert x["conflict"] == y["conflict"] or abs(float(x["cosine"])) < 1e-4, x["step"]
    pa = torch.load(a / "last.pt", weights_only=False)["model"]
    pb = torch.load(b / "last.pt", weights_only=False)["model"]
    # AdamW moves an entry whose gradient is nearly zero by about lr times the sign of its float
    # noise, so single entries may differ by a fraction of lr (3e-3); the parameters as a whole
    # agree to 1e-4 relative (LS and CAME-Grad, the same start, end 1e-2 apart)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=5e-4)
    diff = sum(float(((pa[k] - pb[k]) ** 2).sum()) for k in pa) ** 0.5
    assert diff <= 1e-4 * sum(float((pa[k] ** 2).sum()) for k in pa) ** 0.5


@needs_gloo
def test_two_processes_take_the_one_process_steps_ls(tmp_path, one_process, small_root):
    out = tmp_path / "ls"
    r = _torchrun(out, "ls", "--data-root", str(small_root))
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == OUTPUTS  # one set of outputs, written by rank 0
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    s = json.loads((out / "summary.json").read_text())
    assert (s["world_size"], s["steps"], s["stopped_early"]) == (2, 6, False)
    assert len(_rows(out / "metrics.csv")) == 2 and len((out / "generations_test.jsonl").read_text().splitlines()) == 8
    _assert_same_run(one_process / "ls", out)


@needs_gloo
def test_two_processes_cut_by_the_time_limit_resume_to_the_one_process_run_came(tmp_path, one_process, small_root):
    """CAME-Grad's aggregation is non-linear: the per-task gradients are averaged over the ranks
    before it, so two processes still take the one-process step. The run is cut after its first
    step (inside epoch 0) and resumed by the same command under two processes."""
    out = tmp_path / "came"
    r = _torchrun(out, "came", "--data-root", str(small_root), "--max-train-seconds", "1e-9")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped early" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert (s["stopped_early"], s["steps"]) == (True, 1)
    pos = torch.load(out / "last.pt", weights_only=False)["scheduler"]["position"]
    assert (pos["epoch_complete"], pos["batch"]) == (False, 1)
    r = _torchrun(out, "came", "--data-root", str(small_root))
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert (s["stopped_early"], s["steps"], s["epochs_completed"], s["world_size"]) == (False, 6, 2, 2)
    _assert_same_run(one_process / "came", out)


@needs_gloo
@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock")
def test_a_busy_out_stops_every_rank(tmp_path):
    """Rank 0 holds the folder's lock; when another training has it, every rank stops (no hang)."""
    from camegrad_mini.rrg.runfiles import folder_lock

    out = tmp_path / "busy"
    with folder_lock(out):
        r = _torchrun(out, "ls")
    assert r.returncode != 0
    assert "in use by another training" in r.stderr
    assert not (out / "steps.csv").exists()


# -- the pieces, in this process ----------------------------------------------------------------

def test_torchrun_environment_is_read_and_checked(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert T.distributed_from_env() == T.DistContext()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = T.distributed_from_env()
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.active, ctx.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK"):
        T.distributed_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        T.distributed_from_env()


def test_global_batch_must_split_evenly_and_cuda_n_is_refused_under_torchrun():
    ctx = T.DistContext(rank=1, world=2, local_rank=1)
    with pytest.raises(ValueError, match="batch_size=7 is not divisible"):
        T._check_world(T.get_config("tiny", batch_size=7), ctx)
    T._check_world(T.get_config("tiny", batch_size=8), ctx)
    assert T._resolve_device("cpu", ctx) == torch.device("cpu")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda"):
            T._resolve_device("cuda:0", ctx)


def test_shards_cover_the_batch_and_the_loss_factors_restore_the_global_mean():
    """Averaging the ranks' rescaled shard losses gives the one-process loss of the batch, for the
    token-mean report NLL (shards hold different token counts) and the per-study BCE."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 20, size=10)
    nll = [rng.random(int(t)) for t in tokens]  # per-token losses of each study
    bce = rng.random(10)
    world = 3
    parts = [T.shard_bounds(10, T.DistContext(rank=r, world=world)) for r in range(world)]
    assert parts == [(0, 3), (3, 6), (6, 10)]
    avg = np.zeros(2)
    for r, (lo, hi) in enumerate(parts):
        f = T.shard_loss_factors(tokens, lo, hi, T.DistContext(rank=r, world=world))
        shard = [np.concatenate(nll[lo:hi]).mean(), bce[lo:hi].mean()]
        avg += np.array([shard[0] * f[0], shard[1] * f[1]]) / world
    assert avg == pytest.approx([np.concatenate(nll).mean(), bce.mean()])
    assert T.shard_bounds(10, T.DistContext()) == (0, 10)
    with pytest.raises(ValueError, match="cannot be split"):
        T.shard_bounds(1, T.DistContext(rank=0, world=2))


def test_a_shard_gets_the_augmentation_one_process_draws_for_its_studies():
    cfg = T.get_config("tiny", prompt_teacher=0.5)
    x = torch.randint(0, 256, (8, 2, 32, 32), dtype=torch.uint8)
    labels = (torch.rand(8, 14) > 0.5).float()
    torch.manual_seed(5)
    whole, prompts = T.augment(x, cfg), T._prompt_labels(labels, 0.5)
    torch.manual_seed(5)
    part, part_prompts = T.augment(x[4:], cfg, (4, 8, 8)), T._prompt_labels(labels[4:], 0.5, (4, 8, 8))
    assert torch.equal(part, whole[4:])
    assert torch.equal(torch.nan_to_num(part_prompts, 7.0), torch.nan_to_num(prompts[4:], 7.0))


def test_one_process_helpers_are_no_ops():
    ctx = T.DistContext()
    assert T.on_main(ctx, lambda a: a + 1, 1) == 2
    assert T.any_rank(ctx, True) is True and T.any_rank(ctx, False) is False
    losses = [torch.tensor(2.0), torch.tensor(3.0)]
    assert T.global_loss_values(losses, None, ctx) == [2.0, 3.0]
    assert T._rescaled(losses, None) is losses
    assert T.sync_task_gradients(torch.nn.Linear(2, 2), None, ctx) == []


# -- mixed precision ----------------------------------------------------------------------------

CUDA = torch.device("cuda")


@pytest.mark.parametrize("amp, bf16, native, expected", [
    ("auto", True, True, "bf16"), ("auto", True, False, "fp16"),  # a T4 has no bfloat16
    ("auto", False, True, "off"), ("auto", False, False, "off"),  # the older switch still turns it off
    ("fp16", True, True, "fp16"), ("off", True, True, "off"), ("bf16", True, True, "bf16"),
    ("fp16", False, False, "fp16")])
def test_amp_mode_on_a_gpu(amp, bf16, native, expected):
    assert T.amp_mode(T.get_config("tiny", amp=amp, bf16=bf16), CUDA, native_bf16=native) == expected


def test_amp_mode_keeps_the_cpu_in_float32_and_refuses_bf16_without_it(monkeypatch):
    for amp in ("auto", "bf16", "fp16"):
        assert T.amp_mode(T.get_config("tiny", amp=amp), torch.device("cpu"), native_bf16=True) == "off"
    with pytest.raises(ValueError, match="no native bfloat16"):
        T.amp_mode(T.get_config("tiny", amp="bf16"), CUDA, native_bf16=False)
    # without an answer given, the GPU is asked (here: a stand-in for a T4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert T.amp_mode(T.get_config("tiny"), CUDA) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert T.amp_mode(T.get_config("tiny"), CUDA) == "bf16"


def test_fp16_gets_a_grad_scaler_and_bad_amp_is_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA the scaler warns that it disables itself
        assert isinstance(T.grad_scaler_for("fp16"), torch.amp.GradScaler)
    assert T.grad_scaler_for("bf16") is None and T.grad_scaler_for("off") is None
    assert T.autocast_for("off") is contextlib.nullcontext
    with pytest.raises(ValueError, match="amp="):
        T.get_config("tiny", amp="fp8")


def test_a_checkpoint_from_before_amp_and_dataset_still_resumes(tmp_path):
    cfg = T.get_config("tiny")
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("amp", "dataset")}
    T._check_same_config(tmp_path / "last.pt", old, cfg)  # the new fields at their defaults: the same run
    with pytest.raises(ValueError, match="amp"):
        T._check_same_config(tmp_path / "last.pt", old, T.get_config("tiny", amp="fp16"))


def test_the_wrapper_averages_the_task_gradients_itself_where_it_can():
    """CAMEGrad with a ``distributed`` argument all-reduces its per-task gradients at step(): the
    trainer then adds no hooks. An optimizer without it gets one averaging hook per parameter."""
    model = torch.nn.Linear(2, 2)
    ctx = T.DistContext(rank=0, world=2)
    opt = T.build_optimizer(model, T.get_config("tiny"))
    if T._wrapper_syncs_gradients(opt):
        assert T.sync_task_gradients(model, opt, ctx) == []
    hooks = T.sync_task_gradients(model, torch.optim.SGD(model.parameters(), lr=0.1), ctx)
    assert len(hooks) == 2
    for h in hooks:
        h.remove()
