"""Benchmark one optimizer step of CAMEGrad (and every baseline) against plain linear scalarization.

Usage (what ``make bench`` runs)::

    .venv/bin/python benchmarks/bench_optim.py                 # CPU, fp32, 1 thread
    .venv/bin/python benchmarks/bench_optim.py --device cuda --dtype bf16
    .venv/bin/python benchmarks/bench_optim.py --device cuda --dtype both   # fp32 and bf16 in one run

Two models, batch 256, SGD base optimizer (``--base adamw`` for AdamW), task weights (1, 4):

(a) ``mlp``: a 2-task MLP 128-1024-768-128 (1,017,728 parameters) through which both losses pass;
(b) ``two-head``: a shared encoder (328,704 parameters), a large decoder only task 0 reaches
    (1,410,944) and a small classifier only task 1 reaches (7,182), like the report generator
    and its clinical classifier.

Variants per model, one timed step = forward + gradient work + ``optimizer.step()``:
``LS``: ``(w0 L0 + w1 L1).backward()`` (one backward pass; the reference), ``floor``: two
``torch.autograd.grad`` calls and the weighted sum written into ``.grad`` (the cost of per-task
gradients alone), then ``CAMEGrad`` with each aggregator (split form ``backward()`` + ``step()``,
so the time after the backward passes is measured separately).

Variants run interleaved round-robin (rotating order) after warm-up steps, and each ratio is the
median over rounds of the per-round ratio to LS, which cancels slow drifts of a shared machine.
"Aggregation" is the median, over rounds, of the time of ``CAMEGrad.step()`` minus the time of
the base ``optimizer.step()`` inside that same call (so: Gram matrix, solve, writing ``.grad``
and bookkeeping), as a share of the median whole step. Peak memory: on CPU a fresh subprocess per
model runs a few steps of each variant and reports the growth of the process high-water mark
(VmHWM, reset before each variant) over the resident size before the steps; on CUDA
``torch.cuda.max_memory_allocated`` over the allocation before the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from camegrad_mini.optim import CAMEGrad

WEIGHTS = (1.0, 4.0)
WRAPPED = ("ls", "pcgrad", "mgda", "cagrad", "came")
VARIANTS = ("LS", "floor") + tuple(f"CAMEGrad[{m}]" for m in WRAPPED)


# ---------------------------------------------------------------------------------- models
class SharedMLP(nn.Module):
    """(a) Both losses pass through every parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(128, 1024), nn.ReLU(), nn.Linear(1024, 768), nn.ReLU(), nn.Linear(768, 128)
        )
        self.register_buffer("proj", torch.randn(128, 16) / 128**0.5)  # task 1 reads all outputs

    def losses(self, x: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x)
        return [((out - y0) ** 2).mean(), ((out @ self.proj - y1) ** 2).mean()]


