"""The run's logs: ``steps.csv`` and ``metrics.csv`` as resumable append-only CSVs
(:class:`CsvLog`), what one step records of the optimizer's statistics (``_info_pair``,
``_info_norms``), and JSON for ``summary.json``.

Chapter 6, section 6.6 (*Learning curves and the conflict share*) reads these files.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from camegrad_mini.rrg.runfiles import atomic_write_text

__all__ = ["CsvLog", "STEP_COLUMNS", "EPOCH_COLUMNS"]

class CsvLog:
    """Append-only CSV; on resume, rows beyond the checkpoint are dropped (they will be redone).
    Chapter 6, section 6.6 (*Learning curves and the conflict share*) reads ``steps.csv`` and ``metrics.csv``."""

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
