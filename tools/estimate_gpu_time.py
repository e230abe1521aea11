"""Estimate how long chapter 6's GPU plans take, from counted FLOPs and kernel launches; write the arithmetic.

    .venv/bin/python tools/estimate_gpu_time.py                 # writes results/gpu_estimate.md
    .venv/bin/python tools/estimate_gpu_time.py --out - --steps 1

For each GPU plan of camegrad_mini.rrg.pipeline.PLANS, on this CPU, with the model and optimizer
the trainer builds (vocabulary fitted on the R2Gen training reports, synthetic images of the plan's
size, CAME-Grad: one backward pass per task, like every wrapped method):

1. FLOPs of one training step (torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions,
   attention; elementwise work is not counted), of one validation pass (greedy decoding forced to
   the full report length, an upper bound, plus the teacher-forced NLL) and of the test decoding;
2. aten operators per step that are not views: each is about one CUDA kernel launch;
3. the measured time of a training step on this CPU (a cross-check of the FLOP count: the implied
   GFLOP/s must be a plausible share of the CPU's peak).

GPU time = all FLOPs / (published dense peak x assumed utilisation), the runs sharing one GPU;
launch time = operators x assumed CPU time per launch, spread over the concurrent processes (one
per CPU core). A step cannot be faster than either, so the estimate takes the larger, and a
pessimistic bound adds them. Nothing here is a GPU measurement: run the plan and compare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from camegrad_mini.rrg import train as T  # noqa: E402
from camegrad_mini.rrg.model import ModelConfig, ReportGenerator  # noqa: E402
from camegrad_mini.rrg.pipeline import PLANS  # noqa: E402

SPLIT = {"train": 2069, "val": 296, "test": 590}  # R2Gen's IU X-Ray split: what prepare --layout openi yields
# published dense peaks (TFLOP/s) and the CPU cores a typical machine with that GPU has
GPUS = {
    "t4": [("NVIDIA T4, fp16 tensor cores (datasheet: 65 TFLOPS mixed precision)", 65.0, 2),
           ("NVIDIA T4 in float32 (amp='off'; datasheet: 8.1 TFLOPS), for comparison", 8.1, 2)],
    "a100": [("NVIDIA A100 SXM, bf16 dense (datasheet: 312 TFLOPS)", 312.0, 12),
             ("NVIDIA H100 SXM, bf16 dense (datasheet: 989 TFLOPS)", 989.0, 16)],
}
UTILISATION = (0.10, 0.05)  # assumed share of the peak a 7 M-parameter model at batch 32 reaches
LAUNCH_S = 10e-6  # CPU time per eager PyTorch operator incl. the CUDA launch (5-20 us on cloud CPUs)


class OpCount(TorchDispatchMode):
    """Counts aten operators that are not views (each launches about one kernel on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += not getattr(func, "is_view", False)
        return func(*args, **(kwargs or {}))


def vocab_size() -> int:
    from camegrad_mini.rrg.layouts import read_r2gen
    from camegrad_mini.rrg.paths import data_samples_dir
    from camegrad_mini.rrg.text import Tokenizer, clean_report

    ann = read_r2gen(data_samples_dir(), check_images=False)
    return len(Tokenizer.fit([clean_report(e["report"]) for e in ann["train"]], clean=False))


def build(cfg: T.TrainConfig, vocab: int):
    torch.manual_seed(0)
    mc = ModelConfig.preset(cfg.model, vocab, image_size=cfg.image_size, pad_id=0, bos_id=1, eos_id=2,
                            **cfg.model_overrides)
    model = ReportGenerator(mc)
    return model, T.build_optimizer(model, cfg), mc


def batch(cfg: T.TrainConfig, mc: ModelConfig, vocab: int, n: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 2, cfg.image_size, cfg.image_size), dtype=torch.uint8, generator=g),
            torch.randint(3, vocab, (n, mc.max_len), generator=g),
            torch.randint(3, vocab, (n, mc.max_len), generator=g),
            (torch.rand(n, 14, generator=g) > 0.8).float())


