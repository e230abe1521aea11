"""Measure what a workshop block costs in compute: each chapter run top to bottom, and each exercise's
solution cells, on this machine. Writes results/workshop_timings.json and prints the markdown table
that book/workshop.md shows.

Usage (from the repository root, with the book's venv):
    .venv/bin/python tools/workshop_timings.py                 # execute every chapter, write the JSON, print the table
    .venv/bin/python tools/workshop_timings.py --only 01_multitask_conflict
    .venv/bin/python tools/workshop_timings.py --print-only    # reprint the table from the committed JSON

What is measured and what is not:
* measured: the wall time of executing each chapter with nbclient in a fresh kernel (as nbval and
  `make refresh` run it: the chapter's folder as working directory), kernel start-up included, and
  the time of every code cell; an exercise's compute time is the sum of its solution cells' times.
  Notebooks are executed in memory and never written.
* not measured: how long people read and think. GUIDE below holds the workshop guide's own
  estimate per exercise, written into the JSON under "estimate_min" and labelled as an estimate.
  The chapter's own "Time" statement is quoted as the chapter gives it.

Exercises are the chapters' sphinx-exercise blocks, keyed by their labels (numbers as the book
prints them); a code cell belongs to the exercise whose solution (or statement) precedes it. If a
chapter's exercises no longer match GUIDE, the script says so and still reports the measured times.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["01_multitask_conflict", "02_sgd_as_sde", "02b_sde_appendix", "03_double_dilemma",
            "04_came_grad", "05_test_problems", "06_report_generation"]
OUT_JSON = ROOT / "results" / "workshop_timings.json"

# The guide's estimate of reading and thinking time per exercise, in minutes (NOT measured), keyed by the
# exercise's label in the chapter: a short label and the estimate. Pen-and-paper exercises get more;
# the chapters' own totals bound each block.
GUIDE = {
    "01_multitask_conflict": {"ex-conflict-cone-hull": ("cone and hull, pen and paper", 20),
                              "ex-conflict-ls-disk": ("where LS increases the report loss", 25),
                              "ex-conflict-conditioning": ("conditioning and the weight dial", 20),
                              "ex-conflict-sweep-resolution": ("how finely must the weights be swept?", 35)},
    "02_sgd_as_sde": {"ex-sde-ou-within-10": ("two readings of 'within 10%' (sympy)", 10),
                      "ex-sde-sme-quartic": ("SME correction for x^4/4 (sympy)", 5),
                      "ex-sde-flat-ten-times": ("Kramers: when does the flat well hold 10x longer?", 10),
                      "ex-sde-double-eta-b": ("double eta and B: what changes?", 5)},
    "02b_sde_appendix": {"ex-gibbs-mass-ratio": ("Laplace's method on the Gibbs masses", 15)},
    "03_double_dilemma": {"ex-dilemma-three-tasks": ("more than two tasks", 10),
                          "ex-dilemma-official-weights": ("the official weights (1, 4) at 120 degrees", 10),
                          "ex-dilemma-escape-threshold": ("predict an escape threshold", 15),
                          "ex-dilemma-hidden-conflict": ("when does measured energy hide conflict?", 10),
                          "ex-dilemma-diffusion-share": ("how much diffusion does the energy carry?", 10)},
    "04_came_grad": {"ex-came-rho0": ("rho -> 0", 10),
                     "ex-came-ball-size": ("how big must the ball be?", 15),
                     "ex-came-adam-kappa": ("when Adam notices kappa", 20),
                     "ex-came-s3-onset": ("the onset of S3's conflict", 15)},
    "05_test_problems": {"ex-problems-equal-weights": ("equal weights", 15),
                         "ex-problems-step-length": ("how much longer is CAME-Grad's step?", 20),
                         "ex-problems-vanishing-update": ("when can the update vanish?", 10),
                         "ex-problems-seeds": ("how many seeds?", 15)},
    "06_report_generation": {"ex-rrg-third-task": ("a third task (alignment head; its solution code is in the text, "
                                                   "not timed)", 20),
                             "ex-rrg-kappa-adamw": ("kappa under AdamW", 20),
                             "ex-rrg-floor-f1": ("macro-F1 of the floor", 10)},
}


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def parse_chapter(nb, numbers: dict[str, str] | None = None) -> dict:
    """Title, the chapter's own time statement, and the exercises with their solution cells.

    Exercises are sphinx-exercise blocks (``:::{exercise}`` with a ``:label:``); a code cell belongs
    to the exercise whose solution (``solution`` / ``solution-start``) or statement precedes it, until
    a ``solution-end``. ``numbers`` maps labels to the numbers the book prints ("4.1"), as
    tools/reader_edition.py computes them; without it the label stands in for the number."""
    numbers = numbers or {}
    cells = nb["cells"]
    title, time_text = None, None
    exercises: dict[str, dict] = {}
    current = None
    for i, c in enumerate(cells):
        src = _source(c)
        if c["cell_type"] == "markdown":
            if title is None:
                m = re.search(r"^# (.+)$", src, re.M)
                title = m.group(1).strip() if m else None
            if time_text is None:
                m = re.search(r"\*\*Time[.:]\*\*\s*(.+?)(?=\n\s*\n|\n\*\*|\n:::|$)", src, re.S)
                if m:
                    time_text = " ".join(m.group(1).split()).split(" Notation")[0]
            if ":::{solution-end}" in src:
                current = None
            found = re.findall(r"^:::\{exercise\}.*\n(?::[\w-]+:.*\n)*?:label: (\S+)", src, re.M)
            for label in found:
                exercises.setdefault(label, {"number": numbers.get(label, label), "cells": []})
            sol = re.findall(r"^:::\{solution(?:-start)?\} (\S+)", src, re.M)
            if sol:
                current = sol[-1]
            elif found:
                current = found[-1]
        elif c["cell_type"] == "code" and current is not None:
            exercises.setdefault(current, {"number": numbers.get(current, current), "cells": []})["cells"].append(i)
    return {"title": title, "time_text": time_text, "exercises": exercises}


def exercise_numbers() -> dict[str, str]:
    """Label -> the number the book prints, from tools/reader_edition.py's numbering of the book."""
    sys.path.insert(0, str(ROOT / "tools"))
    import reader_edition
    book = reader_edition.read_book()
    return {label: t.number for label, t in book.targets.items() if t.kind == "exercise"}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def time_chapter(name: str, timeout: int = 900) -> dict:
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "chapters" / f"{name}.ipynb"
    raw = path.read_bytes()
    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    info = parse_chapter(nb, exercise_numbers())
    cell_s: dict[int, float] = {}
    t0: dict[int, float] = {}

    def on_execute(cell, cell_index):
        t0[cell_index] = time.perf_counter()

    def on_executed(cell, cell_index, execute_reply):
        cell_s[cell_index] = time.perf_counter() - t0.pop(cell_index)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            on_cell_execute=on_execute, on_cell_executed=on_executed)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    guide = GUIDE.get(name, {})
    exercises = []
    for ex_label, ex in info["exercises"].items():
        label, est = guide.get(ex_label, (None, None))
        exercises.append({"id": ex["number"], "book_label": ex_label, "label": label, "solution_cells": ex["cells"],
                          "solution_compute_s": round(sum(cell_s.get(i, 0.0) for i in ex["cells"]), 2),
                          "estimate_min": est})
    mismatch = sorted(set(guide) ^ set(info["exercises"]))  # labels
    slowest = sorted(cell_s.items(), key=lambda kv: -kv[1])[:3]
    return {"notebook": f"chapters/{name}.ipynb", "sha256": hashlib.sha256(raw).hexdigest(),
            "title": info["title"], "chapter_time_statement": info["time_text"],
            "execute_wall_s": round(wall, 1), "code_cells_s": round(sum(cell_s.values()), 1),
            "slowest_cells": [{"cell": i, "s": round(s, 1)} for i, s in slowest],
            "load_average_1min": [round(load_before, 2), round(load_after, 2)],
            "exercises": exercises, "exercises_not_in_guide_or_missing": mismatch}


