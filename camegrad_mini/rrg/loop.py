"""The training loop: :func:`train` runs one (method, seed) into a folder, top to bottom.

Chapter 6, section 6.5 (*Training: one loop for every method*) walks through it and section 6.7
(*Interruptions and exact resume*) through its checkpoints. ``_train`` is a short loop over
named steps: set the run up (``_set_up``), continue from the checkpoint (``_resume``), then
per epoch train its batches (``_train_epoch``, one ``_train_step`` each), validate and
select (``_end_of_epoch``) and checkpoint (``_save_last``); finally decode the test split
and write ``summary.json`` (``_write_summary``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camegrad_mini.rrg.augment import _prompt_labels, augment
from camegrad_mini.rrg.checkpoint import (_Position, _restore, _rng_state, _start_or_resume, atomic_torch_save,
                                          load_checkpoint)
from camegrad_mini.rrg.config import TrainConfig
from camegrad_mini.rrg.device import _resolve_device, amp_mode, autocast_for, grad_scaler_for
from camegrad_mini.rrg.distributed import (DistContext, _check_world, _init_distributed, _rescaled, any_rank,
                                           broadcast_parameters, distributed_from_env, global_loss_values, on_main,
                                           shard_bounds, shard_loss_factors, sync_task_gradients)
from camegrad_mini.rrg.evaluation import _macro_f1, classifier_probs, clinical_scores, generate_reports, validation_nll
from camegrad_mini.rrg.model import ModelConfig, ReportGenerator
from camegrad_mini.rrg.optimizer import build_optimizer, lr_factor
from camegrad_mini.rrg.runfiles import atomic_write_text, folder_lock
from camegrad_mini.rrg.runlog import (EPOCH_COLUMNS, STEP_COLUMNS, CsvLog, _info_norms, _info_pair, _json_default,
                                      _read_csv)
from camegrad_mini.rrg.training_data import PreparedData, _check_splits, class_pos_weight, prepare_data

__all__ = ["train", "EXIT_HOOK_ENV"]

# test hook: exit hard (no cleanup, as a kill would) right after the checkpoint of this epoch
EXIT_HOOK_ENV = "CAMEGRAD_RRG_EXIT_AFTER_EPOCH"


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True, dataset: Any | None = None,
          data: PreparedData | None = None) -> dict[str, Any]:
    """Train one (method, seed) run into ``out_dir`` and return its summary (also ``summary.json``).

    ``dataset`` (from ``load_iu_xray``) or ``data`` (from
    :func:`~camegrad_mini.rrg.training_data.prepare_data`) can be passed to share one loaded dataset
    between runs; otherwise it is loaded from ``cfg``. With ``resume`` an existing ``last.pt`` in
    ``out_dir`` is continued; without it, existing results are overwritten. The folder is locked
    for the whole run: a second training into it fails at once.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this with the same arguments: each
    takes its share of every global batch, rank 0 alone holds the lock and writes the files,
    and every process returns rank 0's summary.

    Chapter 6, section 6.5 (*Training: one loop for every method*).
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


@dataclass
class _Run:
    """What stays fixed while a run trains: its config, data, model, optimizer and logs."""

    cfg: TrainConfig
    out: Path
    ctx: DistContext
    device: torch.device
    amp: str
    autocast: Any
    scaler: Any
    data_rng: np.random.Generator
    data: PreparedData
    data_time: float
    mcfg: ModelConfig
    model: ReportGenerator
    opt: Any
    grad_hooks: list[Any]
    base_lrs: list[float]
    weights: list[float]
    pos_weight: torch.Tensor | None
    target_tokens: np.ndarray | None  # per training study, under torchrun only (the shard loss factors)
    n_batches: int
    total_steps: int
    steps_log: CsvLog
    epoch_log: CsvLog


