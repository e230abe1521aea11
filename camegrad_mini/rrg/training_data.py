"""The dataset as training tensors: :func:`prepare_data` turns ``load_iu_xray``'s splits into
:class:`SplitTensors` (uint8 images on the training device, encoded reports, labels).

Chapter 6, section 6.1 (*The data: real reports, and which images*) describes the data; the
encoding follows R2Gen. Also the checks that refuse an empty split before any training
(``_check_splits``) and the positive-class weights of the classification loss
(:func:`class_pos_weight`, section 6.4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camegrad_mini.rrg.config import TrainConfig
from camegrad_mini.rrg.model import ModelConfig

__all__ = ["SplitTensors", "PreparedData", "load_dataset", "prepare_data", "class_pos_weight"]

@dataclass
class SplitTensors:
    """One split as tensors: images stay uint8 on the training device and are augmented there."""

    ids: list[str]
    reports: list[str]  # cleaned reference reports
    images: torch.Tensor  # uint8 [N, 2, S, S] on the device
    tokens: torch.Tensor  # int64 [N, L] decoder inputs (BOS first), padded
    targets: torch.Tensor  # int64 [N, L] next tokens, -100 at padding
    labels: torch.Tensor  # float32 [N, 14]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PreparedData:
    """The dataset as tensors, plus what the model and the report need to know about it."""

    splits: dict[str, SplitTensors]
    tokenizer: Any
    images_are_standins: bool
    description: str


def load_dataset(cfg: TrainConfig) -> Any:
    """``load_iu_xray`` with the config's data settings (errors name the command that fixes them).

    ``dataset="mimic_cxr"``: the same reader on MIMIC-CXR in R2Gen's layout under ``data_root``,
    checked first to be that (:func:`camegrad_mini.rrg.layouts.check_mimic_cxr_root`)."""
    from camegrad_mini.rrg import load_iu_xray

    root = cfg.data_root
    if cfg.dataset == "mimic_cxr":
        from camegrad_mini.rrg.layouts import check_mimic_cxr_root

        root = str(check_mimic_cxr_root(root))
    return load_iu_xray(root=root, images=cfg.images, image_size=cfg.image_size, seed=cfg.data_seed)


def _encode(tokenizer: Any, reports: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Reports -> (inputs, targets), each [N, max_len]: ``[bos] w1 .. wk`` and ``w1 .. wk [eos]``.

    Padding is marked by length, never by token id, because a tokenizer may use one id for
    pad, bos and eos (R2Gen does)."""
    n = len(reports)
    inputs = np.full((n, max_len), tokenizer.pad_id, dtype=np.int64)
    targets = np.full((n, max_len), -100, dtype=np.int64)
    for i, r in enumerate(reports):
        ids = list(tokenizer.encode(r))[: max_len + 1]  # [bos] + words + [eos], possibly truncated
        k = len(ids) - 1
        inputs[i, :k] = ids[:-1]
        targets[i, :k] = ids[1:]
    return inputs, targets


def prepare_data(cfg: TrainConfig, device: torch.device | str = "cpu", dataset: Any | None = None) -> PreparedData:
    """Subset the splits as the config says and move everything to ``device``.
    Chapter 6, section 6.1 (*The data: real reports, and which images*)."""
    ds = load_dataset(cfg) if dataset is None else dataset
    max_len = ModelConfig.preset(cfg.model, 8, image_size=cfg.image_size, **cfg.model_overrides).max_len
    limits = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    out: dict[str, SplitTensors] = {}
    for name, limit in limits.items():
        sp = ds.splits[name]
        n = len(sp.ids) if limit is None else min(limit, len(sp.ids))
        imgs = np.asarray(sp.images[:n])
        if imgs.shape[-1] != cfg.image_size:
            raise ValueError(f"dataset images are {imgs.shape[-1]} px but the config asks for "
                             f"image_size={cfg.image_size}")
        inputs, targets = _encode(ds.tokenizer, list(sp.reports[:n]), max_len)
        out[name] = SplitTensors(
            ids=list(sp.ids[:n]), reports=list(sp.reports[:n]),
            images=torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.uint8)).to(device),
            tokens=torch.from_numpy(inputs).to(device), targets=torch.from_numpy(targets).to(device),
            labels=torch.from_numpy(np.asarray(sp.labels[:n], dtype=np.float32)).to(device))
    standin = bool(getattr(ds, "images_are_standins", True))
    desc = ds.describe() if hasattr(ds, "describe") else ""
    if cfg.dataset == "mimic_cxr":  # the reader is IU X-Ray's and names it so
        desc = desc.replace("IU X-Ray from", "MIMIC-CXR from", 1)
    return PreparedData(splits=out, tokenizer=ds.tokenizer, images_are_standins=standin, description=desc)


def class_pos_weight(labels: torch.Tensor, cap: float | None) -> torch.Tensor | None:
    """BCE positive weights ``(1 - prevalence) / prevalence`` per observation, clipped to [1, cap]
    (an observation without positives gets ``cap``); None without a cap."""
    if cap is None:
        return None
    prev = labels.float().mean(0)
    return ((1 - prev) / prev.clamp_min(1e-6)).clamp(1.0, cap)


def _check_splits(cfg: TrainConfig, data: PreparedData) -> None:
    """Refuse empty splits before training: an empty validation split used to surface only after
    a full epoch, an empty test split only after the whole training."""
    empty = [name for name in ("train", "val", "test") if len(data.splits[name]) == 0]
    if not empty:
        return
    from camegrad_mini.rrg.paths import resolve_root

    try:
        where = str(resolve_root(cfg.data_root) / "annotation.json")
    except FileNotFoundError:
        where = str(cfg.data_root)
    words = {"train": "training", "val": "validation", "test": "test"}
    what = " and ".join(words[n] for n in empty)
    raise ValueError(f"the {what} split{'s are' if len(empty) > 1 else ' is'} empty: {where} has no "
                     f"{'/'.join(repr(n) for n in empty)} studies with images; add some (or prepare the folder "
                     "again with `python -m camegrad_mini.rrg.prepare`); nothing was trained")
