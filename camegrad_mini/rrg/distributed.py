"""Several processes under torchrun: one global batch, sharded; rank 0 writes every file.

:func:`distributed_from_env` reads torchrun's environment into a :class:`DistContext`;
:func:`on_main` runs a step on rank 0 and shares its result (or failure) with the others;
:func:`shard_bounds` and :func:`shard_loss_factors` split a global batch so that the average of
the ranks' gradients is the one-process gradient. Chapter 6, section 6.6 (*Going further:
several GPUs, several machines, MIMIC-CXR*).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camegrad_mini.rrg.config import TrainConfig

__all__ = ["DistContext", "PeerFailed", "distributed_from_env", "on_main", "shard_bounds", "shard_loss_factors",
           "global_loss_values", "any_rank", "sync_task_gradients", "broadcast_parameters"]

# collectives wait this long for a peer (rank 0 alone decodes the validation and test splits)
DIST_TIMEOUT_ENV = "CAMEGRAD_RRG_DIST_TIMEOUT_S"
DIST_TIMEOUT_S = 3 * 3600.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among torchrun's: rank, world size, local rank (one GPU each)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this trainer started the process group (and ends it)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class PeerFailed(RuntimeError):
    """Rank 0 failed (and said why on its own stderr); the other ranks stop with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def distributed_from_env() -> DistContext:
    """torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one process where they are absent.
    Chapter 6, section 6.6 (*Going further: several GPUs, several machines, MIMIC-CXR*)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank, local = _env_int("RANK", -1), _env_int("LOCAL_RANK", -1)
    if not (0 <= rank < world and local >= 0):
        raise ValueError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}, "
                         f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}: start several processes with torchrun")
    return DistContext(rank, world, local)


def _check_world(cfg: TrainConfig, ctx: DistContext) -> None:
    if ctx.active and cfg.batch_size % ctx.world:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {ctx.world} processes: the global batch "
                         f"is split evenly (batch_size / world size per process); choose a multiple of {ctx.world}")


def _init_distributed(ctx: DistContext, device: torch.device) -> DistContext:
    """Join torchrun's process group: NCCL between GPUs, gloo between CPU processes."""
    import torch.distributed as dist

    if not ctx.active:
        return ctx
    if dist.is_initialized():
        if dist.get_world_size() != ctx.world:
            raise ValueError(f"the process group has {dist.get_world_size()} processes but WORLD_SIZE={ctx.world}")
        return ctx
    raw = os.environ.get(DIST_TIMEOUT_ENV, str(DIST_TIMEOUT_S))
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise ValueError(f"{DIST_TIMEOUT_ENV}={raw!r} must be a number of seconds > 0")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=_dt.timedelta(seconds=timeout))
    return dataclasses.replace(ctx, owns_group=True)


def _exit_code(e: BaseException) -> int:
    """What :func:`camegrad_mini.rrg.train.main` returns for this exception: 2 for bad input, 1 for the
    machine (or a bug)."""
    return 2 if isinstance(e, (ValueError, FileNotFoundError)) else 1


def on_main(ctx: DistContext, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on rank 0; its result (or its failure) reaches every rank. Also a barrier.

    Rank 0 re-raises its own exception; the others raise :class:`PeerFailed` with the exit code
    rank 0's ``main`` will return, so no rank waits forever for one that failed."""
    if not ctx.active:
        return fn(*args)
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if ctx.is_main:
        try:
            box[0] = ("ok", fn(*args))
        except BaseException as e:  # shared with the peers first, then re-raised
            error, box[0] = e, ("error", (f"{type(e).__name__}: {e}", _exit_code(e)))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise PeerFailed(f"rank 0 failed ({value[0]})", value[1])
    return value


def shard_bounds(n: int, ctx: DistContext) -> tuple[int, int]:
    """This rank's slice ``[lo, hi)`` of a global batch of ``n`` studies (contiguous, as even as possible)."""
    if not ctx.active:
        return 0, n
    if n < ctx.world:
        raise ValueError(f"a batch of {n} studies cannot be split over {ctx.world} processes; "
                         "use more training studies")
    return ctx.rank * n // ctx.world, (ctx.rank + 1) * n // ctx.world


def shard_loss_factors(tokens: np.ndarray, lo: int, hi: int, ctx: DistContext) -> list[float]:
    """Factors that make the rank-average of the per-rank loss gradients the global batch's gradient.

    The report NLL is a mean over the batch's target tokens, so a shard's mean is weighted by
    ``world * tokens_in_shard / tokens_in_batch``; the per-study means (classification, alignment)
    by ``world * shard_size / batch_size``. ``tokens``: the target-token count of every study of
    the *global* batch (every rank holds the whole training split). The alignment loss contrasts
    the studies of one shard only, so it is not the one-process loss."""
    n, world = len(tokens), ctx.world
    tok_share = float(np.sum(tokens[lo:hi])) / max(float(np.sum(tokens)), 1.0)
    study_share = (hi - lo) / n
    return [world * tok_share, world * study_share, world * study_share]


def global_loss_values(task_losses: list[torch.Tensor], factors: list[float] | None,
                       ctx: DistContext) -> list[float]:
    """The global batch's loss values (what one process would log), from every rank's shard
    (``factors``: :func:`shard_loss_factors`, needed under torchrun only)."""
    if not ctx.active:
        return [float(loss.detach()) for loss in task_losses]
    assert factors is not None, "several processes need the shard loss factors"
    import torch.distributed as dist

    # factors has an entry per possible task (three); task_losses may be two
    v = torch.stack([loss.detach().float() * (f / ctx.world) for loss, f in zip(task_losses, factors, strict=False)])
    dist.all_reduce(v)
    return [float(x) for x in v]


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on some rank (the time limit stops all together)."""
    if not ctx.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _wrapper_syncs_gradients(opt: Any) -> bool:
    """Whether the CAMEGrad in use averages its per-task gradients over the processes itself (its
    ``distributed`` argument; on by default where a process group is initialised)."""
    import inspect

    try:
        params = inspect.signature(type(opt).__init__).parameters
    except (TypeError, ValueError):
        return False
    return "distributed" in params and getattr(opt, "_distributed", None) is not False


def sync_task_gradients(model: torch.nn.Module, opt: Any, ctx: DistContext) -> list[Any]:
    """Average every parameter's gradient over the ranks as autograd produces it, per task.

    CAMEGrad computes one gradient per task with ``torch.autograd.grad`` (never ``.grad``), which
    DistributedDataParallel's hooks do not see, and its aggregation is non-linear, so the per-task
    gradients must be averaged *before* it. The wrapper does that itself (one flat all-reduce per
    step); only for a CAMEGrad without that ability is a tensor hook put on each parameter here
    (one all-reduce per parameter and task: slower, the same result)."""
    if not ctx.active or _wrapper_syncs_gradients(opt):
        return []
    import torch.distributed as dist

    def average(g: torch.Tensor) -> torch.Tensor:
        out = g.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out.div_(ctx.world)

    return [p.register_hook(average) for p in model.parameters() if p.requires_grad]


def broadcast_parameters(model: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's parameters and buffers on every rank (they start equal from the seed; this makes sure)."""
    if not ctx.active:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def _rescaled(task_losses: list[torch.Tensor], factors: list[float] | None) -> list[torch.Tensor]:
    """The losses the optimizer differentiates: this shard's, weighted by :func:`shard_loss_factors`."""
    if factors is None:
        return task_losses
    return [loss * f for loss, f in zip(task_losses, factors, strict=False)]