def _train(cfg: TrainConfig, out: Path, resume: bool, dataset: Any | None, data: PreparedData | None,
           device: torch.device | None = None, ctx: DistContext | None = None) -> dict[str, Any]:
    """The loop of :func:`train`, inside the folder's lock and the process group."""
    ctx = ctx if ctx is not None else DistContext()
    run = _set_up(cfg, out, dataset, data, device if device is not None else _resolve_device(cfg.device, ctx), ctx)
    at = _resume(run, resume)
    bar = _progress_bar(run, at.step)
    loop_start = time.perf_counter()
    run.model.train()
    for epoch in range(at.start_epoch, cfg.epochs):
        t_epoch = time.perf_counter() - at.cut_time
        order, rows = _epoch_order(run, at)
        first = len(rows)
        out_of_time = _train_epoch(run, at, epoch, order, rows, bar, loop_start)
        on_main(ctx, run.steps_log.append, rows[first:])
        if len(rows) < run.n_batches:
            # cut inside the epoch: store the exact position, not a finished epoch, and skip the
            # validation (it would score half an epoch); the rerun continues with batch len(rows)
            on_main(ctx, _save_last, run, at, epoch, {"epoch_complete": False, "batch": len(rows), "order": order,
                                                      "rows": rows, "epoch_time_s": time.perf_counter() - t_epoch})
            break
        at.best = on_main(ctx, _end_of_epoch, run, at, epoch, rows, t_epoch, bar)  # rank 0 evaluates
        on_main(ctx, _save_last, run, at, epoch, {"epoch_complete": True})
        if os.environ.get(EXIT_HOOK_ENV) == str(epoch):
            os._exit(75)  # simulate a kill right after the checkpoint (no cleanup, no summary)
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    for h in run.grad_hooks:
        h.remove()
    return on_main(ctx, _write_summary, run, at, loop_start)  # rank 0 decodes the test split


# -- setting up ---------------------------------------------------------------------------------

def _configure_backend(cfg: TrainConfig, device: torch.device) -> None:
    """Threads on the CPU; cuDNN autotuning and TF32 matrix products on a GPU."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch; return the generator that orders the training data.

    Seeds come first: model initialisation draws from the torch RNG. Every rank seeds alike and
    draws alike (augmentation is drawn for the whole global batch), so rank 0's RNG state, which
    the checkpoint keeps, is every rank's."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _set_up(cfg: TrainConfig, out: Path, dataset: Any | None, data: PreparedData | None, device: torch.device,
            ctx: DistContext) -> _Run:
    """Seeds, data, model, optimizer and logs of a run (nothing read from ``out`` yet)."""
    _configure_backend(cfg, device)
    amp = amp_mode(cfg, device)
    data_rng = _seed_everything(cfg.seed)
    t_data = time.perf_counter()
    data = data if data is not None else prepare_data(cfg, device, dataset)
    data_time = time.perf_counter() - t_data
    _check_splits(cfg, data)
    tok, tr = data.tokenizer, data.splits["train"]
    mcfg = ModelConfig.preset(cfg.model, len(tok), image_size=cfg.image_size, pad_id=tok.pad_id,
                              bos_id=tok.bos_id, eos_id=tok.eos_id, **cfg.model_overrides)
    model = ReportGenerator(mcfg).to(device)
    broadcast_parameters(model, ctx)
    opt = build_optimizer(model, cfg)
    grad_hooks = sync_task_gradients(model, opt, ctx)
    n_batches = len(tr) // cfg.batch_size if len(tr) >= cfg.batch_size else 1
    return _Run(cfg=cfg, out=out, ctx=ctx, device=device, amp=amp, autocast=autocast_for(amp),
                scaler=grad_scaler_for(amp), data_rng=data_rng, data=data, data_time=data_time, mcfg=mcfg,
                model=model, opt=opt, grad_hooks=grad_hooks, base_lrs=[g["lr"] for g in opt.param_groups],
                weights=list(cfg.task_weights) + ([cfg.align_weight] if cfg.align_weight > 0 else []),
                pos_weight=class_pos_weight(tr.labels, cfg.cls_pos_weight_cap),
                target_tokens=(tr.targets != -100).sum(1).cpu().numpy() if ctx.active else None,
                n_batches=n_batches, total_steps=cfg.epochs * n_batches,
                steps_log=CsvLog(out / "steps.csv", STEP_COLUMNS), epoch_log=CsvLog(out / "metrics.csv", EPOCH_COLUMNS))


def _resume(run: _Run, resume: bool) -> _Position:
    """Where the loop starts: a fresh start, or the checkpoint's position with its states restored.

    Under torchrun rank 0 reads the checkpoint (on the CPU) and sends it to the others: no rank
    but 0 needs to see the output folder (several machines need not share a file system)."""
    ckpt = on_main(run.ctx, _start_or_resume, run.cfg, run.out, resume, "cpu" if run.ctx.active else run.device,
                   run.n_batches, run.total_steps, run.steps_log, run.epoch_log)
    return _restore(ckpt, run.model, run.opt, run.scaler, run.data_rng, run.device)


def _progress_bar(run: _Run, step: int) -> Any:
    """A tqdm bar over the run's steps on rank 0, or None (no progress, or no tqdm)."""
    if not (run.cfg.progress and run.ctx.is_main):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the GPU machine may lack tqdm: fall back to one line per epoch
        return None
    return tqdm(total=run.total_steps, initial=step, desc=f"{run.cfg.method} s{run.cfg.seed}", unit="step",
                leave=False)


