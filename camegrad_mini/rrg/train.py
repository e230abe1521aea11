"""One training loop for every multi-task method, with exact resume (nanoGPT-style, top to bottom).

``python -m camegrad_mini.rrg.train --method came --seed 0 --config cpu_reduced --out runs/x``

Every method goes through the same code path: the per-task losses (report NLL, classification
BCE, optionally alignment) are handed to :class:`camegrad_mini.optim.CAMEGrad`, which computes the
per-task gradients, aggregates them (``ls`` = linear scalarization, ``came``, ``pcgrad``,
``cagrad``, ``mgda``), clips the result by its total norm, and steps AdamW (Loshchilov & Hutter
2019). So the methods differ *only* in the aggregator: same model, data order, augmentation,
learning-rate schedule (linear warm-up, cosine decay), clipping policy and selection rule (the
checkpoint with the best validation clinical macro-F1, as in the CAME-Grad trainer). The
official CAME-Grad code clips the baseline by value and the CAME-Grad path not at all; the book
avoids that confound on purpose.

What is recorded per step (``steps.csv``): the task losses, the inner product and cosine of the
report and classification gradients on the *shared* parameters (the encoder), whether they
conflict (inner product < 0; the paper reports 53.8 % of steps), the task-gradient norms and the
learning rate. Per epoch (``metrics.csv``): mean training losses, validation NLL and clinical
F1. At the end: ``generations_test.jsonl`` (reference and generated report per test study) and
``summary.json`` (config, timings, conflict statistics, test metrics).

Exact resume: after every epoch an atomic checkpoint ``last.pt`` (written to a private temporary
file, then ``os.replace``) holds the model, the optimizer wrapper's state, the schedule position, the
RNG states (torch, CUDA, numpy, Python, and the numpy generator that orders the data) and the
best-so-far selection state. Rerunning the same command continues from there, and on a CPU the
final parameters are bitwise identical to an uninterrupted run (tested by killing a run).
``--max-train-seconds`` may cut a run inside an epoch: the checkpoint then records the exact
position (the batch, the epoch's data order and its step rows so far), the summary says
``stopped_early`` with the steps done, and a rerun finishes the epoch where it stopped.
``last.pt.sha256`` (``best.pt.sha256``) beside each checkpoint is checked before loading: an
empty, truncated or altered checkpoint is refused with one line naming it, never resumed from.

One training per folder: ``OUT/.lock`` is held for the whole run (:mod:`camegrad_mini.rrg.runfiles`),
so a second training into the same ``--out`` fails at once instead of interleaving the logs.

Several processes: ``torchrun --nproc_per_node N -m camegrad_mini.rrg.train ...`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) joins a process group (NCCL on GPUs, gloo on
CPUs). The data order is drawn from the seed on every rank alike; each global batch of
``batch_size`` studies is split into ``N`` contiguous shards, one per rank, and CAMEGrad averages
the per-task gradients over the ranks before aggregating them, with the shard losses weighted
(:func:`shard_loss_factors`) so that the average is the global batch's gradient: the run takes
the steps one process takes with the same ``batch_size``. Augmentation is drawn for the whole
global batch on every rank, so every rank's RNG state is rank 0's, which the checkpoint holds.
Rank 0 alone holds the lock, writes every file, validates and decodes the test split; it reads
the checkpoint on resume and sends it to the others (:func:`on_main`, also the barrier). The model
is not wrapped in DistributedDataParallel: its hooks never see ``torch.autograd.grad``.

Mixed precision (``amp``): bfloat16 autocast on GPUs with native bfloat16, float16 with a
GradScaler on those without (a T4), float32 on the CPU (:func:`amp_mode`).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from camegrad_mini.rrg.model import ModelConfig, ReportGenerator
from camegrad_mini.rrg.runfiles import atomic_write_bytes, atomic_write_text, folder_lock

__all__ = ["TrainConfig", "CONFIGS", "METHODS", "get_config", "train", "prepare_data", "PreparedData", "SplitTensors", "main"]

# method name -> aggregator name of camegrad_mini.optim.CAMEGrad
METHODS: dict[str, str] = {"ls": "ls", "came": "came", "pcgrad": "pcgrad", "cagrad": "cagrad", "mgda": "mgda"}
# test hook: exit hard (no cleanup, as a kill would) right after the checkpoint of this epoch
EXIT_HOOK_ENV = "CAMEGRAD_RRG_EXIT_AFTER_EPOCH"
# config fields that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = {"max_train_seconds", "progress", "device", "text_metrics", "num_threads"}
AMP_MODES = ("auto", "bf16", "fp16", "off")
DATASETS = ("iu_xray", "mimic_cxr")


@dataclass
class TrainConfig:
    """Everything that defines a run. Presets live in :data:`CONFIGS`; the CLI overrides fields."""

    method: str = "came"
    seed: int = 0
    # data
    dataset: str = "iu_xray"  # "iu_xray" | "mimic_cxr" (R2Gen's MIMIC-CXR layout; credentialed, needs data_root)
    data_root: str | None = None  # None: the shipped data_samples/iu_xray (real reports, stand-in images)
    images: str = "auto"  # "auto" | "real" | "phantom" ("standin": its older name)
    image_size: int = 128
    data_seed: int = 0  # seeds the stand-in pictures; the same for every method and seed
    n_train: int | None = None  # None: the whole split; else the first n studies
    n_val: int | None = None
    n_test: int | None = None
    # model
    model: str = "full"  # a ModelConfig preset
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # tasks
    task_weights: tuple[float, ...] = (1.0, 4.0)  # report, classification (the paper's trainer)
    align_weight: float = 0.0  # > 0 adds the alignment task (needs model_overrides align_dim > 0)
    label_smoothing: float = 0.1
    # diagnosis-conditioned decoding (model_overrides {"diagnosis_prompt": True}): the share of
    # training studies whose prompts carry the labels instead of the classifier's predictions
    prompt_teacher: float = 0.0
    # classification loss: positive-class weights (1 - prevalence) / prevalence from the training
    # split, capped at this value (None: unweighted BCE). Rare findings otherwise barely count.
    cls_pos_weight_cap: float | None = None
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    max_grad_norm: float | None = 1.0  # one clipping policy (total norm) for every method
    rho: float = 0.5
    kappa: float = 1.5
    nu: float = 0.2
    shared: str = "auto"
    # augmentation (on the device): random translation and scale, brightness/contrast jitter
    augment: bool = True
    aug_translate: float = 0.06
    aug_scale: float = 0.06
    aug_intensity: float = 0.1
    # evaluation
    beam_size: int = 1  # test decoding; validation is always greedy
    no_repeat_ngram: int = 0  # test decoding: ban repeated n-grams (0: off)
    length_penalty: float = 0.0  # test beam search: rank by log-prob / length**length_penalty
    max_run: int = 0  # decoding (validation and test): no token more than this many times in a row
    min_len: int = 0  # decoding (validation and test): no EOS before this many tokens
    eval_batch_size: int = 128
    text_metrics: bool = False  # pycocoevalcap at the end (the GPU machine has none: post-hoc)
    # machine
    device: str = "auto"
    # mixed precision on CUDA (the CPU always runs float32): "auto" = bfloat16 where the GPU has it
    # natively, else float16 with a GradScaler (a T4); "bf16", "fp16" or "off" force one.
    amp: str = "auto"
    bf16: bool = True  # older switch: False turns "auto" off (configs written before `amp` existed)
    num_threads: int | None = None
    max_train_seconds: float | None = None  # safety net: stop training after this wall time (recorded)
    progress: bool = True

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.method in METHODS, f"method={self.method!r} is not one of {sorted(METHODS)}")
        need(self.images in ("auto", "real", "phantom", "standin"),
             f"images={self.images!r} must be 'auto', 'real' or 'phantom'")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0, f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        need(len(self.task_weights) == 2 and all(w > 0 for w in self.task_weights),
             f"task_weights must be two positive numbers (report, classification), got {self.task_weights}")
        need(self.align_weight >= 0, f"align_weight must be >= 0, got {self.align_weight}")
        need(0.0 <= self.prompt_teacher <= 1.0, f"prompt_teacher must be in [0, 1], got {self.prompt_teacher}")
        need(self.cls_pos_weight_cap is None or self.cls_pos_weight_cap >= 1.0,
             f"cls_pos_weight_cap must be None or >= 1, got {self.cls_pos_weight_cap}")
        if self.align_weight > 0:
            need(self.model_overrides.get("align_dim", 0) > 0,
                 "align_weight > 0 needs an alignment head: set model_overrides={'align_dim': 64}")
        for n in ("n_train", "n_val", "n_test"):
            v = getattr(self, n)
            need(v is None or v >= 2, f"{n} must be None or >= 2, got {v}")
        need(self.beam_size >= 1, f"beam_size must be >= 1, got {self.beam_size}")
        need(self.no_repeat_ngram >= 0, f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        need(self.amp in AMP_MODES, f"amp={self.amp!r} must be one of {list(AMP_MODES)}")
        need(self.dataset in DATASETS, f"dataset={self.dataset!r} must be one of {list(DATASETS)}")
        need(self.dataset != "mimic_cxr" or self.data_root is not None,
             "dataset='mimic_cxr' needs data_root (--data-root): MIMIC-CXR is credentialed data and never "
             "shipped; point it at the folder holding R2Gen's annotation.json and images/")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["task_weights"], d["betas"] = list(self.task_weights), list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["task_weights"], d["betas"] = tuple(d["task_weights"]), tuple(d["betas"])
        return cls(**d)


# Presets. gpu_full: the full model on all 2,069 training studies (one H100, see tools/gpu_run.sh).
# cpu_full: all studies of the phantom set with the small model (tools/cpu_run.sh, about 45 min).
# cpu_reduced: what the chapter runs on a 2-core CPU in seconds. tiny: the unit tests.
CONFIGS: dict[str, dict[str, Any]] = {
    # gpu_full: the 7 M-parameter model at 128 px with the recipe that made cpu_full learn (diagnosis
    # prompts taught from the labels, a capped positive weight, the decoding rules). Without that
    # recipe this model wrote one template for every study (issue 9); with it, it has not yet been
    # trained on a GPU: check its reports against the floors before reading a comparison.
    "gpu_full": dict(model="full", image_size=128, epochs=20, batch_size=32, lr=5e-4, warmup_steps=200,
                     beam_size=1, eval_batch_size=300, label_smoothing=0.1, prompt_teacher=1.0,
                     cls_pos_weight_cap=10.0, max_run=2, min_len=26,
                     model_overrides={"diagnosis_prompt": True, "prompt_threshold": 0.4}),
    # cpu_full: the committed CPU run of chapter 6 (tools/cpu_run.sh): every study of the phantom
    # set, the small model at 64 px with diagnosis prompts, about 8 minutes per run on one thread.
    "cpu_full": dict(model="small", image_size=64, epochs=26, batch_size=32, lr=2e-3, warmup_steps=150,
                     eval_batch_size=150, label_smoothing=0.1, prompt_teacher=1.0, cls_pos_weight_cap=10.0,
                     max_run=2, min_len=26,
                     model_overrides={"diagnosis_prompt": True, "prompt_threshold": 0.4, "n_dec_layers": 3,
                                      "dropout": 0.0}),
    "cpu_reduced": dict(model="tiny", image_size=32, n_train=192, n_val=24, n_test=48, epochs=8,
                        batch_size=16, lr=1e-2, warmup_steps=10, eval_batch_size=48,
                        model_overrides={"max_len": 40}, label_smoothing=0.0),
    "tiny": dict(model="tiny", image_size=32, n_train=24, n_val=8, n_test=8, epochs=2, batch_size=8,
                 lr=3e-3, warmup_steps=2, eval_batch_size=16, model_overrides={"max_len": 24},
                 label_smoothing=0.0, progress=False),
}


def get_config(name: str, **overrides: Any) -> TrainConfig:
    """A preset from :data:`CONFIGS` with field overrides, validated."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown TrainConfig field(s) {bad}")
    cfg = TrainConfig(**{**CONFIGS[name], **overrides})
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------------------------
# Data: tensors built once; the uint8 image cache lives on the training device.
# ----------------------------------------------------------------------------------------------

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
    """Subset the splits as the config says and move everything to ``device``."""
    ds = load_dataset(cfg) if dataset is None else dataset
    max_len = ModelConfig.preset(cfg.model, 8, image_size=cfg.image_size, **cfg.model_overrides).max_len
    limits = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    out: dict[str, SplitTensors] = {}
    for name, limit in limits.items():
        sp = ds.splits[name]
        n = len(sp.ids) if limit is None else min(limit, len(sp.ids))
        imgs = np.asarray(sp.images[:n])
        if imgs.shape[-1] != cfg.image_size:
            raise ValueError(f"dataset images are {imgs.shape[-1]} px but the config asks for image_size={cfg.image_size}")
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


