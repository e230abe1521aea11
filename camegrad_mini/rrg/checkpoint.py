"""Checkpoints and exact resume: atomic ``torch.save`` with a sha256 beside it
(:func:`atomic_torch_save`, :func:`load_checkpoint`), the RNG states, and where a run restarts
(``_start_or_resume``, ``_restore``).

Chapter 6, section 6.7 (*Interruptions and exact resume*): on a CPU a resumed run ends with the
parameters of an uninterrupted one, bit for bit; a damaged checkpoint is refused, never resumed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from camegrad_mini.rrg.config import _RESUMABLE_CHANGES, TrainConfig
from camegrad_mini.rrg.model import ReportGenerator
from camegrad_mini.rrg.runfiles import atomic_write_bytes, atomic_write_text
from camegrad_mini.rrg.runlog import CsvLog

__all__ = ["CheckpointError", "atomic_torch_save", "load_checkpoint"]

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

    Chapter 6, section 6.7 (*Interruptions and exact resume*).
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
    (never a raw ``torch.load`` traceback, never a silent resume from changed bytes).
    Chapter 6, section 6.7 (*Interruptions and exact resume*)."""
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
    # RNG states are CPU byte tensors; load_checkpoint(map_location=cuda) moves every tensor to the
    # GPU, and set_rng_state then refuses them ("must be a torch.ByteTensor"), so bring them back.
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        if state.get("cuda_device") is not None and device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_device"].cpu(), device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    data_rng.bit_generator.state = state["data_order"]


_CKPT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "best", "train_time", "studies_seen",
              "step_times", "config", "model_config")
# what a fresh start removes: results of an earlier run that would otherwise survive next to the new one
_STALE = ("last.pt", "last.pt.sha256", "best.pt", "best.pt.sha256", "summary.json", "generations_test.jsonl",
          "generations_val.jsonl", "metrics_test.json")


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