# -- one epoch, one step --------------------------------------------------------------------------

def _epoch_order(run: _Run, at: _Position) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The epoch's data order and its step rows so far: drawn afresh, or those of a run cut inside it."""
    if at.cut_order is not None:  # resuming inside this epoch: its order was drawn before the cut
        order, rows = at.cut_order, at.cut_rows
        at.cut_order, at.cut_rows, at.cut_time = None, [], 0.0
        return order, rows
    return run.data_rng.permutation(len(run.data.splits["train"])), []


def _train_epoch(run: _Run, at: _Position, epoch: int, order: np.ndarray, rows: list[dict[str, Any]], bar: Any,
                 loop_start: float) -> bool:
    """Train the epoch's batches from ``len(rows)`` on, appending a row per step to ``rows``.
    True when the time limit (``max_train_seconds``) stopped it."""
    cfg = run.cfg
    for b in range(len(rows), run.n_batches):
        # the global batch is the one-process batch; under torchrun each rank takes a slice
        batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        row = _train_step(run, at.step, epoch, batch)
        rows.append(row)
        dt = row["step_time_s"]
        at.step += 1
        at.train_time += dt
        at.studies_seen += len(batch)
        at.step_times.append(dt)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, nll=f"{row['loss_report']:.3f}", cls=f"{row['loss_cls']:.3f}")
        # every rank stops after the same step (rank 0's clock alone would leave the others waiting)
        if (cfg.max_train_seconds is not None and at.step < run.total_steps
                and any_rank(run.ctx, time.perf_counter() - loop_start > cfg.max_train_seconds)):
            return True
    return False


def _train_step(run: _Run, step: int, epoch: int, batch: np.ndarray) -> dict[str, Any]:
    """One optimizer step on a global batch (this rank's shard of it); its ``steps.csv`` row."""
    cfg, ctx, tr = run.cfg, run.ctx, run.data.splits["train"]
    lo, hi = shard_bounds(len(batch), ctx)
    shard = (lo, hi, len(batch)) if ctx.active else None
    idx = torch.as_tensor(batch[lo:hi], device=run.device)
    t0 = time.perf_counter()
    f = lr_factor(step, cfg.warmup_steps, run.total_steps, cfg.min_lr_ratio)
    for g, lr0 in zip(run.opt.param_groups, run.base_lrs, strict=True):
        g["lr"] = lr0 * f
    images = augment(tr.images[idx], cfg, shard)
    with run.autocast():
        losses = run.model.losses(images, tr.tokens[idx], tr.targets[idx], tr.labels[idx],
                                  label_smoothing=cfg.label_smoothing, cls_pos_weight=run.pos_weight,
                                  prompt_labels=_prompt_labels(tr.labels[idx], cfg.prompt_teacher, shard))
    task_losses = [losses["report"], losses["cls"]] + ([losses["align"]] if cfg.align_weight > 0 else [])
    factors = shard_loss_factors(run.target_tokens[batch], lo, hi, ctx) if run.target_tokens is not None else None
    info = run.opt.step(_rescaled(task_losses, factors), task_weights=run.weights, scaler=run.scaler)
    if run.scaler is not None:
        run.scaler.update()
    lv = global_loss_values(task_losses, factors, ctx)  # syncs the device, so step_time is honest
    dt = time.perf_counter() - t0
    return _step_row(step, epoch, run.opt.param_groups[0]["lr"], lv, info, dt)


