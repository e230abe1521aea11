"""Methods x seeds experiments: run them, score them post hoc on a CPU, export small result files.

``python -m camegrad_mini.rrg.experiment run --config gpu_full --methods ls came --seeds 0 1 2 --out runs/grid``
    trains every (method, seed) into ``runs/grid/<method>_s<seed>/`` (see :mod:`camegrad_mini.rrg.train`),
    in this process (``--jobs 1``) or as concurrent subprocesses on one device (``--jobs N``).
    A (method, seed) listed twice, or a run folder another training is using, is refused up front.
``python -m camegrad_mini.rrg.experiment posthoc runs/grid``
    recomputes every metric from the saved generations: clinical efficacy with the rule labeler
    and, where pycocoevalcap is installed, BLEU-1..4, METEOR, ROUGE-L and CIDEr. This is how a
    GPU run is scored: the GPU machine has neither pycocoevalcap nor Java.
``python -m camegrad_mini.rrg.experiment export runs/grid results/iu_xray_gpu``
    copies only the small files (summaries, per-epoch curves, per-step conflict logs, generations;
    never checkpoints) and writes ``results.json`` with the aggregate table. The destination must
    lie outside the source.
``python -m camegrad_mini.rrg.experiment table results/iu_xray_gpu``
    prints the headline table.
``python -m camegrad_mini.rrg.experiment bench --config gpu_full --out bench.json``
    times one training step per method on this machine, including LS without the wrapper
    (one backward pass), so that the cost of per-task gradients is measured, not guessed.

The aggregate follows the design notes: mean and sample standard deviation over seeds per method,
and the *paired* differences to linear scalarization seed by seed (the same seed means the same
initialisation, data order and augmentation, so the pair isolates the optimizer), next to the
always-normal floor.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np

from camegrad_mini.rrg.runfiles import FolderInUse, atomic_write_text, folder_lock, holder, in_use_message
from camegrad_mini.stats import paired_difference

__all__ = ["bench", "run_grid", "run_pairs", "collect", "aggregate", "posthoc", "export", "load_results", "results_dir",
           "format_table", "run_name", "HEADLINE_METRICS", "main"]

# metric names as camegrad_mini.rrg.metrics returns them, prefixed with "test_"
HEADLINE_METRICS = ["test_f1_macro", "test_precision_macro", "test_recall_macro", "test_f1_macro_13", "test_f1_example",
                    "test_f1_micro", "test_BLEU_1", "test_BLEU_4", "test_METEOR", "test_ROUGE_L", "test_CIDEr",
                    "test_distinct_share", "test_n_triple_repeats", "test_cls_auroc_macro",
                    "conflict_share", "mean_cosine", "studies_per_s", "median_step_time_s"]
SMALL_FILES = ["summary.json", "config.json", "metrics.csv", "steps.csv", "generations_test.jsonl", "metrics_test.json"]


def run_name(method: str, seed: int) -> str:
    return f"{method}_s{seed}"


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------

def run_grid(config: str, methods: Sequence[str], seeds: Sequence[int], out_root: str | Path,
             overrides: dict[str, Any] | None = None, jobs: int = 1, dataset: Any | None = None,
             resume: bool = True, max_train_seconds: float | None = None,
             report: Callable[[str, int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train every (method, seed); return the run summaries in ``methods x seeds`` order.

    ``jobs == 1`` trains in this process and loads the data once for all runs (what the CPU
    chapter does). ``jobs > 1`` launches ``python -m camegrad_mini.rrg.train`` subprocesses, at
    most ``jobs`` at a time, each with its log in ``<run>/train.log`` (what the GPU script does:
    small models leave a big GPU idle, so several processes share it).

    ``report(method, seed, summary)``, when given, is called once per finished training, as it
    finishes (e.g. to print one line of progress; :func:`camegrad_mini.rrg.pipeline.run_chapter6`).
    """
    return run_pairs(config, [(m, s) for m in methods for s in seeds], out_root, overrides, jobs, dataset, resume,
                     max_train_seconds, report)