class TwoHead(nn.Module):
    """(b) Task 1 reaches only the encoder (and its small head)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 768), nn.ReLU(), nn.Linear(768, 128)
        )
        self.classifier = nn.Linear(512, 14)

    def losses(self, x: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> list[torch.Tensor]:
        z = self.encoder(x)
        l0 = ((self.decoder(z) - y0) ** 2).mean()
        l1 = nn.functional.binary_cross_entropy_with_logits(self.classifier(z), y1)
        return [l0, l1]


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": SharedMLP, "two-head": TwoHead}


def make_data(model_name: str, device: torch.device, dtype: torch.dtype, batch: int = 256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 128, generator=g)
    y0 = torch.randn(batch, 128, generator=g)
    if model_name == "mlp":
        y1 = torch.randn(batch, 16, generator=g)
    else:
        y1 = (torch.rand(batch, 14, generator=g) > 0.8).float()
    return tuple(t.to(device=device, dtype=dtype) for t in (x, y0, y1))


# ---------------------------------------------------------------------------------- steps
class Runner:
    """One model copy + optimizer per variant; ``run()`` does one timed step."""

    def __init__(self, variant: str, model_name: str, device: torch.device, dtype: torch.dtype,
                 base: str = "sgd") -> None:
        torch.manual_seed(0)
        self.variant = variant
        self.model = MODELS[model_name]().to(device=device, dtype=dtype)
        self.data = make_data(model_name, device, dtype)
        if base == "adamw":
            self.sgd = torch.optim.AdamW(self.model.parameters(), lr=1e-5)
        else:
            self.sgd = torch.optim.SGD(self.model.parameters(), lr=1e-5)
        self.params = [p for p in self.model.parameters()]
        self.opt = None
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.base_seconds = 0.0
        if variant.startswith("CAMEGrad["):
            self.opt = CAMEGrad(self.sgd, aggregator=variant[len("CAMEGrad[") : -1])
            # Time the base optimizer's step inside CAMEGrad.step(), so that the aggregation
            # (Gram matrix, solve, writing .grad) is measured within the same call.
            inner_step = self.sgd.step

            def timed_step(*args, **kwargs):
                self.sync()
                t = time.perf_counter()
                out = inner_step(*args, **kwargs)
                self.sync()
                self.base_seconds = time.perf_counter() - t
                return out

            self.sgd.step = timed_step

    def run(self) -> tuple[float, float]:
        """Return (total seconds, seconds of the aggregation: the part after the backward passes
        minus the base optimizer's step; 0 for LS and floor)."""
        self.sync()
        t0 = time.perf_counter()
        losses = self.model.losses(*self.data)
        if self.variant == "LS":
            self.sgd.zero_grad(set_to_none=True)
            (WEIGHTS[0] * losses[0] + WEIGHTS[1] * losses[1]).backward()
            self.sync()
            t1 = time.perf_counter()
            self.sgd.step()
        elif self.variant == "floor":
            self.sgd.zero_grad(set_to_none=True)
            grads = [
                torch.autograd.grad(loss, self.params, retain_graph=i < len(losses) - 1, allow_unused=True)
                for i, loss in enumerate(losses)
            ]
            for k, p in enumerate(self.params):
                acc = None
                for i, w in enumerate(WEIGHTS):
                    g = grads[i][k]
                    if g is not None:
                        acc = g * w if acc is None else acc.add_(g, alpha=w)
                p.grad = acc
            self.sync()
            t1 = time.perf_counter()
            self.sgd.step()
        else:
            self.opt.backward(losses, task_weights=WEIGHTS)
            self.sync()
            t1 = time.perf_counter()
            self.opt.step()
        self.sync()
        t2 = time.perf_counter()
        if self.opt is None:
            return t2 - t0, 0.0
        return t2 - t0, (t2 - t1) - self.base_seconds


# ---------------------------------------------------------------------------------- T sweep
try:  # optional: measured in the same interleaved run when installed, never required
    import torchjd
    from torchjd.aggregation import UPGrad

    UPGrad()  # its default projector needs the optional qpsolvers and quadprog
except ImportError:  # pragma: no cover - depends on the environment
    torchjd = None

SWEEP_VARIANTS = ("floor", "CAMEGrad[came]", "CAMEGrad[ls]") + (("torchjd[UPGrad]",) if torchjd else ())


def _torchjd_version() -> str:
    if torchjd is None:
        return "not installed (pip install torchjd qpsolvers quadprog to compare)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchjd")
    except PackageNotFoundError:
        return "installed"


class ManyTaskMLP(nn.Module):
    """(c) The MLP of (a) with T tasks, each a regression on its own projection of the output."""

    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.net = SharedMLP().net
        self.register_buffer("proj", torch.randn(tasks, 128, 16) / 128**0.5)

    def losses(self, x: torch.Tensor, ys: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x)
        return [((out @ self.proj[i] - ys[i]) ** 2).mean() for i in range(self.proj.shape[0])]


