"""Helpers of tests/test_optim_ddp.py: the model, the data and one training run, used both by
the spawned DDP workers and by the one-process reference (a module of its own so that the
spawned processes can import the worker function by name)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from torch import nn

from camegrad_mini.optim import CAMEGrad

AGGREGATORS = ("ls", "pcgrad", "mgda", "cagrad", "came")
SCENARIOS = ("plain", "accum", "scaler")
WEIGHTS = [1.0, 4.0]
STEPS = 4
BATCH = 16  # the whole batch; each of the two ranks holds half of it


class Net(nn.Module):
    """A shared trunk and two heads (regression, 3-class classification), float64."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh())
        self.head0 = nn.Linear(8, 1)
        self.head1 = nn.Linear(8, 3)
        self.double()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.head0(z).squeeze(-1), self.head1(z)


def data(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 5, generator=g, dtype=torch.float64)
    return x, torch.randn(BATCH, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)


def losses(module: nn.Module, x, y0, y1) -> list[torch.Tensor]:
    out0, out1 = module(x)
    return [((out0 - y0) ** 2).mean(), nn.functional.cross_entropy(out1, y1)]


def run(name: str, scenario: str, rank: int | None = None, world: int = 1, distributed=None,
        **ddp_kwargs) -> dict:
    """Train ``STEPS`` steps; ``rank`` None: one process on the whole batch, else DDP on the
    rank's half. ``scaler``: a GradScaler, and at step 1 task 1's loss is infinite (on rank 1
    only under DDP: the whole batch's mean loss is infinite then too), so the step is skipped."""
    model = Net()
    module = model if rank is None else nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    opt = CAMEGrad(torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9), aggregator=name,
                   distributed=distributed)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scenario == "scaler" else None
    micro = 2 if scenario == "accum" and rank is not None else 1
    out = {"losses": [], "inner": [], "skipped": [], "allreduce": []}
    for step in range(STEPS):
        batch = data(step)
        if rank is not None:
            half = BATCH // world
            batch = tuple(t[rank * half : (rank + 1) * half] for t in batch)
        calls = _count_all_reduce()
        for part in zip(*(t.chunk(micro) for t in batch), strict=True):
            ls = losses(module, *part)
            if scenario == "scaler" and step == 1 and rank in (None, 1):
                ls[1] = ls[1] + float("inf")
            opt.backward([loss / micro for loss in ls], task_weights=WEIGHTS, scaler=scaler)
        info = opt.step(scaler=scaler)
        out["allreduce"].append(calls.pop())
        if scaler is not None:
            scaler.update()
        out["losses"].append(info.losses)
        out["inner"].append(info.inner_products)
        out["skipped"].append(info.skipped)
    out["params"] = [p.detach().clone() for p in model.parameters()]
    out["scale"] = None if scaler is None else float(scaler.get_scale())
    out["flat_buffer"] = opt._layout is not None
    return out


class _count_all_reduce:  # noqa: N801 (used like a function)
    """Counts ``torch.distributed.all_reduce`` calls until :meth:`pop`."""

    def __init__(self) -> None:
        self.n = 0
        self.orig = torch.distributed.all_reduce

        def counted(*args, **kwargs):
            self.n += 1
            return self.orig(*args, **kwargs)

        torch.distributed.all_reduce = counted

    def pop(self) -> int:
        torch.distributed.all_reduce = self.orig
        return self.n


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One DDP process: every aggregator and scenario, results saved to ``out_dir``."""
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        results = {(n, s): run(n, s, rank, world) for n in AGGREGATORS for s in SCENARIOS}
        results[("came", "off")] = run("came", "plain", rank, world, distributed=False)
        results[("came", "find_unused")] = run("came", "plain", rank, world, find_unused_parameters=True)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()
