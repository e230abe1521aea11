"""The optimizer every method shares: AdamW wrapped in :class:`camegrad_mini.optim.CAMEGrad`
(:func:`build_optimizer`) and the learning-rate schedule, linear warm-up then cosine decay
(:func:`lr_factor`).

Chapter 6, section 6.5 (*Training: one loop for every method*): only the aggregator differs
between the methods.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from camegrad_mini.rrg.config import METHODS, TrainConfig
from camegrad_mini.rrg.model import ReportGenerator

__all__ = ["lr_factor", "build_optimizer"]

def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``.
    Chapter 6, section 6.5 (*Training: one loop for every method*)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: ReportGenerator, cfg: TrainConfig) -> Any:
    """AdamW (weight decay on matrices and convolutions only, as in nanoGPT) wrapped in CAMEGrad.
    Chapter 6, section 6.5 (*Training: one loop for every method*)."""
    from camegrad_mini.optim import CAMEGrad

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    base = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    return CAMEGrad(base, rho=cfg.rho, kappa=cfg.kappa, nu=cfg.nu, aggregator=METHODS[cfg.method],
                    shared=cfg.shared, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed)