class SweepRunner:
    """One step of the T-task MLP: ``floor`` (T ``autograd.grad`` calls, the weighted sum written
    into ``.grad``, SGD step), CAMEGrad with an aggregator, or torchjd's ``backward`` +
    ``jac_to_grad`` with UPGrad (its defaults: the T backward passes batched with vmap)."""

    def __init__(self, variant: str, tasks: int, device: torch.device, dtype: torch.dtype) -> None:
        torch.manual_seed(0)
        self.variant = variant
        self.model = ManyTaskMLP(tasks).to(device=device, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(256, 128, generator=g).to(device=device, dtype=dtype)
        self.ys = torch.randn(tasks, 256, 16, generator=g).to(device=device, dtype=dtype)
        self.weights = [1.0 + (i % 4) for i in range(tasks)]
        self.params = list(self.model.parameters())
        self.sgd = torch.optim.SGD(self.params, lr=1e-5)
        self.opt = CAMEGrad(self.sgd, aggregator=variant[9:-1]) if variant.startswith("CAMEGrad[") else None
        self.upgrad = UPGrad() if variant.startswith("torchjd") else None
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(self) -> float:
        self.sync()
        t0 = time.perf_counter()
        losses = self.model.losses(self.x, self.ys)
        if self.opt is not None:
            self.opt.step(losses, task_weights=self.weights)
        elif self.upgrad is not None:
            self.sgd.zero_grad(set_to_none=True)
            torchjd.autojac.backward([w * loss for w, loss in zip(self.weights, losses, strict=True)],
                                     inputs=self.params)
            torchjd.autojac.jac_to_grad(self.params, self.upgrad)
            self.sgd.step()
        else:
            self.sgd.zero_grad(set_to_none=True)
            t = len(losses)
            grads = [torch.autograd.grad(loss, self.params, retain_graph=i < t - 1) for i, loss in enumerate(losses)]
            for k, p in enumerate(self.params):
                acc = grads[0][k] * self.weights[0]
                for i in range(1, t):
                    acc.add_(grads[i][k], alpha=self.weights[i])
                p.grad = acc
            self.sgd.step()
        self.sync()
        return time.perf_counter() - t0


def _print_high_water_marks(variants, make, steps: int) -> None:
    """Print, as JSON, each variant's high-water-mark growth (MiB) over ``steps`` steps in this process.

    One warm-up step of every variant first (one-time lazy initialisation must not count for the
    first variant); the high-water mark is reset (``/proc/self/clear_refs``) before each variant.
    """
    import gc

    torch.set_num_threads(1)
    for variant in variants:
        make(variant).run()
    gc.collect()
    out = {}
    for variant in variants:
        runner = make(variant)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _vm("VmRSS")
        for _ in range(steps):
            runner.run()
        out[variant] = _vm("VmHWM") - before
        del runner
        gc.collect()
    print(json.dumps(out))


def sweep_memory_child(tasks: int, steps: int = 3) -> None:
    """Fresh process: the high-water-mark growth of a few steps of each sweep variant (as
    :func:`memory_child`)."""
    _print_high_water_marks(SWEEP_VARIANTS, lambda v: SweepRunner(v, tasks, torch.device("cpu"), torch.float32),
                            steps)


def bench_sweep(tasks_list: list[int], device: torch.device, dtype: torch.dtype, rounds: int,
                warmup: int, memory: bool) -> list[dict]:
    """Interleaved rounds per T; every ratio is the median of per-round ratios to the floor."""
    rows = []
    for tasks in tasks_list:
        runners = {v: SweepRunner(v, tasks, device, dtype) for v in SWEEP_VARIANTS}
        for _ in range(warmup):
            for r in runners.values():
                r.run()
        times: dict[str, list[float]] = {v: [] for v in SWEEP_VARIANTS}
        for k in range(rounds):
            rot = SWEEP_VARIANTS[k % len(SWEEP_VARIANTS):] + SWEEP_VARIANTS[: k % len(SWEEP_VARIANTS)]
            for v in rot:
                times[v].append(runners[v].run())
        del runners
        mems = {}
        if memory and device.type == "cpu":
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
            proc = subprocess.run([sys.executable, __file__, "--sweep-memory-child", str(tasks)],
                                  check=True, capture_output=True, text=True, env=env)
            mems = {v: b / 2**20 for v, b in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
        for v in SWEEP_VARIANTS:
            rows.append({
                "tasks": tasks, "variant": v, "median_ms": 1e3 * statistics.median(times[v]),
                "ratio": statistics.median(a / b for a, b in zip(times[v], times["floor"], strict=True)),
                "peak_mib": mems.get(v), "mem_ratio": mems[v] / mems["floor"] if mems else None,
            })
    return rows


def sweep_table(rows: list[dict]) -> str:
    lines = ["| T | variant | median ms | ratio to floor | peak memory MiB | memory ratio to floor |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tasks']} | {r['variant']} | {r['median_ms']:.1f} | {r['ratio']:.3f} | "
                     f"{fmt(r['peak_mib'], '.1f')} | {fmt(r['mem_ratio'], '.2f')} |")
    return "\n".join(lines)


def sweep_goals(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if r["variant"] == "CAMEGrad[came]":
            mem = "" if r["mem_ratio"] is None else f", memory {r['mem_ratio']:.2f}x the floor's"
            out.append(f"- T={r['tasks']}: CAME-Grad / floor {r['ratio']:.3f}x (goal <= 1.05x): "
                       f"{'met' if r['ratio'] <= 1.05 else 'NOT met'}{mem}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- memory
def _vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found")


def memory_child(model_name: str, base: str = "sgd", steps: int = 4) -> None:
    """Run in a fresh process: for each variant, the high-water-mark growth during a few steps.

    The parent starts this process with a fixed glibc mmap threshold, so that large tensors are
    returned to the system when freed, and the high-water mark is reset (``/proc/self/clear_refs``)
    before each variant: every variant starts from the same resident size.
    """
    _print_high_water_marks(VARIANTS, lambda v: Runner(v, model_name, torch.device("cpu"), torch.float32, base),
                            steps)


def measure_memory(model_name: str, device: torch.device, dtype: torch.dtype, base: str) -> dict[str, float]:
    """Peak memory growth (MiB) during a few steps of each variant."""
    if device.type == "cuda":
        out = {}
        for variant in VARIANTS:
            runner = Runner(variant, model_name, device, dtype, base)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(4):
                runner.run()
            out[variant] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del runner
            torch.cuda.empty_cache()
        return out
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", model_name, "--base", base],
        check=True, capture_output=True, text=True, env=env,
    )
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    return {v: b / 2**20 for v, b in peaks.items()}


# ---------------------------------------------------------------------------------- timing
def bench_model(model_name: str, device: torch.device, dtype: torch.dtype, rounds: int, warmup: int,
                memory: bool, base: str = "sgd") -> list[dict]:
    runners = {v: Runner(v, model_name, device, dtype, base) for v in VARIANTS}
    for _ in range(warmup):
        for r in runners.values():
            r.run()
    totals: dict[str, list[float]] = {v: [] for v in VARIANTS}
    posts: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    for k in range(rounds):
        rot = order[k % len(order):] + order[: k % len(order)]  # rotate so no variant is always first
        this = {}
        for v in rot:
            total, post = runners[v].run()
            this[v] = total
            totals[v].append(total)
            posts[v].append(post)
        for v in VARIANTS:
            ratios[v].append(this[v] / this["LS"])
    rows = []
    for v in VARIANTS:
        med = statistics.median(totals[v])
        agg = statistics.median(posts[v]) if v.startswith("CAMEGrad") else None
        rows.append({
            "model": model_name,
            "variant": v,
            "median_ms": 1e3 * med,
            "min_ms": 1e3 * min(totals[v]),
            "ratio": statistics.median(ratios[v]),
            "agg_ms": None if agg is None else 1e3 * agg,
            "agg_pct": None if agg is None else 100 * agg / med,
        })
    del runners
    if memory:
        mems = measure_memory(model_name, device, dtype, base)
        for row in rows:
            row["peak_mib"] = mems[row["variant"]]
            row["mem_ratio"] = mems[row["variant"]] / mems["LS"] if mems["LS"] > 0 else float("nan")
    return rows


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    if device.type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    return desc


def fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def table(rows: list[dict], memory: bool) -> str:
    head = "| model | variant | median ms | min ms | ratio to LS | aggregation ms | aggregation % of step |"
    sep = "|---|---|---:|---:|---:|---:|---:|"
    if memory:
        head += " peak memory MiB | memory ratio to LS |"
        sep += "---:|---:|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['model']} | {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['ratio']:.2f} | "
                f"{fmt(r['agg_ms'], '.2f')} | {fmt(r['agg_pct'], '.1f')} |")
        if memory:
            line += f" {r['peak_mib']:.1f} | {r['mem_ratio']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    def get(model, variant, key):
        return next(r[key] for r in rows if r["model"] == model and r["variant"] == variant)

    came_a = get("mlp", "CAMEGrad[came]", "ratio")
    came_b = get("two-head", "CAMEGrad[came]", "ratio")
    agg = max(get(m, "CAMEGrad[came]", "agg_pct") for m in ("mlp", "two-head"))
    floor_a = get("mlp", "floor", "ratio")
    return "\n".join([
        f"- (a) CAME-Grad / LS on the shared MLP: {came_a:.2f}x (goal <= 2.05x; floor {floor_a:.2f}x): "
        f"{'met' if came_a <= 2.05 else 'NOT met'}",
        f"- (b) CAME-Grad / LS on the two-head model: {came_b:.2f}x (goal clearly < 2x): "
        f"{'met' if came_b < 1.9 else 'NOT met'}",
        f"- aggregation share of the CAME-Grad step (worst model): {agg:.1f}% (goal < 5%): "
        f"{'met' if agg < 5 else 'NOT met'}",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "both"])
    ap.add_argument("--rounds", type=int, default=25, help="timed interleaved rounds per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--base", default="sgd", choices=["sgd", "adamw"],
                    help="base optimizer (sgd: as the reference numbers)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the reference setting)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--tasks", default="2,4,8,16,32", help="T values of the many-task sweep (mlp)")
    ap.add_argument("--sweep-rounds", type=int, default=11, help="interleaved rounds per T")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the T sweep")
    ap.add_argument("--only-sweep", action="store_true", help="run the T sweep only")
    ap.add_argument("--memory-child", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--sweep-memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.base)
        return
    if args.sweep_memory_child:
        sweep_memory_child(args.sweep_memory_child)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    dtypes = {"fp32": [torch.float32], "bf16": [torch.bfloat16], "both": [torch.float32, torch.bfloat16]}[args.dtype]
    all_rows = []
    for dtype in dtypes:
        if args.sweep:
            t0 = time.perf_counter()
            srows = bench_sweep([int(t) for t in args.tasks.split(",")], device, dtype, args.sweep_rounds,
                                args.warmup, args.memory)
            print(f"## Many-task sweep (mlp, T tasks): {device.type}, {str(dtype).replace('torch.', '')}\n")
            print(f"Machine: {machine_line(device)}. Batch 256, SGD base, weights 1 + (i mod 4), "
                  f"{args.sweep_rounds} interleaved rounds per T after {args.warmup} warm-up steps; "
                  f"torchjd: {_torchjd_version()}.\n")
            print(sweep_table(srows))
            print()
            print(sweep_goals(srows))
            print(f"\n(sweep wall time {time.perf_counter() - t0:.0f} s)\n")
            for r in srows:
                r["device"], r["dtype"], r["model"] = device.type, str(dtype), "mlp-sweep"
            all_rows += srows
        if args.only_sweep:
            continue
        t0 = time.perf_counter()
        rows = []
        for model_name in MODELS:
            rows += bench_model(model_name, device, dtype, args.rounds, args.warmup, args.memory, args.base)
        print(f"## CAMEGrad step benchmark: {device.type}, {str(dtype).replace('torch.', '')}\n")
        print(f"Machine: {machine_line(device)}. Batch 256, {args.base.upper()} base, task weights {WEIGHTS}, "
              f"{args.rounds} interleaved rounds after {args.warmup} warm-up steps; "
              f"ratio = median of per-round ratios.\n")
        print(table(rows, args.memory))
        print()
        print(goals(rows))
        print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s)\n")
        for r in rows:
            r["device"], r["dtype"], r["base"] = device.type, str(dtype), args.base
        all_rows += rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(all_rows, fh, indent=1)


if __name__ == "__main__":
    main()
