"""The wrapper under DDP: the number of processes and the collectives that average the
per-task gradients (sum / world size, as DDP does) before the Gram matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._flat import Buffers, FlatLayout
from ._types import BoolArray


def world_size(distributed: bool | None, process_group: Any) -> int:
    """Number of processes to average over (1: no collective); see ``CAMEGrad(distributed=)``."""
    if distributed is False:
        return 1
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise RuntimeError("CAMEGrad(distributed=True) needs an initialised torch.distributed process group")
        return 1
    return dist.get_world_size(process_group)


@dataclass
class Reduced:
    """What every rank knows after :func:`all_reduce`: the averaged losses, the union of the
    reach patterns and whether any rank had a gradient without a slot."""

    loss_sum: torch.Tensor
    reach: BoolArray
    overflow: bool


def all_reduce(
    params: Sequence[torch.Tensor], buffers: Buffers, lay: FlatLayout | None, local: Reduced,
    world: int, process_group: Any,
) -> Reduced:
    """One all_reduce of the flat buffer, whose meta part carries the losses, the reach bitmap
    and the overflow count, so every later decision is taken on the same data on every rank.
    Gradients without a slot (first step, changed pattern) take one more collective."""
    t_count, p_count = local.reach.shape
    if lay is not None:
        meta, target = lay.meta, lay.storage
    else:
        meta = torch.empty(t_count * (p_count + 1) + 1, dtype=torch.float64, device=local.loss_sum.device)
        target = meta
    meta[:t_count] = local.loss_sum.to(meta)
    meta[t_count:-1] = torch.from_numpy(local.reach.reshape(-1)).to(meta)
    meta[-1] = float(local.overflow)
    torch.distributed.all_reduce(target, group=process_group)
    host = meta.double().cpu().numpy()
    out = Reduced(torch.from_numpy(host[:t_count] / world), host[t_count:-1].reshape(t_count, p_count) > 0.5,
                  bool(host[-1] > 0.5))
    missing = []
    for k, p in enumerate(params):
        for i in np.flatnonzero(out.reach[:, k]).tolist():
            held = lay.slot(p, i) if lay is not None else None
            gs = buffers.setdefault(p, [None] * t_count)
            if held is not None:
                gs[i] = held  # reduced in place (zeros from ranks that did not reach it)
            else:
                missing.append((p, i))
    if missing:
        exchange(buffers, missing, process_group)
    return out


def exchange(buffers: Buffers, missing: list[tuple[torch.Tensor, int]], process_group: Any) -> None:
    """All-reduce the gradients that have no slot, one collective per dtype, in the order
    every rank derives from the reduced reach bitmap (zeros where a rank has none)."""
    groups: dict[torch.dtype, list[tuple[torch.Tensor, int]]] = {}
    for p, i in missing:
        dt = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        groups.setdefault(dt, []).append((p, i))
    for dt in sorted(groups, key=str):
        items = groups[dt]
        local = [buffers[p][i] for p, i in items]
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).to(dt)
                          for (p, _), g in zip(items, local, strict=True)])
        del local
        torch.distributed.all_reduce(flat, group=process_group)
        off = 0
        for p, i in items:
            buffers[p][i] = flat[off : off + p.numel()].view_as(p).to(p.dtype)
            off += p.numel()
