"""What defines a training run: :class:`TrainConfig`, its presets :data:`CONFIGS` and :func:`get_config`.

Chapter 6, section 6.5 (*Training: one loop for every method*) explains the fields; the presets
are the runs of section 6.6 (``cpu_full``, ``gpu_full``) and the chapter's own small ones
(``cpu_reduced``; ``tiny`` for the tests). :data:`METHODS` maps a method name to the aggregator
of :class:`camegrad_mini.optim.CAMEGrad`: the methods differ in nothing else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["TrainConfig", "CONFIGS", "METHODS", "AMP_MODES", "DATASETS", "get_config"]

# method name -> aggregator name of camegrad_mini.optim.CAMEGrad
METHODS: dict[str, str] = {"ls": "ls", "came": "came", "pcgrad": "pcgrad", "cagrad": "cagrad", "mgda": "mgda"}


# config fields that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = {"max_train_seconds", "progress", "device", "text_metrics", "num_threads"}
AMP_MODES = ("auto", "bf16", "fp16", "off")
DATASETS = ("iu_xray", "mimic_cxr")


@dataclass
class TrainConfig:
    """Everything that defines a run. Presets live in :data:`CONFIGS`; the CLI overrides fields.
    Chapter 6, section 6.5 (*Training: one loop for every method*)."""

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
    shared: Literal["auto", "all"] = "auto"  # CAMEGrad's shared parameters
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
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
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
    """A preset from :data:`CONFIGS` with field overrides, validated.
    Chapter 6, section 6.5 (*Training: one loop for every method*)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown TrainConfig field(s) {bad}")
    cfg = TrainConfig(**{**CONFIGS[name], **overrides})
    cfg.validate()
    return cfg