def _step_row(step: int, epoch: int, lr: float, lv: list[float], info: Any, dt: float) -> dict[str, Any]:
    """What ``steps.csv`` records of a step: losses, the gradients' inner product, cosine and norms."""
    inner = _info_pair(info, "inner_products")
    n0, n1 = _info_norms(info)
    return {"step": step, "epoch": epoch, "lr": lr,
            "loss_report": lv[0], "loss_cls": lv[1], "loss_align": lv[2] if len(lv) > 2 else "",
            "inner": inner, "cosine": _info_pair(info, "cosines"), "conflict": int(inner < 0),
            "norm_report": n0, "norm_cls": n1,
            "grad_norm": float(getattr(info, "grad_norm", None) or float("nan")),
            "clip_coef": float(getattr(info, "clip_coef", 1.0)), "skipped": int(bool(getattr(info, "skipped", False))),
            "step_time_s": dt}


# -- end of an epoch -------------------------------------------------------------------------------

def _save_last(run: _Run, at: _Position, epoch: int, position: dict[str, Any]) -> None:
    """(Rank 0.) ``last.pt``: everything an exact resume needs (chapter 6, section 6.7)."""
    atomic_torch_save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
                       "scheduler": {"kind": "warmup_cosine", "step": at.step, "total_steps": run.total_steps,
                                     "base_lrs": run.base_lrs, "position": position},
                       "rng": _rng_state(run.data_rng, run.device), "epoch": epoch, "step": at.step, "best": at.best,
                       "train_time": at.train_time, "studies_seen": at.studies_seen, "step_times": at.step_times,
                       "config": run.cfg.to_dict(), "model_config": run.mcfg.to_dict(),
                       "scaler": run.scaler.state_dict() if run.scaler is not None else None}, run.out / "last.pt")


def _end_of_epoch(run: _Run, at: _Position, epoch: int, rows: list[dict[str, Any]], t_epoch: float,
                  bar: Any) -> dict[str, Any]:
    """(Rank 0.) Validation: greedy decoding, rule-labeler clinical F1 (the selection metric),
    NLL; best.pt and the metrics.csv row. Returns the best-so-far selection state."""
    cfg, model, va = run.cfg, run.model, run.data.splits["val"]
    val_texts = generate_reports(model, va, run.data.tokenizer, cfg.eval_batch_size, beam_size=1,
                                 autocast=run.autocast, max_run=cfg.max_run, min_len=cfg.min_len)
    ce = clinical_scores(val_texts, va.reports)
    val_f1, val_nll = _macro_f1(ce), validation_nll(model, va, cfg.eval_batch_size, run.autocast)
    # the paper's rule: best validation clinical F1; ties (common early on, when every
    # report is the normal template) go to the lower validation NLL
    new_best = at.best
    is_best = (val_f1, -val_nll) > (at.best["val_macro_f1"], -at.best["val_nll"])
    if is_best:
        new_best = {"epoch": epoch, "val_macro_f1": val_f1, "val_nll": val_nll}
        atomic_torch_save({"model": model.state_dict(), "model_config": run.mcfg.to_dict(), "epoch": epoch},
                          run.out / "best.pt")
    run.epoch_log.append([_epoch_row(epoch, at.step, rows, ce, val_nll, is_best, t_epoch)])
    if bar is None and cfg.progress:
        print(f"[{cfg.method} s{cfg.seed}] epoch {epoch + 1}/{cfg.epochs} step {at.step} "
              f"val_macro_f1 {val_f1:.3f} val_nll {val_nll:.3f}", flush=True)
    return new_best


