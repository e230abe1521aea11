"""What the training loop draws per batch: image augmentation (:func:`augment`) and, for
diagnosis-conditioned decoding, which studies' prompts carry the labels (``_prompt_labels``).

Both draw from torch's generator, which the checkpoint saves (chapter 6, section 6.7,
*Interruptions and exact resume*), and both draw for the whole global batch under torchrun, so
every rank's generator stays rank 0's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from camegrad_mini.rrg.config import TrainConfig

__all__ = ["augment"]

def augment(images: torch.Tensor, cfg: TrainConfig, shard: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Random translation/scale and brightness/contrast jitter, on the device, per study.

    Both views of a study get the same geometric transform. No horizontal flip: it swaps left
    and right in a chest radiograph (R2Gen flips anyway; we choose not to). Returns float images
    in [0, 1]. Uses the global torch RNG of the device, which the checkpoint saves.
    ``shard=(lo, hi, n)``: ``images`` are studies ``lo:hi`` of a global batch of ``n``; the draws
    are made for all ``n`` (as one process would) and this shard's rows are used.

    Chapter 6, section 6.5 (*Training: one loop for every method*).
    """
    x = images.float() / 255.0
    if not cfg.augment:
        return x
    B, V, S, _ = x.shape
    dev = x.device
    lo, hi, n = shard if shard is not None else (0, B, B)
    u = torch.rand(n, 5, device=dev)[lo:hi] * 2 - 1  # uniform in [-1, 1]
    scale = 1 + cfg.aug_scale * u[:, 0]
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2], theta[:, 1, 2] = cfg.aug_translate * u[:, 1], cfg.aug_translate * u[:, 2]
    grid = F.affine_grid(theta, [B, V, S, S], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1 + cfg.aug_intensity * u[:, 3]).view(B, 1, 1, 1)
    bright = (cfg.aug_intensity * u[:, 4]).view(B, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp(0, 1)


def _prompt_labels(labels: torch.Tensor, teacher: float,
                   shard: tuple[int, int, int] | None = None) -> torch.Tensor | None:
    """Diagnosis prompts for one batch: the labels for a random ``teacher`` share of the studies,
    NaN (use the classifier's prediction) for the rest; None when no study uses the labels. The
    draw uses torch's generator, which the checkpoint saves, so resuming stays exact; ``shard``
    as in :func:`augment`."""
    if teacher <= 0.0:
        return None
    if teacher >= 1.0:
        return labels
    lo, hi, n = shard if shard is not None else (0, labels.shape[0], labels.shape[0])
    use = torch.rand(n, 1, device=labels.device)[lo:hi] < teacher
    return torch.where(use, labels, torch.full_like(labels, float("nan")))