def measure(plan: str, steps: int, vocab: int) -> dict:
    p = PLANS[plan]
    cfg = T.get_config(p.config, **{k: v for k, v in p.overrides.items() if k != "device"}, method="came")
    model, opt, mc = build(cfg, vocab)
    imgs, tok, tgt, lab = batch(cfg, mc, vocab, cfg.batch_size)

    def step() -> None:
        losses = model.losses(T.augment(imgs, cfg), tok, tgt, lab, label_smoothing=cfg.label_smoothing)
        opt.step([losses["report"], losses["cls"]], task_weights=list(cfg.task_weights))

    step()  # warm-up: optimizer state and other first-call work is not a step's
    with FlopCounterMode(display=False) as fc, OpCount() as ops:
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ev = eval_cost(model, cfg, mc, vocab)
    return {"plan": plan, "config": p.config, "overrides": dict(p.overrides), "runs": len(p.methods) * len(p.seeds),
            "methods": list(p.methods), "seeds": list(p.seeds), "params": model.num_parameters(),
            "image_size": cfg.image_size, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "steps_per_run": cfg.epochs * (SPLIT["train"] // cfg.batch_size), "step_flops": fc.get_total_flops(),
            "step_ops": ops.n, "cpu_step_s": statistics.median(times), **ev}


def eval_cost(model: ReportGenerator, cfg: T.TrainConfig, mc: ModelConfig, vocab: int, n: int = 32) -> dict:
    """FLOPs and operators of decoding (forced to the full length) and NLL for ``n`` studies, scaled."""
    imgs, tok, _, _ = batch(cfg, mc, vocab, n)
    model.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as dec, OpCount() as dec_ops:
            model.generate(imgs, min_len=mc.max_len)
        with FlopCounterMode(display=False) as nll:
            model(imgs, tok)
    model.train()
    per_study = (dec.get_total_flops() + nll.get_total_flops()) / n
    batches = lambda k: -(-k // cfg.eval_batch_size)  # noqa: E731
    return {"val_flops": per_study * SPLIT["val"], "test_flops": dec.get_total_flops() / n * SPLIT["test"],
            "val_ops": dec_ops.n * batches(SPLIT["val"]), "test_ops": dec_ops.n * batches(SPLIT["test"])}


def estimate(m: dict, peak_tflops: float, cores: int) -> dict:
    flops = m["runs"] * (m["steps_per_run"] * m["step_flops"] + m["epochs"] * m["val_flops"] + m["test_flops"])
    ops = m["runs"] * (m["steps_per_run"] * m["step_ops"] + m["epochs"] * m["val_ops"] + m["test_ops"])
    jobs = max(1, min(cores, m["runs"]))
    launch = ops * LAUNCH_S / jobs
    gpu = {u: flops / (peak_tflops * 1e12 * u) for u in UTILISATION}
    return {"flops": flops, "ops": ops, "jobs": jobs, "launch_s": launch, "gpu_s": gpu,
            "likely_s": max(gpu[UTILISATION[0]], launch), "pessimistic_s": gpu[UTILISATION[1]] + launch}


def report(ms: list[dict]) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out = ["# How long chapter 6's GPU plans take: an estimate",
           "",
           "Written by `tools/estimate_gpu_time.py` (rerun it to recompute). Counted on "
           f"{platform.machine()} with {os.cpu_count()} cores (load average {load:.1f}), torch {torch.__version__}. "
           "FLOPs by `torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and attention; "
           "2 FLOPs per multiply-add); kernel launches as aten operators that are not views. "
           f"Assumptions: {', '.join(f'{u:.0%}' for u in UTILISATION)} of the published dense peak "
           f"(likely and pessimistic: a 7 M-parameter model with 32..256 channels at batch 32 keeps a GPU's "
           f"matrix units mostly idle), {LAUNCH_S * 1e6:.0f} us of CPU time per launched operator, one "
           "training process per CPU core (`jobs='auto'`). Data on R2Gen's split: "
           f"{SPLIT['train']} / {SPLIT['val']} / {SPLIT['test']} studies. Downloading (1.3 GB) and preparing the "
           "images (a few minutes) come on top. Not measured on a GPU.", ""]
    for m in ms:
        out += plan_section(m)
    return "\n".join(out) + "\n"


def plan_section(m: dict) -> list[str]:
    cpu_gflops = m["step_flops"] / m["cpu_step_s"] / 1e9
    out = [f"## Plan `{m['plan']}`: `{m['config']}` with {json.dumps(m['overrides'])}", "",
           f"{', '.join(m['methods'])} x seeds {m['seeds']} = {m['runs']} runs; {m['params'] / 1e6:.1f} M parameters, "
           f"{m['image_size']} px, batch {m['batch_size']}, {m['epochs']} epochs x {SPLIT['train'] // m['batch_size']} "
           f"= {m['steps_per_run']} steps per run.", "",
           "| quantity | value |", "|---|---|",
           f"| one training step (forward, one backward per task, aggregation) | {m['step_flops'] / 1e9:.1f} GFLOP, "
           f"{m['step_ops']} operators |",
           f"| one validation pass ({SPLIT['val']} studies, decoding forced to full length + NLL) | "
           f"{m['val_flops'] / 1e12:.2f} TFLOP, {m['val_ops']} operators |",
           f"| test decoding ({SPLIT['test']} studies) | "
           f"{m['test_flops'] / 1e12:.2f} TFLOP, {m['test_ops']} operators |",
           f"| one run: {m['steps_per_run']} x step + {m['epochs']} x validation + test | "
           f"{(m['steps_per_run'] * m['step_flops'] + m['epochs'] * m['val_flops'] + m['test_flops']) / 1e15:.3f} "
           f"PFLOP |",
           f"| CPU cross-check: one step on this CPU | {m['cpu_step_s']:.2f} s = {cpu_gflops:.0f} GFLOP/s, so one run "
           f"would take {m['cpu_step_s'] * m['steps_per_run'] / 3600:.1f} h here |", ""]
    for name, peak, cores in GPUS[m["plan"]]:
        e = estimate(m, peak, cores)
        lo, hi = UTILISATION
        out += [f"**{name}**, {e['jobs']} processes at a time: {e['flops'] / 1e15:.2f} PFLOP / ({peak:g} TFLOP/s x "
                f"{lo:.0%}) = {e['gpu_s'][lo] / 60:.1f} min (at {hi:.0%}: {e['gpu_s'][hi] / 60:.1f} min); "
                f"launches {e['ops'] / 1e6:.1f} M x {LAUNCH_S * 1e6:.0f} us / {e['jobs']} = "
                f"{e['launch_s'] / 60:.1f} min. "
                f"Estimate: about **{e['likely_s'] / 60:.0f} min** (the larger of the two), at most "
                f"{e['pessimistic_s'] / 60:.0f} min ({hi:.0%} utilisation plus every launch).", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu_estimate.md"),
                    help="the Markdown file, or - for stdout")
    ap.add_argument("--plans", nargs="+", default=[k for k, p in PLANS.items() if p.gpu])
    ap.add_argument("--steps", type=int, default=2, help="timed CPU steps per plan (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    vocab = vocab_size()
    ms = [measure(p, a.steps, vocab) for p in a.plans]
    text = report(ms)
    if a.out == "-":
        print(text)
    else:
        Path(a.out).write_text(text, encoding="utf-8")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