def _epoch_row(epoch: int, step: int, rows: list[dict[str, Any]], ce: dict[str, float], val_nll: float,
               is_best: bool, t_epoch: float) -> dict[str, Any]:
    """What ``metrics.csv`` records of an epoch: mean training losses, conflict, validation scores."""
    conf = [r["conflict"] for r in rows]
    cos = [r["cosine"] for r in rows if not math.isnan(r["cosine"])]
    return {"epoch": epoch, "step": step,
            "train_loss_report": float(np.mean([r["loss_report"] for r in rows])),
            "train_loss_cls": float(np.mean([r["loss_cls"] for r in rows])),
            "conflict_share": float(np.mean(conf)) if conf else float("nan"),
            "mean_cosine": float(np.mean(cos)) if cos else float("nan"),
            "val_nll": val_nll, "val_macro_f1": _macro_f1(ce),
            "val_example_f1": ce["f1_example"], "best": int(is_best),
            "epoch_time_s": time.perf_counter() - t_epoch}


# -- the end of the run ------------------------------------------------------------------------------

def _write_summary(run: _Run, at: _Position, loop_start: float) -> dict[str, Any]:
    """(Rank 0.) Decode the test split with the selected checkpoint; write and return ``summary.json``."""
    summary = _finish(run.cfg, run.out, run.model, run.data, at.best, run.autocast, run.device, run.mcfg)
    all_steps = _read_csv(run.out / "steps.csv")
    if [int(r["step"]) for r in all_steps] != list(range(at.step)):
        # the lock keeps other writers out; this catches anything that still got in
        raise ValueError(f"{run.out / 'steps.csv'} has {len(all_steps)} rows for {at.step} steps (another process "
                         f"wrote to {run.out}?); pass --no-resume to train again")
    summary.update(_run_facts(run, at, loop_start))
    summary.update(_conflict_statistics(all_steps))
    atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    return summary


def _run_facts(run: _Run, at: _Position, loop_start: float) -> dict[str, Any]:
    """The summary's record of the machine, the steps done and the timings."""
    warm = at.step_times[min(5, len(at.step_times) - 1):] if at.step_times else []  # skip warm-up steps
    return {
        "n_params": run.model.num_parameters(), "device": _device_name(run.device, run.ctx),
        "world_size": run.ctx.world, "torch": torch.__version__,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "threads": torch.get_num_threads(), "bf16": run.amp == "bf16", "amp": run.amp,
        "epochs_completed": at.step // run.n_batches, "steps": at.step, "steps_total": run.total_steps,
        # only the time limit ends a run before its last step (a kill leaves no summary)
        "stopped_early": at.step < run.total_steps,
        "train_time_s": at.train_time, "data_time_s": run.data_time, "loop_wall_s": time.perf_counter() - loop_start,
        "studies_per_s": at.studies_seen / at.train_time if at.train_time > 0 else float("nan"),
        "median_step_time_s": float(np.median(warm)) if len(warm) else float("nan"),
    }


def _conflict_statistics(all_steps: list[dict[str, str]]) -> dict[str, Any]:
    """The share of steps whose task gradients conflict, and their mean cosine, over ``steps.csv``."""
    inner = np.array([float(r["inner"]) for r in all_steps]) if all_steps else np.zeros(0)
    cosv = np.array([float(r["cosine"]) for r in all_steps]) if all_steps else np.zeros(0)
    finite = np.isfinite(inner)
    return {
        "conflict_share": float(np.mean(inner[finite] < 0)) if finite.any() else float("nan"),
        "mean_cosine": float(np.nanmean(cosv)) if np.isfinite(cosv).any() else float("nan"),
        "n_conflict_steps": int(finite.sum()),
    }


def _device_name(device: torch.device, ctx: DistContext) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()})"
    return f"{ctx.world} x {name}" if ctx.active else name


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
             for i, (sid, ref, rt, g) in enumerate(zip(te.ids, te.reports, refs_tok, gen, strict=False))]
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

