"""The training device and its arithmetic: which device a process uses (``_resolve_device``)
and mixed precision (:func:`amp_mode`): bfloat16 where the GPU has it, float16 with a GradScaler
where not (a T4), float32 on the CPU.

Chapter 6, section 6.6 (*The full run on a GPU, and on the real radiographs*) runs it on a GPU.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from camegrad_mini.rrg.config import TrainConfig
from camegrad_mini.rrg.distributed import DistContext

__all__ = ["amp_mode", "autocast_for", "grad_scaler_for"]

def _resolve_device(name: str, ctx: "DistContext | None" = None) -> torch.device:
    """The training device. Under torchrun each process takes ``cuda:LOCAL_RANK`` (or the CPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was requested but CUDA is not available on this machine")
    if ctx is not None and ctx.active and name.startswith("cuda"):
        if name != "cuda":
            raise ValueError(f"device={name!r}: under torchrun every process uses cuda:LOCAL_RANK; pass --device cuda "
                             "(and choose the GPUs with CUDA_VISIBLE_DEVICES)")
        if ctx.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={ctx.local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                             "start at most one process per GPU (--nproc_per_node)")
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


def _native_bf16() -> bool:
    """Whether the current GPU computes in bfloat16 natively (compute capability 8.0 or newer)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation argument
        return bool(torch.cuda.is_bf16_supported())


def amp_mode(cfg: TrainConfig, device: torch.device, native_bf16: bool | None = None) -> str:
    """``"off"``, ``"bf16"`` or ``"fp16"`` for this run (``cfg.amp``; the CPU always runs float32).

    ``"auto"`` takes bfloat16 where the GPU has it natively and float16 with a GradScaler
    otherwise; ``bf16=False`` (the older switch) turns ``"auto"`` off. ``native_bf16`` overrides
    the GPU query (tests). Chapter 6, section 6.6 (*The full run on a GPU, and on the real radiographs*)."""
    if device.type != "cuda" or cfg.amp == "off" or (cfg.amp == "auto" and not cfg.bf16):
        return "off"
    has_bf16 = _native_bf16() if native_bf16 is None else native_bf16
    if cfg.amp == "auto":
        return "bf16" if has_bf16 else "fp16"
    if cfg.amp == "bf16" and not has_bf16:
        raise ValueError("amp='bf16' was requested but this GPU has no native bfloat16 (compute capability below "
                         "8.0, e.g. a T4); use amp='fp16' or 'auto'")
    return cfg.amp


def autocast_for(mode: str) -> Any:
    """A factory of autocast contexts for an :func:`amp_mode` result."""
    if mode == "off":
        return nullcontext
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def grad_scaler_for(mode: str) -> Any:
    """float16 needs loss scaling (its range is narrow); bfloat16 and float32 do not."""
    return torch.amp.GradScaler("cuda") if mode == "fp16" else None