def augment(images: torch.Tensor, cfg: TrainConfig, shard: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Random translation/scale and brightness/contrast jitter, on the device, per study.

    Both views of a study get the same geometric transform. No horizontal flip: it swaps left
    and right in a chest radiograph (R2Gen flips anyway; we choose not to). Returns float images
    in [0, 1]. Uses the global torch RNG of the device, which the checkpoint saves.
    ``shard=(lo, hi, n)``: ``images`` are studies ``lo:hi`` of a global batch of ``n``; the draws
    are made for all ``n`` (as one process would) and this shard's rows are used.
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
    grid = F.affine_grid(theta, (B, V, S, S), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1 + cfg.aug_intensity * u[:, 3]).view(B, 1, 1, 1)
    bright = (cfg.aug_intensity * u[:, 4]).view(B, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Schedule, optimizer
# ----------------------------------------------------------------------------------------------

def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: ReportGenerator, cfg: TrainConfig) -> Any:
    """AdamW (weight decay on matrices and convolutions only, as in nanoGPT) wrapped in CAMEGrad."""
    from camegrad_mini.optim import CAMEGrad

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    base = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    return CAMEGrad(base, rho=cfg.rho, kappa=cfg.kappa, nu=cfg.nu, aggregator=METHODS[cfg.method],
                    shared=cfg.shared, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed)


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


# ----------------------------------------------------------------------------------------------
# Mixed precision: bfloat16 where the GPU has it, float16 with a GradScaler where not (a T4)
# ----------------------------------------------------------------------------------------------

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
    the GPU query (tests)."""
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


# ----------------------------------------------------------------------------------------------
# Several processes (torchrun): one global batch, sharded; rank 0 writes every file
# ----------------------------------------------------------------------------------------------

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
    """torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one process where they are absent."""
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
    """What :func:`main` returns for this exception: 2 for bad input, 1 for the machine (or a bug)."""
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
        raise ValueError(f"a batch of {n} studies cannot be split over {ctx.world} processes; use more training studies")
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


def global_loss_values(task_losses: list[torch.Tensor], factors: list[float], ctx: DistContext) -> list[float]:
    """The global batch's loss values (what one process would log), from every rank's shard."""
    if not ctx.active:
        return [float(l.detach()) for l in task_losses]
    import torch.distributed as dist

    v = torch.stack([l.detach().float() * (f / ctx.world) for l, f in zip(task_losses, factors)])
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


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def generate_reports(model: ReportGenerator, split: SplitTensors, tokenizer: Any, batch_size: int,
                     beam_size: int = 1, autocast: Any = nullcontext, **decoding: Any) -> list[str]:
    """Decoded generated reports for every study in ``split`` (model put in eval mode);
    ``decoding`` goes to :meth:`ReportGenerator.generate` (``no_repeat_ngram``, ``length_penalty``)."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for i in range(0, len(split), batch_size):
        with autocast():
            ids = model.generate(split.images[i:i + batch_size], beam_size=beam_size, **decoding)
        texts.extend(tokenizer.decode(s) for s in ids)
    model.train(was_training)
    return texts


@torch.no_grad()
def classifier_probs(model: ReportGenerator, split: SplitTensors, batch_size: int, autocast: Any = nullcontext) -> np.ndarray:
    """The classification head's probabilities ``[N, n_obs]``: what the encoder knows, to read
    beside what the generated text says."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(split), batch_size):
        with autocast():
            logits = model.classify(model.encode(split.images[i:i + batch_size]))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.n_obs), dtype=np.float32)


@torch.no_grad()
def validation_nll(model: ReportGenerator, split: SplitTensors, batch_size: int, autocast: Any = nullcontext) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(split), batch_size):
        sl = slice(i, i + batch_size)
        with autocast():
            logits = model(split.images[sl], split.tokens[sl]).logits
        t = split.targets[sl]
        total += float(F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=-100, reduction="sum"))
        count += int((t != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def clinical_scores(generated: list[str], references: list[str]) -> dict[str, float]:
    """Rule-labeler clinical efficacy of generated against reference reports (same labeler on both)."""
    from camegrad_mini.rrg import label_reports
    from camegrad_mini.rrg.metrics import clinical_efficacy

    return {k: float(v) for k, v in clinical_efficacy(references, generated).items()
            if isinstance(v, (int, float, np.floating, np.integer)) and k != "n"}


def _macro_f1(scores: dict[str, float]) -> float:
    return scores["f1_macro"]


# ----------------------------------------------------------------------------------------------
# Files: atomic writes, resumable CSV logs
# ----------------------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: missing checksum, checksum mismatch, unreadable."""


_FRESH_START = "pass --no-resume to start over (or restore the file from a copy)"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _accepted_digests(path: Path) -> list[str] | None:
    """Digests that ``NAME.sha256`` accepts for ``NAME`` (sha256sum's format), None if it is missing."""
    try:
        text = _sidecar(path).read_text(encoding="utf-8", errors="replace")  # garbage simply won't match
    except FileNotFoundError:
        return None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _write_sidecar(path: Path, digests: list[str]) -> None:
    atomic_write_text(_sidecar(path), "".join(f"{d}  {path.name}\n" for d in digests))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (private temp file, then ``os.replace``), with its sha256 beside it.

    ``NAME.sha256`` is what makes a flipped byte or a truncated copy detectable at load time. It
    is written *before* the checkpoint is replaced and then lists two digests, the new one and
    that of the (verified) checkpoint still in place, so a kill between the two renames leaves a
    pair that verifies; after the rename it lists the new digest only.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    new = hashlib.sha256(data).hexdigest()
    keep = [new]
    accepted = _accepted_digests(path) or []
    if path.exists() and accepted:
        old = hashlib.sha256(path.read_bytes()).hexdigest()
        if old in accepted:
            keep.append(old)
    _write_sidecar(path, keep)
    atomic_write_bytes(path, data)
    _write_sidecar(path, [new])


def load_checkpoint(path: Path, device: torch.device | str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_torch_save`, after checking it against its sha256.

    Every failure is a :class:`CheckpointError` whose message names the file and says what to do
    (never a raw ``torch.load`` traceback, never a silent resume from changed bytes)."""
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path} is empty (an interrupted copy or a full disk?); {_FRESH_START}")
    accepted = _accepted_digests(path)
    if accepted is None:
        raise CheckpointError(f"{path} cannot be verified: its checksum file {_sidecar(path).name} is missing "
                              f"(written by an older version, or copied without it); {_FRESH_START}")
    if hashlib.sha256(data).hexdigest() not in accepted:
        raise CheckpointError(f"{path} is damaged: its sha256 does not match {_sidecar(path).name} (truncated, or "
                              f"changed after it was written); {_FRESH_START}")
    try:
        obj = torch.load(io.BytesIO(data), map_location=device, weights_only=False)
    except Exception as e:  # torch.load raises many types for a bad file
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}); "
                              f"{_FRESH_START}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (no {missing}); {_FRESH_START}")
    return obj


class CsvLog:
    """Append-only CSV; on resume, rows beyond the checkpoint are dropped (they will be redone)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns

    def truncate(self, key: str, last: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r[key]) <= last]
        self._rewrite(rows)

    def reset(self) -> None:
        self._rewrite([])

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        # atomically: a kill mid-rewrite must not lose the rows the checkpoint depends on
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.columns)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


STEP_COLUMNS = ["step", "epoch", "lr", "loss_report", "loss_cls", "loss_align", "inner", "cosine", "conflict",
                "norm_report", "norm_cls", "grad_norm", "clip_coef", "skipped", "step_time_s"]
EPOCH_COLUMNS = ["epoch", "step", "train_loss_report", "train_loss_cls", "conflict_share", "mean_cosine",
                 "val_nll", "val_macro_f1", "val_example_f1", "best", "epoch_time_s"]


def _rng_state(data_rng: np.random.Generator, device: torch.device | None = None) -> dict[str, Any]:
    """Every generator the run draws from. ``cuda_device``: the training GPU's own (under torchrun
    each rank draws on cuda:LOCAL_RANK, and all ranks' streams are equal, so rank 0's is everyone's)."""
    state = {"torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             "numpy": np.random.get_state(), "python": random.getstate(),
             "data_order": data_rng.bit_generator.state}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], data_rng: np.random.Generator, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        if state.get("cuda_device") is not None and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_device"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    data_rng.bit_generator.state = state["data_order"]


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


def class_pos_weight(labels: torch.Tensor, cap: float | None) -> torch.Tensor | None:
    """BCE positive weights ``(1 - prevalence) / prevalence`` per observation, clipped to [1, cap]
    (an observation without positives gets ``cap``); None without a cap."""
    if cap is None:
        return None
    prev = labels.float().mean(0)
    return ((1 - prev) / prev.clamp_min(1e-6)).clamp(1.0, cap)


def _info_pair(info: Any, name: str) -> float:
    """Entry (0, 1) of a T x T statistic of the optimizer's StepInfo (report vs classification)."""
    m = getattr(info, name, None)
    if m is None:
        return float("nan")
    m = torch.as_tensor(m)
    return float(m[0, 1]) if m.dim() == 2 else float(m)


def _info_norms(info: Any) -> tuple[float, float]:
    """Norms of the raw report and classification gradients on the shared parameters
    (square roots of the Gram matrix's diagonal)."""
    g = getattr(info, "inner_products", None)
    if g is None:
        return float("nan"), float("nan")
    d = np.sqrt(np.clip(np.diag(np.asarray(g, dtype=float)), 0, None))
    return float(d[0]), float(d[1]) if len(d) > 1 else float("nan")


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True, dataset: Any | None = None,
          data: PreparedData | None = None) -> dict[str, Any]:
    """Train one (method, seed) run into ``out_dir`` and return its summary (also ``summary.json``).

    ``dataset`` (from ``load_iu_xray``) or ``data`` (from :func:`prepare_data`) can be passed to
    share one loaded dataset between runs; otherwise it is loaded from ``cfg``. With ``resume``
    an existing ``last.pt`` in ``out_dir`` is continued; without it, existing results are
    overwritten. The folder is locked for the whole run: a second training into it fails at once.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same arguments: each
    takes its share of every global batch, rank 0 alone holds the lock and writes the files,
    and every process returns rank 0's summary.
    """
    cfg.validate()
    out = Path(out_dir)
    ctx = distributed_from_env()
    _check_world(cfg, ctx)
    device = _resolve_device(cfg.device, ctx)
    ctx = _init_distributed(ctx, device)
    try:
        with contextlib.ExitStack() as stack:
            # rank 0 holds the folder's lock; a busy folder stops every rank with rank 0's error
            on_main(ctx, lambda: stack.enter_context(folder_lock(out)) and None)
            summary = _train(cfg, out, resume, dataset, data, device, ctx)
        if ctx.owns_group:
            # every rank done before any leaves: a rank that tears down gloo while its peer is still
            # in the last collective made the peer abort at exit ("terminate called ...") now and then
            import torch.distributed as dist

            dist.barrier()
        return summary
    finally:
        if ctx.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# the checkpoint's top-level keys (the chapter shows them; the exact position lives in "scheduler")
_CKPT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "best", "train_time", "studies_seen",
              "step_times", "config", "model_config")
# what a fresh start removes: results of an earlier run that would otherwise survive next to the new one
_STALE = ("last.pt", "last.pt.sha256", "best.pt", "best.pt.sha256", "summary.json", "generations_test.jsonl",
          "generations_val.jsonl", "metrics_test.json")


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


def _check_same_config(path: Path, saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Refuse to resume with another config (fields added since the checkpoint count as their defaults)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved = {k: v for k, v in {**defaults, **saved}.items() if k not in _RESUMABLE_CHANGES}
    now = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}
    if saved != now:
        diff = sorted(k for k in now if saved.get(k) != now[k])
        raise ValueError(f"{path} was written with a different config (fields {diff}); "
                         "use another --out folder or pass --no-resume to start over")


def _start_or_resume(cfg: TrainConfig, out: Path, resume: bool, map_location: Any, n_batches: int,
                     total_steps: int, steps_log: CsvLog, epoch_log: CsvLog) -> dict[str, Any] | None:
    """(Rank 0.) The checkpoint to continue from, with the logs cut back to it; or None for a
    fresh start, with an earlier run's results removed. Writes ``config.json`` either way."""
    ckpt_path = out / "last.pt"
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location, _CKPT_KEYS)
        _check_same_config(ckpt_path, ckpt["config"], cfg)
        step = ckpt["step"]
        steps_log.truncate("step", step - 1)
        epoch_log.truncate("epoch", step // n_batches - 1)
        if step < total_steps:  # an earlier stopped-early result no longer describes this folder
            for stale in ("summary.json", "generations_test.jsonl", "metrics_test.json"):
                (out / stale).unlink(missing_ok=True)
    else:
        for stale in _STALE:
            (out / stale).unlink(missing_ok=True)
        steps_log.reset()
        epoch_log.reset()
    atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    return ckpt


@dataclass
class _Position:
    """Where the loop (re)starts. A run cut inside an epoch resumes at that epoch's next batch,
    with the epoch's data order and its step rows so far (metrics.csv's means cover the epoch)."""

    start_epoch: int = 0
    step: int = 0
    cut_order: np.ndarray | None = None
    cut_rows: list[dict[str, Any]] = field(default_factory=list)
    cut_time: float = 0.0
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": -1, "val_macro_f1": -1.0, "val_nll": float("inf")})
    train_time: float = 0.0
    studies_seen: int = 0
    step_times: list[float] = field(default_factory=list)


def _restore(ckpt: dict[str, Any] | None, model: ReportGenerator, opt: Any, scaler: Any,
             data_rng: np.random.Generator, device: torch.device) -> _Position:
    """Load a checkpoint's model, optimizer, loss scaler and RNG states; its position in the run."""
    if ckpt is None:
        return _Position()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    pos = ckpt["scheduler"].get("position", {"epoch_complete": True})
    at = _Position(step=ckpt["step"], best=ckpt["best"], train_time=ckpt["train_time"],
                   studies_seen=ckpt["studies_seen"], step_times=ckpt.get("step_times", []))
    if pos["epoch_complete"]:
        at.start_epoch = ckpt["epoch"] + 1
    else:
        at.start_epoch = ckpt["epoch"]
        at.cut_order, at.cut_rows, at.cut_time = np.asarray(pos["order"]), list(pos["rows"]), pos["epoch_time_s"]
    _set_rng_state(ckpt["rng"], data_rng, device)
    return at


def _device_name(device: torch.device, ctx: DistContext) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
    return f"{ctx.world} x {name}" if ctx.active else name


def _train(cfg: TrainConfig, out: Path, resume: bool, dataset: Any | None, data: PreparedData | None,
           device: torch.device | None = None, ctx: DistContext = DistContext()) -> dict[str, Any]:
    device = device if device is not None else _resolve_device(cfg.device, ctx)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    amp = amp_mode(cfg, device)
    autocast, scaler = autocast_for(amp), grad_scaler_for(amp)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # seeds first: model initialisation draws from the torch RNG. Every rank seeds alike and
    # draws alike (augmentation is drawn for the whole global batch), so rank 0's RNG state,
    # which the checkpoint keeps, is every rank's.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)

    t_data = time.perf_counter()
    data = data if data is not None else prepare_data(cfg, device, dataset)
    data_time = time.perf_counter() - t_data
    _check_splits(cfg, data)
    tok = data.tokenizer
    tr, va, te = data.splits["train"], data.splits["val"], data.splits["test"]
    mcfg = ModelConfig.preset(cfg.model, len(tok), image_size=cfg.image_size, pad_id=tok.pad_id,
                              bos_id=tok.bos_id, eos_id=tok.eos_id, **cfg.model_overrides)
    model = ReportGenerator(mcfg).to(device)
    broadcast_parameters(model, ctx)
    opt = build_optimizer(model, cfg)
    grad_hooks = sync_task_gradients(model, opt, ctx)
    base_lrs = [g["lr"] for g in opt.param_groups]
    weights = list(cfg.task_weights) + ([cfg.align_weight] if cfg.align_weight > 0 else [])
    pos_weight = class_pos_weight(tr.labels, cfg.cls_pos_weight_cap)
    target_tokens = (tr.targets != -100).sum(1).cpu().numpy() if ctx.active else None

    n_batches = len(tr) // cfg.batch_size if len(tr) >= cfg.batch_size else 1
    total_steps = cfg.epochs * n_batches
    steps_log = CsvLog(out / "steps.csv", STEP_COLUMNS)
    epoch_log = CsvLog(out / "metrics.csv", EPOCH_COLUMNS)
    ckpt_path = out / "last.pt"
    # under torchrun rank 0 reads the checkpoint (on the CPU) and sends it to the others: no
    # rank but 0 needs to see the output folder (several machines need not share a file system)
    ckpt = on_main(ctx, _start_or_resume, cfg, out, resume, "cpu" if ctx.active else device, n_batches,
                   total_steps, steps_log, epoch_log)
    at = _restore(ckpt, model, opt, scaler, data_rng, device)
    del ckpt
    step, best, cut_order, cut_rows, cut_time = at.step, at.best, at.cut_order, at.cut_rows, at.cut_time
    train_time, studies_seen, step_times = at.train_time, at.studies_seen, at.step_times

    def checkpoint(epoch: int, position: dict[str, Any]) -> None:
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": {"kind": "warmup_cosine", "step": step, "total_steps": total_steps,
                                         "base_lrs": base_lrs, "position": position},
                           "rng": _rng_state(data_rng, device), "epoch": epoch, "step": step, "best": best,
                           "train_time": train_time, "studies_seen": studies_seen, "step_times": step_times,
                           "config": cfg.to_dict(), "model_config": mcfg.to_dict(),
                           "scaler": scaler.state_dict() if scaler is not None else None}, ckpt_path)

    def end_of_epoch(epoch: int, rows: list[dict[str, Any]], t_epoch: float) -> dict[str, Any]:
        """(Rank 0.) Validation: greedy decoding, rule-labeler clinical F1 (the selection metric),
        NLL; best.pt and the metrics.csv row. Returns the best-so-far selection state."""
        val_texts = generate_reports(model, va, tok, cfg.eval_batch_size, beam_size=1, autocast=autocast,
                                     max_run=cfg.max_run, min_len=cfg.min_len)
        ce = clinical_scores(val_texts, va.reports)
        val_f1, val_nll = _macro_f1(ce), validation_nll(model, va, cfg.eval_batch_size, autocast)
        # the paper's rule: best validation clinical F1; ties (common early on, when every
        # report is the normal template) go to the lower validation NLL
        new_best = best
        is_best = (val_f1, -val_nll) > (best["val_macro_f1"], -best["val_nll"])
        if is_best:
            new_best = {"epoch": epoch, "val_macro_f1": val_f1, "val_nll": val_nll}
            atomic_torch_save({"model": model.state_dict(), "model_config": mcfg.to_dict(), "epoch": epoch},
                              out / "best.pt")
        conf = [r["conflict"] for r in rows]
        cos = [r["cosine"] for r in rows if not math.isnan(r["cosine"])]
        epoch_log.append([{"epoch": epoch, "step": step,
                           "train_loss_report": float(np.mean([r["loss_report"] for r in rows])),
                           "train_loss_cls": float(np.mean([r["loss_cls"] for r in rows])),
                           "conflict_share": float(np.mean(conf)) if conf else float("nan"),
                           "mean_cosine": float(np.mean(cos)) if cos else float("nan"),
                           "val_nll": val_nll, "val_macro_f1": val_f1,
                           "val_example_f1": ce["f1_example"], "best": int(is_best),
                           "epoch_time_s": time.perf_counter() - t_epoch}])
        if bar is None and cfg.progress:
            print(f"[{cfg.method} s{cfg.seed}] epoch {epoch + 1}/{cfg.epochs} step {step} "
                  f"val_macro_f1 {val_f1:.3f} val_nll {val_nll:.3f}", flush=True)
        return new_best

    bar = None
    if cfg.progress and ctx.is_main:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.method} s{cfg.seed}", unit="step", leave=False)
        except ImportError:  # the GPU machine may lack tqdm: fall back to one line per epoch
            bar = None
    out_of_time = False
    loop_start = time.perf_counter()
    model.train()
    for epoch in range(at.start_epoch, cfg.epochs):
        t_epoch = time.perf_counter() - cut_time
        if cut_order is not None:  # resuming inside this epoch: its order was drawn before the cut
            order, rows = cut_order, cut_rows
            cut_order, cut_rows, cut_time = None, [], 0.0
        else:
            order, rows = data_rng.permutation(len(tr)), []
        first = len(rows)
        for b in range(first, n_batches):
            # the global batch is the one-process batch; under torchrun each rank takes a slice
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            lo, hi = shard_bounds(len(batch), ctx)
            shard = (lo, hi, len(batch)) if ctx.active else None
            idx = torch.as_tensor(batch[lo:hi], device=device)
            t0 = time.perf_counter()
            f = lr_factor(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * f
            images = augment(tr.images[idx], cfg, shard)
            with autocast():
                losses = model.losses(images, tr.tokens[idx], tr.targets[idx], tr.labels[idx],
                                      label_smoothing=cfg.label_smoothing, cls_pos_weight=pos_weight,
                                      prompt_labels=_prompt_labels(tr.labels[idx], cfg.prompt_teacher, shard))
            task_losses = [losses["report"], losses["cls"]] + ([losses["align"]] if cfg.align_weight > 0 else [])
            factors = shard_loss_factors(target_tokens[batch], lo, hi, ctx) if ctx.active else None
            info = opt.step(_rescaled(task_losses, factors), task_weights=weights, scaler=scaler)
            if scaler is not None:
                scaler.update()
            lv = global_loss_values(task_losses, factors, ctx)  # syncs the device, so step_time is honest
            dt = time.perf_counter() - t0
            inner = _info_pair(info, "inner_products")
            n0, n1 = _info_norms(info)
            rows.append({"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"],
                         "loss_report": lv[0], "loss_cls": lv[1], "loss_align": lv[2] if len(lv) > 2 else "",
                         "inner": inner, "cosine": _info_pair(info, "cosines"), "conflict": int(inner < 0),
                         "norm_report": n0, "norm_cls": n1,
                         "grad_norm": float(getattr(info, "grad_norm", None) or float("nan")),
                         "clip_coef": float(getattr(info, "clip_coef", 1.0)), "skipped": int(bool(getattr(info, "skipped", False))),
                         "step_time_s": dt})
            step += 1
            train_time += dt
            studies_seen += len(batch)
            step_times.append(dt)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, nll=f"{lv[0]:.3f}", cls=f"{lv[1]:.3f}")
            # every rank stops after the same step (rank 0's clock alone would leave the others waiting)
            if (cfg.max_train_seconds is not None and step < total_steps
                    and any_rank(ctx, time.perf_counter() - loop_start > cfg.max_train_seconds)):
                out_of_time = True
                break
        on_main(ctx, steps_log.append, rows[first:])
        if len(rows) < n_batches:
            # cut inside the epoch: store the exact position, not a finished epoch, and skip the
            # validation (it would score half an epoch); the rerun continues with batch len(rows)
            on_main(ctx, checkpoint, epoch, {"epoch_complete": False, "batch": len(rows), "order": order, "rows": rows,
                                             "epoch_time_s": time.perf_counter() - t_epoch})
            break
        best = on_main(ctx, end_of_epoch, epoch, rows, t_epoch)  # rank 0 evaluates; the others wait
        on_main(ctx, checkpoint, epoch, {"epoch_complete": True})
        if os.environ.get(EXIT_HOOK_ENV) == str(epoch):
            os._exit(75)  # simulate a kill right after the checkpoint (no cleanup, no summary)
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    for h in grad_hooks:
        h.remove()

    def finish() -> dict[str, Any]:
        summary = _finish(cfg, out, model, data, best, autocast, device, mcfg)
        all_steps = _read_csv(out / "steps.csv")
        if [int(r["step"]) for r in all_steps] != list(range(step)):
            # the lock keeps other writers out; this catches anything that still got in
            raise ValueError(f"{out / 'steps.csv'} has {len(all_steps)} rows for {step} steps (another process wrote "
                             f"to {out}?); pass --no-resume to train again")
        inner = np.array([float(r["inner"]) for r in all_steps]) if all_steps else np.zeros(0)
        cosv = np.array([float(r["cosine"]) for r in all_steps]) if all_steps else np.zeros(0)
        finite = np.isfinite(inner)
        warm = step_times[min(5, len(step_times) - 1):] if step_times else []  # skip warm-up steps
        summary.update({
            "n_params": model.num_parameters(), "device": _device_name(device, ctx), "world_size": ctx.world,
            "torch": torch.__version__, "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "threads": torch.get_num_threads(), "bf16": amp == "bf16", "amp": amp,
            "epochs_completed": step // n_batches, "steps": step, "steps_total": total_steps,
            # only the time limit ends a run before its last step (a kill leaves no summary)
            "stopped_early": step < total_steps,
            "train_time_s": train_time, "data_time_s": data_time, "loop_wall_s": time.perf_counter() - loop_start,
            "studies_per_s": studies_seen / train_time if train_time > 0 else float("nan"),
            "median_step_time_s": float(np.median(warm)) if len(warm) else float("nan"),
            "conflict_share": float(np.mean(inner[finite] < 0)) if finite.any() else float("nan"),
            "mean_cosine": float(np.nanmean(cosv)) if np.isfinite(cosv).any() else float("nan"),
            "n_conflict_steps": int(finite.sum()),
        })
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_default))
        return summary

    return on_main(ctx, finish)  # rank 0 decodes the test split; every rank returns its summary


def _rescaled(task_losses: list[torch.Tensor], factors: list[float] | None) -> list[torch.Tensor]:
    """The losses the optimizer differentiates: this shard's, weighted by :func:`shard_loss_factors`."""
    if factors is None:
        return task_losses
    return [l * f for l, f in zip(task_losses, factors)]


def _finish(cfg: TrainConfig, out: Path, model: ReportGenerator, data: PreparedData, best: dict[str, Any],
            autocast: Any, device: torch.device, mcfg: ModelConfig) -> dict[str, Any]:
    """Reload the selected checkpoint, decode the test split, write generations and metrics."""
    if (out / "best.pt").exists():
        model.load_state_dict(load_checkpoint(out / "best.pt", device, ("model",))["model"])
    te = data.splits["test"]
    t0 = time.perf_counter()
    gen = generate_reports(model, te, data.tokenizer, cfg.eval_batch_size, beam_size=cfg.beam_size, autocast=autocast,
                           no_repeat_ngram=cfg.no_repeat_ngram, length_penalty=cfg.length_penalty,
                           max_run=cfg.max_run, min_len=cfg.min_len)
    decode_time = time.perf_counter() - t0
    probs = classifier_probs(model, te, cfg.eval_batch_size, autocast)
    from camegrad_mini.rrg import label_reports
    from camegrad_mini.rrg.metrics import r2gen_references

    # text references as R2Gen scores them (decoded: truncated, <unk>-mapped); the clinical
    # labels come from the full cleaned reference, the text the training labels came from
    refs_tok = r2gen_references(data.tokenizer, te.reports)
    gl, rl = np.asarray(label_reports(gen)), np.asarray(label_reports(te.reports))
    lines = [json.dumps({"id": sid, "reference": ref, "reference_tok": rt, "generated": g,
                         "ref_labels": rl[i].astype(int).tolist(), "gen_labels": gl[i].astype(int).tolist(),
                         "cls_prob": [round(float(x), 4) for x in probs[i]]}) + "\n"
             for i, (sid, ref, rt, g) in enumerate(zip(te.ids, te.reports, refs_tok, gen))]
    atomic_write_text(out / "generations_test.jsonl", "".join(lines))
    test = {f"test_{k}": v for k, v in clinical_scores(gen, te.reports).items()}
    if cfg.text_metrics:
        from camegrad_mini.rrg.metrics import text_metrics

        test.update({f"test_{k}": float(v) for k, v in text_metrics(refs_tok, gen).items()
                     if isinstance(v, (int, float))})
    return {"method": cfg.method, "seed": cfg.seed, "config": cfg.to_dict(), "model_config": mcfg.to_dict(),
            "images_are_standins": data.images_are_standins, "n_train": len(data.splits["train"]),
            "n_val": len(data.splits["val"]), "n_test": len(te), "best_epoch": best["epoch"],
            "val_macro_f1": best["val_macro_f1"], "test_decode_time_s": decode_time, **test}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m camegrad_mini.rrg.train",
                                description="Train the compact IU X-Ray report generator with one multi-task method. "
                                            "Rerun the same command to resume an interrupted run exactly.")
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="gradient aggregation method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="cpu_reduced", choices=sorted(CONFIGS), help="preset (default: cpu_reduced)")
    p.add_argument("--out", required=True, help="output folder (logs, checkpoints, generations, summary)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="iu_xray (default) or mimic_cxr (R2Gen's MIMIC-CXR layout under --data-root; credentialed)")
    p.add_argument("--data-root", default=None,
                   help="prepared IU X-Ray folder (default: the shipped data_samples), or the MIMIC-CXR folder")
    p.add_argument("--images", choices=["auto", "real", "phantom", "standin"], default=None,
                   help="real radiographs, the phantom set, or auto (real where present); standin = phantom")
    p.add_argument("--image-size", type=int, default=None)
    for name, typ in [("epochs", int), ("batch-size", int), ("lr", float), ("warmup-steps", int),
                      ("n-train", int), ("n-val", int), ("n-test", int), ("beam-size", int),
                      ("rho", float), ("kappa", float), ("nu", float), ("max-grad-norm", float),
                      ("num-threads", int), ("max-train-seconds", float), ("weight-decay", float)]:
        p.add_argument(f"--{name}", type=typ, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N (under torchrun: cuda)")
    p.add_argument("--amp", choices=list(AMP_MODES), default=None,
                   help="mixed precision on CUDA: auto (bf16 where native, else fp16 with loss scaling), bf16, fp16, off")
    p.add_argument("--text-metrics", action="store_true", help="also compute BLEU/METEOR/ROUGE-L/CIDEr (needs pycocoevalcap)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overrides", default=None, help='JSON dict of TrainConfig fields, e.g. \'{"n_train": 64}\'')
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    over: dict[str, Any] = {}
    if args.overrides:
        try:
            given = json.loads(args.overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--overrides is not valid JSON: {e}") from e
        if not isinstance(given, dict):
            raise ValueError("--overrides must be a JSON object")
        over.update(given)
    over.update(method=args.method, seed=args.seed)
    for key in ("dataset", "amp", "data_root", "images", "image_size", "epochs", "batch_size", "lr", "warmup_steps", "n_train", "n_val",
                "n_test", "beam_size", "rho", "kappa", "nu", "max_grad_norm", "num_threads", "max_train_seconds",
                "weight_decay", "device"):
        v = getattr(args, key)
        if v is not None:
            over[key] = v
    if args.text_metrics:
        over["text_metrics"] = True
    if args.no_progress:
        over["progress"] = False
    return get_config(args.config, **over)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        summary = train(cfg, args.out, resume=not args.no_resume)
    except PeerFailed as e:  # under torchrun: rank 0 failed and printed why; stop with its code
        return e.code
    except (ValueError, FileNotFoundError) as e:  # bad input: config, data, checkpoint, a busy --out
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine: disk full, permissions
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not distributed_from_env().is_main:  # under torchrun rank 0 alone reports
        return 0
    if summary["stopped_early"]:
        # not a failure (the limit is a budget the user set), but never mistaken for a full run
        print(f"warning: stopped early by --max-train-seconds after {summary['steps']} of {summary['steps_total']} "
              f"steps (summary.json says stopped_early); rerun without --no-resume to continue from there",
              file=sys.stderr)
    keys = [k for k in ("test_f1_macro", "test_f1_example", "conflict_share", "studies_per_s") if k in summary]
    print(json.dumps({k: round(summary[k], 4) for k in keys}), flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    if distributed_from_env().active:
        # A torchrun worker leaves without running C++ static destructors: tearing gloo's threads
        # down at interpreter exit aborted a process now and then ("terminate called without an
        # active exception", about 1 run in 15 on CPU), after the run had written everything.
        # Every file is written atomically and closed by now; only the streams need flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
