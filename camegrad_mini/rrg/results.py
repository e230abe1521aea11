"""Reading an exported run folder (``experiment export``): the tables and curves chapter 6 shows.

A folder holds one sub-folder per (method, seed) with ``summary.json``, ``metrics.csv`` (one row
per epoch), ``steps.csv`` (one row per step, with the report/classification inner product),
``generations_test.jsonl`` and ``metrics_test.json`` (from ``experiment posthoc``), plus
``results.json`` with the aggregate. Everything here is plain reading and averaging: the
statistics are :mod:`camegrad_mini.stats`'s paired t intervals, the metrics those of
:mod:`camegrad_mini.rrg.metrics`.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camegrad_mini.stats import TInterval, paired_difference

__all__ = ["RunFolder", "read_csv"]


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV log as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class RunFolder:
    """An exported experiment: ``runs`` (one summary row per run, post-hoc metrics merged in)
    and readers for each run's files. Raises ``FileNotFoundError`` naming the folder when it
    holds no ``results.json``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        res = self.path / "results.json"
        if not res.is_file():
            raise FileNotFoundError(f"{res} not found: export a run first (`python -m camegrad_mini.rrg.experiment "
                                    f"export RUNS {self.path}`)")
        self.results: dict[str, Any] = json.loads(res.read_text(encoding="utf-8"))
        self.runs: list[dict[str, Any]] = [r for r in self.results["runs"] if not r.get("stopped_early")]
        self.methods: list[str] = sorted({r["method"] for r in self.runs}, key=lambda m: (m != "ls", m))
        self.seeds: list[int] = sorted({r["seed"] for r in self.runs})

    # ---------------------------------------------------------------- per-run files
    def _run(self, method: str, seed: int) -> Path:
        for r in self.runs:
            if r["method"] == method and r["seed"] == seed:
                return self.path / r["run"]
        raise KeyError(f"no run of {method!r} with seed {seed} in {self.path}")

    def epochs(self, method: str, seed: int) -> list[dict[str, str]]:
        return read_csv(self._run(method, seed) / "metrics.csv")

    def steps(self, method: str, seed: int) -> list[dict[str, str]]:
        return read_csv(self._run(method, seed) / "steps.csv")

    def generations(self, method: str, seed: int) -> list[dict[str, Any]]:
        path = self._run(method, seed) / "generations_test.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def posthoc(self, method: str, seed: int) -> dict[str, Any]:
        return json.loads((self._run(method, seed) / "metrics_test.json").read_text(encoding="utf-8"))

    # ---------------------------------------------------------------- tables
    def values(self, method: str, metric: str) -> list[float]:
        """``metric`` of every seed of ``method``, in seed order."""
        by_seed = {r["seed"]: r for r in self.runs if r["method"] == method}
        return [float(by_seed[s][metric]) for s in self.seeds if s in by_seed]

    def paired(self, metric: str, method: str, baseline: str = "ls", level: float = 0.95) -> TInterval:
        """Paired difference ``method - baseline`` over the seeds both ran, with its t interval."""
        a = {r["seed"]: r[metric] for r in self.runs if r["method"] == method}
        b = {r["seed"]: r[metric] for r in self.runs if r["method"] == baseline}
        common = sorted(set(a) & set(b))
        return paired_difference([a[s] for s in common], [b[s] for s in common], level=level)

    def per_label(self, key: str) -> dict[str, dict[str, float]]:
        """Mean over seeds of a per-observation post-hoc metric (``"test_f1_per_label"``,
        ``"test_cls_auroc_per_label"``), by method then observation."""
        out: dict[str, dict[str, float]] = {}
        for m in self.methods:
            tables = [self.posthoc(m, s)[key] for s in self.seeds]
            out[m] = {o: float(np.nanmean([t[o] for t in tables])) if any(np.isfinite(t[o]) for t in tables)
                      else float("nan") for o in tables[0]}
        return out

    def support(self) -> dict[str, int]:
        """Test studies with each observation positive (or uncertain) in the reference."""
        return dict(self.posthoc(self.methods[0], self.seeds[0])["test_support_per_label"])

    def conflict_curve(self, method: str, seed: int, window: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Share of steps with a negative report/classification inner product, as a moving
        average over ``window`` steps: (step index at each window's end, share)."""
        c = np.array([float(r["conflict"]) for r in self.steps(method, seed)])
        if len(c) < window:
            raise ValueError(f"only {len(c)} steps, fewer than the window {window}")
        share = np.convolve(c, np.ones(window) / window, mode="valid")
        return np.arange(window, len(c) + 1), share

    def reports_of(self, study_ids: Sequence[str], seed: int | None = None) -> list[dict[str, Any]]:
        """For each id: the reference and every method's generated report (seed ``seed``, default
        the first), with the reference's positive observations."""
        from camegrad_mini.rrg.labeler import CHEXPERT_OBSERVATIONS, labels_to_binary

        seed = self.seeds[0] if seed is None else seed
        gens = {m: {g["id"]: g for g in self.generations(m, seed)} for m in self.methods}
        first = gens[self.methods[0]]
        out = []
        for sid in study_ids:
            if sid not in first:
                raise KeyError(f"study {sid} is not among the test generations of {self.path}")
            pos = labels_to_binary(np.asarray([first[sid]["ref_labels"]]))[0]
            out.append({"id": sid, "reference": first[sid]["reference"],
                         "findings": [o for o, p in zip(CHEXPERT_OBSERVATIONS, pos, strict=True) if p],
                         "generated": {m: gens[m][sid]["generated"] for m in self.methods}})
        return out