def run_pairs(config: str, pairs: Sequence[tuple[str, int]], out_root: str | Path,
              overrides: dict[str, Any] | None = None, jobs: int = 1, dataset: Any | None = None,
              resume: bool = True, max_train_seconds: float | None = None,
              report: Callable[[str, int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """:func:`run_grid` for an explicit list of ``(method, seed)`` pairs (e.g. the runs of a grid
    that are not finished yet, :mod:`camegrad_mini.rrg.pipeline`); summaries in the pairs' order."""
    from camegrad_mini.rrg import train as T

    overrides = dict(overrides or {})
    if max_train_seconds is not None:
        overrides["max_train_seconds"] = max_train_seconds
    pairs = [(str(m), int(s)) for m, s in pairs]
    for m, _ in pairs:
        if m not in T.METHODS:
            raise ValueError(f"method {m!r} is not one of {sorted(T.METHODS)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if not pairs:
        raise ValueError("no runs: give at least one method and one seed")
    # the same (method, seed) twice would train twice into one folder; deduplicating would hide
    # that the command asked for something odd, so say so instead
    dup = sorted({p for p in pairs if pairs.count(p) > 1})
    if dup:
        raise ValueError(f"duplicate (method, seed) pairs {', '.join(run_name(m, s) for m, s in dup)}: "
                         "each run has one folder; list every method and seed once")
    T.get_config(config, **overrides)  # validate once, before anything runs
    root = Path(out_root)
    with folder_lock(root, "experiment run"):
        # every run folder must be free before anything starts (a busy one's log would be truncated)
        for m, s in pairs:
            pid = holder(root / run_name(m, s))
            if pid is not None:
                raise FolderInUse(in_use_message(root / run_name(m, s), pid))
        return _run_pairs(T, config, pairs, root, overrides, jobs, dataset, resume, report)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _run_pairs(T: Any, config: str, pairs: list[tuple[str, int]], root: Path, overrides: dict[str, Any], jobs: int,
               dataset: Any | None, resume: bool,
               report: Callable[[str, int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    methods, seeds = [m for m, _ in pairs], [s for _, s in pairs]
    if jobs == 1:
        first = T.get_config(config, method=methods[0], seed=seeds[0], **overrides)
        device = T._resolve_device(first.device)
        data = T.prepare_data(first, device, dataset)
        summaries = []
        for m, s in pairs:
            summaries.append(T.train(T.get_config(config, method=m, seed=s, **overrides), root / run_name(m, s),
                                     resume=resume, data=data))
            if report is not None:
                report(m, s, summaries[-1])
        return summaries

    # subprocesses: warm the on-disk data cache once so that N processes do not all build it
    T.load_dataset(T.get_config(config, **overrides))
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    # share the CPU cores between the processes: oversubscribed OpenMP threads spin and can
    # slow small models down a hundredfold
    threads = overrides.get("num_threads") or max(1, (os.cpu_count() or 1) // min(jobs, len(pairs)))
    overrides["num_threads"] = threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    pending, failed = list(pairs), []
    running: list[tuple[tuple[str, int], subprocess.Popen[bytes], IO[str]]] = []
    while pending or running:
        while pending and len(running) < jobs:
            m, s = pending.pop(0)
            d = root / run_name(m, s)
            d.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "camegrad_mini.rrg.train", "--method", m, "--seed", str(s), "--config", config,
                   "--out", str(d), "--no-progress", "--overrides", json.dumps(overrides)]
            if not resume:
                cmd.append("--no-resume")
            log: IO[str] = open(d / "train.log", "a" if resume else "w")  # a resumed run keeps its earlier log
            running.append(((m, s), subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(0.5)
        for item in list(running):
            (m, s), proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    failed.append((m, s, proc.returncode))
                elif report is not None:
                    report(m, s, json.loads((root / run_name(m, s) / "summary.json").read_text()))
    if failed:
        why = "; ".join(f"{run_name(m, s)} (exit {rc}): {_last_line(root / run_name(m, s) / 'train.log')}"
                        for m, s, rc in failed)
        raise RuntimeError(f"{len(failed)} of {len(pairs)} runs failed, see <run>/train.log under {root}: {why}")
    return [json.loads((root / run_name(m, s) / "summary.json").read_text()) for m, s in pairs]


# ----------------------------------------------------------------------------------------------
# Scoring and aggregation
# ----------------------------------------------------------------------------------------------

_GENERATION_KEYS = ("generated", "reference")


def _read_generations(path: Path, expected: int | None = None) -> list[dict[str, Any]]:
    """The lines of a generations file, each checked: a cut or damaged file is an error naming the
    file and line, never a bare JSON message or a score of the part that survived."""
    redo = "rerun that training (or remove the run folder)"
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {no} is not valid JSON ({e.msg}): the file is truncated or "
                                 f"damaged; {redo}") from None
            if not isinstance(row, dict) or any(k not in row for k in _GENERATION_KEYS):
                raise ValueError(f"{path} line {no} lacks {list(_GENERATION_KEYS)}; {redo}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no generations; {redo}")
    if expected is not None and len(rows) != expected:
        raise ValueError(f"{path} has {len(rows)} generations but summary.json says n_test {expected} (truncated?); "
                         f"{redo}")
    return rows


def _expected_generations(run: Path) -> int | None:
    try:
        n = json.loads((run / "summary.json").read_text(encoding="utf-8")).get("n_test")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) else None


def posthoc(root: str | Path, text: bool = True, meteor: bool = True,
            runs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Score every run under ``root`` (or only the run folders named in ``runs``) from its
    ``generations_test.jsonl``; write ``metrics_test.json``.

    Clinical efficacy uses the rule labeler on both sides (pure Python). Text metrics need
    pycocoevalcap (and Java for METEOR); if it is missing they are skipped with a note in the file.
    """
    from camegrad_mini.rrg.metrics import classifier_auroc, clinical_efficacy, text_diversity

    out = []
    only = None if runs is None else set(runs)
    run_dirs = sorted(p.parent for p in Path(root).glob("*/generations_test.jsonl")
                      if only is None or p.parent.name in only)
    # read (and check) every file before scoring any: one damaged run stops the command, not half of it
    all_gens = [_read_generations(run / "generations_test.jsonl", _expected_generations(run)) for run in run_dirs]
    for run, gens in zip(run_dirs, all_gens, strict=True):
        gen, ref = [g["generated"] for g in gens], [g["reference"] for g in gens]
        ref_tok = [g.get("reference_tok", g["reference"]) for g in gens]
        ce = clinical_efficacy(ref, gen)
        m: dict[str, Any] = {f"test_{k}": float(v) for k, v in ce.items()
                             if isinstance(v, (int, float, np.floating, np.integer)) and k != "n"}
        m["test_f1_per_label"] = {o: v["f1"] for o, v in ce["per_label"].items()}
        m["test_support_per_label"] = {o: v["support"] for o, v in ce["per_label"].items()}
        m.update({f"test_{k}": float(v) for k, v in text_diversity(gen).items()})
        if all("cls_prob" in g for g in gens):  # what the classification head knows, beside the text
            au = classifier_auroc(ref, [g["cls_prob"] for g in gens])
            m["test_cls_auroc_macro"] = au["macro"]
            m["test_cls_auroc_per_label"] = au["per_label"]
        if text:
            try:
                from camegrad_mini.rrg.metrics import text_metrics

                tm = text_metrics(ref_tok, gen, meteor=meteor)
                m.update({f"test_{k}": float(v) for k, v in tm.items() if isinstance(v, (int, float, np.floating))})
                m["text_metrics_notes"] = tm.get("notes", [])
            except ImportError as e:
                m["text_metrics_notes"] = [f"skipped: {e}"]
        m["n_test"] = len(gens)
        atomic_write_text(run / "metrics_test.json", json.dumps(m, indent=2))
        out.append(m)
    return out


def collect(root: str | Path) -> list[dict[str, Any]]:
    """One flat row per run: the training summary, overridden by post-hoc metrics where present."""
    rows = []
    for s in sorted(Path(root).glob("*/summary.json")):
        row = {k: v for k, v in json.loads(s.read_text()).items() if not isinstance(v, (dict, list))}
        mt = s.parent / "metrics_test.json"
        if mt.exists():
            row.update({k: v for k, v in json.loads(mt.read_text()).items() if not isinstance(v, (dict, list))})
        row["run"] = s.parent.name
        rows.append(row)
    return rows


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def aggregate(rows: list[dict[str, Any]], metrics: Sequence[str] = HEADLINE_METRICS,
              baseline: str = "ls") -> dict[str, Any]:
    """Mean and sd per method over seeds, and paired differences (method - baseline, same seed).

    A run whose summary says ``stopped_early`` (cut by ``--max-train-seconds``) trained fewer
    steps than its peers: it is left out of the table and listed under ``"excluded"`` with the
    steps it did, so a partial run never enters a comparison unnoticed.
    """
    excluded = [{"run": r.get("run"), "method": r["method"], "seed": r["seed"],
                 "reason": f"stopped early after {r.get('steps', '?')} of {r.get('steps_total', '?')} steps"}
                for r in rows if r.get("stopped_early")]
    rows = [r for r in rows if not r.get("stopped_early")]
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != baseline, m))
    by = {(r["method"], r["seed"]): r for r in rows}
    table: dict[str, Any] = {}
    for m in methods:
        seeds = sorted(s for (mm, s) in by if mm == m)
        entry: dict[str, Any] = {"seeds": seeds}
        for k in metrics:
            vals = [by[(m, s)][k] for s in seeds
                    if isinstance(by[(m, s)].get(k), (int, float)) and not math.isnan(by[(m, s)][k])]
            if not vals:
                continue
            mean, sd = _mean_sd(vals)
            entry[k] = {"mean": mean, "sd": sd, "n": len(vals)}
            if m != baseline:
                common = [s for s in seeds if (baseline, s) in by and k in by[(baseline, s)] and k in by[(m, s)]]
                d = [by[(m, s)][k] - by[(baseline, s)][k] for s in common]
                if d:
                    dm, dsd = _mean_sd(d)
                    entry[k]["paired_diff"] = {"mean": dm, "sd": dsd, "n": len(d), "per_seed": d,
                                               "wins": int(sum(x > 0 for x in d))}
                    if len(d) >= 2 and all(math.isfinite(x) for x in d):
                        ci = paired_difference([by[(m, s)][k] for s in common], [by[(baseline, s)][k] for s in common])
                        entry[k]["paired_diff"].update({"se": ci.se, "df": ci.df, "t_crit": ci.t_crit,
                                                        "ci_lo": ci.lo, "ci_hi": ci.hi, "level": ci.level})
        table[m] = entry
    return {"baseline": baseline, "metrics": list(metrics), "methods": table, "excluded": excluded}


def always_normal(root: str | Path, text: bool = False, meteor: bool = False) -> dict[str, Any]:
    """The always-normal floor on the same test studies as the runs (from any run's generations):
    clinical efficacy always; text metrics only if asked (they need pycocoevalcap)."""
    from camegrad_mini.rrg.metrics import NORMAL_REPORT, clinical_efficacy

    gens = sorted(Path(root).glob("*/generations_test.jsonl"))
    if not gens:
        return {}
    rows = _read_generations(gens[0])
    refs = [g["reference"] for g in rows]
    floor: dict[str, Any] = {"report": NORMAL_REPORT}
    floor.update({f"test_{k}": float(v) for k, v in clinical_efficacy(refs, [NORMAL_REPORT] * len(refs)).items()
                  if isinstance(v, (int, float)) and k != "n"})
    if text:
        try:
            from camegrad_mini.rrg.metrics import text_metrics

            tm = text_metrics([g.get("reference_tok", g["reference"]) for g in rows], [NORMAL_REPORT] * len(refs),
                              meteor=meteor)
            floor.update({f"test_{k}": float(v) for k, v in tm.items() if isinstance(v, (int, float))})
        except ImportError:
            pass
    return floor


def export(root: str | Path, dest: str | Path, meta: dict[str, Any] | None = None,
           runs: Sequence[str] | None = None) -> Path:
    """Copy the small result files of every run (or of the run folders named in ``runs``) to
    ``dest`` and write ``dest/results.json``."""
    root, dest = Path(root), Path(dest)
    src, dst = root.resolve(), dest.resolve()
    if dst == src or src in dst.parents:
        where = "is the source folder" if dst == src else "lies inside the source folder"
        raise ValueError(f"export destination {dest} {where} {root}; choose a folder outside it "
                         "(nothing was written)")
    only = None if runs is None else set(runs)
    run_dirs = sorted(p.parent for p in root.glob("*/summary.json") if only is None or p.parent.name in only)
    if not run_dirs:
        raise FileNotFoundError(f"no runs under {root} (no {root}/*/summary.json); check the folder "
                                "(`experiment run` writes it)")
    dest.mkdir(parents=True, exist_ok=True)
    for run in run_dirs:
        (dest / run.name).mkdir(exist_ok=True)
        for name in SMALL_FILES:
            if (run / name).exists():
                shutil.copy2(run / name, dest / run.name / name)
    # the always-normal floor with its text metrics too (skipped where pycocoevalcap is missing)
    write_results(dest, meta, text=True, meteor=False)
    return dest


def write_results(dest: str | Path, meta: dict[str, Any] | None = None, text: bool = False,
                  meteor: bool = False) -> dict[str, Any]:
    """Aggregate the runs under ``dest`` into ``dest/results.json`` (with the always-normal floor)."""
    dest = Path(dest)
    rows = collect(dest)
    res: dict[str, Any] = {"meta": dict(meta or {}), "aggregate": aggregate(rows),
           "always_normal": always_normal(dest, text=text, meteor=meteor), "runs": rows}
    if (dest / "bench.json").is_file():
        res["bench"] = json.loads((dest / "bench.json").read_text(encoding="utf-8"))
    if rows:
        r0 = rows[0]
        res["meta"].setdefault("device", r0.get("device"))
        res["meta"].setdefault("date_utc", r0.get("date_utc"))
        res["meta"].setdefault("images_are_standins", r0.get("images_are_standins"))
    atomic_write_text(dest / "results.json", json.dumps(res, indent=2))
    return res


def results_dir(name: str = "iu_xray_gpu") -> Path | None:
    """Where committed results named ``name`` live: ``$CAMEGRAD_RESULTS/<name>`` or the repository's
    ``results/<name>`` next to the package (a clone, or an editable install). None when absent,
    e.g. in Colab, where only the package is installed."""
    candidates = []
    if os.environ.get("CAMEGRAD_RESULTS"):
        candidates.append(Path(os.environ["CAMEGRAD_RESULTS"]) / name)
    candidates.append(Path(__file__).resolve().parents[2] / "results" / name)
    for c in candidates:
        if (c / "results.json").is_file():
            return c
    return None


def load_results(dest: str | Path) -> dict[str, Any] | None:
    """``results.json`` of an exported experiment, or None when none has been committed."""
    p = Path(dest) / "results.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def format_table(res: dict[str, Any], metrics: Sequence[str] = ("test_f1_macro", "test_f1_example", "test_BLEU_4",
                                                               "conflict_share"), digits: int = 3) -> str:
    """Plain-text headline table: mean ± sd per method, paired difference to the baseline."""
    agg = res["aggregate"]
    head = f"{'method':<8}" + "".join(f"{m.replace('test_', ''):>26}" for m in metrics)
    lines = [head]
    for meth, e in agg["methods"].items():
        cells = []
        for k in metrics:
            if k not in e:
                cells.append(f"{'n/a':>26}")
                continue
            s = f"{e[k]['mean']:.{digits}f} ± {e[k]['sd']:.{digits}f}"
            if "paired_diff" in e[k]:
                s += f" ({e[k]['paired_diff']['mean']:+.{digits}f})"
            cells.append(f"{s:>26}")
        lines.append(f"{meth:<8}" + "".join(cells))
    floor = res.get("always_normal") or {}
    if floor:
        lines.append(f"{'normal':<8}"
                     + "".join(f"{(f'{floor[k]:.{digits}f}' if k in floor else '–'):>26}" for k in metrics))
    for x in agg.get("excluded", []):
        lines.append(f"left out: {x['run']} ({x['reason']}; rerun it to finish)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Step-time benchmark
# ----------------------------------------------------------------------------------------------

def bench(config: str, methods: Sequence[str] = ("ls_plain", "ls", "came", "pcgrad", "cagrad"), steps: int = 30,
          warmup: int = 5, overrides: dict[str, Any] | None = None, dataset: Any | None = None) -> dict[str, Any]:
    """Median training-step time per method on this machine, methods interleaved step by step.

    ``ls_plain`` is linear scalarization *without* the wrapper: one backward pass of the weighted
    loss sum, the same clip, AdamW. Every wrapped method (``ls`` included) does one backward pass
    per task, so ``came`` / ``ls_plain`` is the real price of per-task gradients, and ``came`` /
    ``ls`` the price of the aggregation itself. Same data, batches and model initialisation for
    every method; CUDA is synchronised around each step.
    """
    import torch

    from camegrad_mini.rrg import train as T
    from camegrad_mini.rrg.model import ModelConfig, ReportGenerator

    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    over = {**(overrides or {}), "progress": False}
    cfg = T.get_config(config, **over)
    device = T._resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    data = T.prepare_data(cfg, device, dataset)
    tr, tok = data.splits["train"], data.tokenizer
    use_bf16 = cfg.bf16 and device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict[str, Any] = {"config": config, "batch_size": cfg.batch_size, "steps": steps, "warmup": warmup,
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "threads": torch.get_num_threads(), "bf16": use_bf16, "methods": {}}
    # Build every method's model and optimizer first, then time them *interleaved*: each round
    # runs one step of every method (in a rotating order), so a load spike or clock change on a
    # shared machine hits all methods alike instead of one method's whole block.
    runs = {}
    for m in methods:
        torch.manual_seed(0)
        mcfg = ModelConfig.preset(cfg.model, len(tok), image_size=cfg.image_size, pad_id=tok.pad_id, bos_id=tok.bos_id,
                                  eos_id=tok.eos_id, **cfg.model_overrides)
        model = ReportGenerator(mcfg).to(device)
        mc = T.get_config(config, **{**over, "method": "ls" if m == "ls_plain" else m})
        runs[m] = (model, mc, T.build_optimizer(model, mc))
    times: dict[str, list[float]] = {m: [] for m in methods}
    g = torch.Generator().manual_seed(0)
    order = list(methods)
    for i in range(warmup + steps):
        idx = torch.randperm(len(tr), generator=g)[: cfg.batch_size].to(device)  # same batch for all
        order = order[1:] + order[:1]
        for m in order:
            model, mc, opt = runs[m]
            sync()
            t0 = time.perf_counter()
            images = T.augment(tr.images[idx], mc)
            with (torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else _null()):
                losses = model.losses(images, tr.tokens[idx], tr.targets[idx], tr.labels[idx],
                                      label_smoothing=mc.label_smoothing)
            if m == "ls_plain":
                opt.optimizer.zero_grad(set_to_none=True)
                (mc.task_weights[0] * losses["report"] + mc.task_weights[1] * losses["cls"]).backward()
                if mc.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), mc.max_grad_norm)
                opt.optimizer.step()
            else:
                opt.step([losses["report"], losses["cls"]], task_weights=list(mc.task_weights))
            sync()
            if i >= warmup:
                times[m].append(time.perf_counter() - t0)
    for m in methods:
        med = float(np.median(times[m]))
        out["methods"][m] = {"median_step_s": med, "studies_per_s": cfg.batch_size / med}
    ref = out["methods"].get("ls_plain") or out["methods"].get("ls")
    for v in out["methods"].values():
        v["time_vs_ls_plain"] = v["median_step_s"] / ref["median_step_s"] if ref else float("nan")
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m camegrad_mini.rrg.experiment", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train methods x seeds")
    r.add_argument("--config", required=True)
    r.add_argument("--methods", nargs="+", default=["ls", "came"])
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--out", required=True)
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--overrides", default="{}", help="JSON dict of TrainConfig fields")
    r.add_argument("--max-train-seconds", type=float, default=None)
    r.add_argument("--no-resume", action="store_true")
    ph = sub.add_parser("posthoc", help="score saved generations on this machine")
    ph.add_argument("root")
    ph.add_argument("--no-text", action="store_true")
    ph.add_argument("--no-meteor", action="store_true")
    ex = sub.add_parser("export", help="copy small result files and write results.json")
    ex.add_argument("root")
    ex.add_argument("dest")
    ex.add_argument("--meta", default="{}", help="JSON dict added to results.json (e.g. wall time)")
    bp = sub.add_parser("bench", help="median step time per method on this machine")
    bp.add_argument("--config", required=True)
    bp.add_argument("--methods", nargs="+", default=["ls_plain", "ls", "came", "pcgrad", "cagrad"])
    bp.add_argument("--steps", type=int, default=30)
    bp.add_argument("--warmup", type=int, default=5)
    bp.add_argument("--overrides", default="{}")
    bp.add_argument("--out", default=None, help="write the result as JSON here")
    tb = sub.add_parser("table", help="print the headline table of an exported folder")
    tb.add_argument("dest")
    a = p.parse_args(argv)
    try:
        if a.cmd == "run":
            rows = run_grid(a.config, a.methods, a.seeds, a.out, json.loads(a.overrides), jobs=a.jobs,
                            resume=not a.no_resume, max_train_seconds=a.max_train_seconds)
            early = [run_name(r["method"], r["seed"]) for r in rows if r.get("stopped_early")]
            print(f"{len(rows)} runs finished under {a.out}")
            if early:
                print(f"warning: {len(early)} stopped early by --max-train-seconds ({', '.join(early)}; "
                      "stopped_early in their summary.json); rerun without --no-resume to continue them",
                      file=sys.stderr)
        elif a.cmd == "posthoc":
            n = len(posthoc(a.root, text=not a.no_text, meteor=not a.no_meteor))
            write_results(a.root, (load_results(a.root) or {}).get("meta"), text=not a.no_text,
                          meteor=not a.no_text and not a.no_meteor)
            print(f"scored {n} runs under {a.root}")
        elif a.cmd == "export":
            export(a.root, a.dest, json.loads(a.meta))
            print(f"exported to {a.dest}")
        elif a.cmd == "bench":
            b = bench(a.config, a.methods, a.steps, a.warmup, json.loads(a.overrides))
            text = json.dumps(b, indent=2)
            if a.out:
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(text, encoding="utf-8")
            for m, v in b["methods"].items():
                print(f"{m:<9} {1000 * v['median_step_s']:8.2f} ms/step {v['studies_per_s']:9.1f} studies/s "
                      f"x{v['time_vs_ls_plain']:.2f} vs ls_plain ({b['device']})")
        elif a.cmd == "table":
            res = load_results(a.dest)
            if res is None:
                raise FileNotFoundError(f"no results.json under {a.dest}")
            print(format_table(res))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine: disk full, permissions
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
