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
(:func:`~camegrad_mini.rrg.distributed.shard_loss_factors`) so that the average is the global batch's gradient:
the run takes the steps one process takes with the same ``batch_size``. Augmentation is drawn for the whole
global batch on every rank, so every rank's RNG state is rank 0's, which the checkpoint holds.
Rank 0 alone holds the lock, writes every file, validates and decodes the test split; it reads
the checkpoint on resume and sends it to the others (:func:`~camegrad_mini.rrg.distributed.on_main`, also the
barrier). The model is not wrapped in DistributedDataParallel: its hooks never see ``torch.autograd.grad``.

Mixed precision (``amp``): bfloat16 autocast on GPUs with native bfloat16, float16 with a
GradScaler on those without (a T4), float32 on the CPU (:func:`~camegrad_mini.rrg.device.amp_mode`).

Where the pieces live (this module is the entry point and re-exports them all, so
``from camegrad_mini.rrg import train as T`` reaches every name it always did):

- :mod:`~camegrad_mini.rrg.config`: the run's settings (``TrainConfig``, the presets ``CONFIGS``);
- :mod:`~camegrad_mini.rrg.training_data`: the dataset as tensors (``prepare_data``);
- :mod:`~camegrad_mini.rrg.augment`: augmentation and the diagnosis-prompt draws of each batch;
- :mod:`~camegrad_mini.rrg.optimizer`: AdamW inside CAMEGrad, the learning-rate schedule;
- :mod:`~camegrad_mini.rrg.device`: the training device and mixed precision;
- :mod:`~camegrad_mini.rrg.distributed`: torchrun (ranks, shards, collectives);
- :mod:`~camegrad_mini.rrg.evaluation`: decoding and clinical scores;
- :mod:`~camegrad_mini.rrg.checkpoint`: checkpoint I/O and exact resume;
- :mod:`~camegrad_mini.rrg.runlog`: ``steps.csv`` and ``metrics.csv``;
- :mod:`~camegrad_mini.rrg.loop`: the loop itself (``train``);
- here: the command line (:func:`main`). Chapter 6, section 6.5 (*Training: one loop for every method*).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# The facade: every name this module held before it was split (chapter 6, the tests and the tools use them).
from camegrad_mini.rrg.augment import _prompt_labels, augment  # noqa: F401
from camegrad_mini.rrg.checkpoint import (  # noqa: F401
    _CKPT_KEYS, _FRESH_START, _STALE, CheckpointError, _accepted_digests, _check_same_config,  # noqa: F401
    _Position, _restore, _rng_state, _set_rng_state, _sidecar, _start_or_resume, _write_sidecar,  # noqa: F401
    atomic_torch_save, load_checkpoint)  # noqa: F401
from camegrad_mini.rrg.config import (  # noqa: F401
    _RESUMABLE_CHANGES, AMP_MODES, CONFIGS, DATASETS, METHODS, TrainConfig, get_config)  # noqa: F401
from camegrad_mini.rrg.device import (  # noqa: F401
    _native_bf16, _resolve_device, amp_mode, autocast_for, grad_scaler_for)  # noqa: F401
from camegrad_mini.rrg.distributed import (  # noqa: F401
    DIST_TIMEOUT_ENV, DIST_TIMEOUT_S, DistContext, PeerFailed, _check_world, _env_int, _exit_code,  # noqa: F401
    _init_distributed, _rescaled, _wrapper_syncs_gradients, any_rank, broadcast_parameters,  # noqa: F401
    distributed_from_env, global_loss_values, on_main, shard_bounds, shard_loss_factors,  # noqa: F401
    sync_task_gradients)  # noqa: F401
from camegrad_mini.rrg.evaluation import (  # noqa: F401
    _macro_f1, classifier_probs, clinical_scores, generate_reports, validation_nll)  # noqa: F401
from camegrad_mini.rrg.loop import EXIT_HOOK_ENV, _device_name, _finish, _train, train  # noqa: F401
from camegrad_mini.rrg.model import ModelConfig, ReportGenerator  # noqa: F401
from camegrad_mini.rrg.optimizer import build_optimizer, lr_factor  # noqa: F401
from camegrad_mini.rrg.runfiles import atomic_write_bytes, atomic_write_text, folder_lock  # noqa: F401
from camegrad_mini.rrg.runlog import (  # noqa: F401
    EPOCH_COLUMNS, STEP_COLUMNS, CsvLog, _info_norms, _info_pair, _json_default, _read_csv)  # noqa: F401
from camegrad_mini.rrg.training_data import (  # noqa: F401
    PreparedData, SplitTensors, _check_splits, _encode, class_pos_weight, load_dataset, prepare_data)  # noqa: F401

__all__ = ["TrainConfig", "CONFIGS", "METHODS", "get_config", "train", "prepare_data", "PreparedData", "SplitTensors",
           "main"]


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m camegrad_mini.rrg.train`` (see :func:`main`)."""
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
                   help="mixed precision on CUDA: auto (bf16 where native, else fp16 with loss scaling), bf16, fp16, "
                        "off")
    p.add_argument("--text-metrics", action="store_true",
                   help="also compute BLEU/METEOR/ROUGE-L/CIDEr (needs pycocoevalcap)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overrides", default=None, help='JSON dict of TrainConfig fields, e.g. \'{"n_train": 64}\'')
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the ``--config`` preset, then ``--overrides``, then the named options."""
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
    for key in ("dataset", "amp", "data_root", "images", "image_size", "epochs", "batch_size", "lr", "warmup_steps",
                "n_train", "n_val", "n_test", "beam_size", "rho", "kappa", "nu", "max_grad_norm", "num_threads",
                "max_train_seconds", "weight_decay", "device"):
        v = getattr(args, key)
        if v is not None:
            over[key] = v
    if args.text_metrics:
        over["text_metrics"] = True
    if args.no_progress:
        over["progress"] = False
    return get_config(args.config, **over)


def main(argv: list[str] | None = None) -> int:
    """Train one run from the command line; the exit code is 0, 2 for bad input, 1 for the machine.
    Chapter 6, section 6.5 (*Training: one loop for every method*); rerunning the same command resumes (section 6.7)."""
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