def fmt_s(s: float) -> str:
    if s < 0.05:
        return "< 0.1 s"
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [f"Measured on {m['cores']}-core {m['cpu']}, {m['memory_gib']:.0f} GiB, Python {m['python']}, "
             f"torch {m['torch']}, {data['measured_at'][:10]} (commit {str(data['git_commit'])[:7]}). "
             "Compute times are measured; reading and thinking times are the guide's estimates.", "",
             "| block | exercise | solution cells: compute (measured) | reading and thinking (estimate) |",
             "|---|---|---|---|"]
    for ch in data["chapters"]:
        name = Path(ch["notebook"]).stem
        lines.append(f"| **{name}** | whole chapter, top to bottom | {fmt_s(ch['execute_wall_s'])} "
                     f"(kernel start included) | the chapter says: {ch['chapter_time_statement'] or 'not stated'} |")
        for ex in ch["exercises"]:
            comp = fmt_s(ex["solution_compute_s"]) if ex["solution_cells"] else "no solution cell"
            est = f"about {ex['estimate_min']} min" if ex["estimate_min"] else "no estimate"
            label = GUIDE.get(name, {}).get(ex.get("book_label", ""), (ex["label"],))[0]  # the guide's current wording
            lines.append(f"| | {ex['id']}: {label or ''} | {comp} | {est} |")
        if ch["exercises_not_in_guide_or_missing"]:
            lines.append(f"| | (exercises changed since the guide was written: "
                         f"{', '.join(ch['exercises_not_in_guide_or_missing'])}) | | |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="chapter stems to time (default: all)")
    ap.add_argument("--print-only", action="store_true", help="print the table from the committed JSON")
    ap.add_argument("--json", type=Path, default=OUT_JSON)
    ap.add_argument("--cell-timeout", type=int, default=600, help="seconds a cell may run (default 600)")
    args = ap.parse_args(argv)
    if args.print_only:
        print(markdown(json.loads(args.json.read_text(encoding="utf-8"))))
        return 0
    # --only updates those chapters in the existing JSON and keeps the others
    previous = json.loads(args.json.read_text(encoding="utf-8")) if args.json.exists() and args.only else None
    chapters = {Path(c["notebook"]).stem: c for c in (previous or {}).get("chapters", [])}
    for name in args.only or CHAPTERS:
        print(f"executing chapters/{name}.ipynb ...", file=sys.stderr, flush=True)
        chapters[name] = time_chapter(name, timeout=args.cell_timeout)
        print(f"  {chapters[name]['execute_wall_s']} s", file=sys.stderr, flush=True)
        data = _data(chapters)  # written after every chapter, so that an interrupted run keeps what it measured
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(_data(chapters)))
    return 0


def _data(chapters: dict) -> dict:
    return {"what": "compute time of each chapter and of each exercise's solution cells (measured), with the "
                    "workshop guide's reading/thinking estimates (estimate_min, NOT measured)",
            "regenerate": ".venv/bin/python tools/workshop_timings.py",
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "machine": machine(),
            "note": "notebooks executed in memory with nbclient (fresh kernel, chapter folder as cwd); "
                    "load_average_1min is before/after each chapter: other processes share the cores",
            "chapters": [chapters[n] for n in CHAPTERS if n in chapters]}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
