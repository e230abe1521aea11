"""Re-execute chapters in place and store their outputs and widget state.

Usage: python tools/refresh_notebooks.py [--timings] chapters/01_multitask_conflict.ipynb [...]

Why nbclient and not "save from JupyterLab": JupyterLab does not save widget state by default,
and the site (execute_notebooks: off) renders exactly what is stored here. Each notebook runs in
a fresh kernel of this interpreter with its own folder as working directory, as nbval runs it.

A refresh of an unchanged chapter leaves ``git status`` clean. Run-to-run noise (widget and
animation ids, how printed text was cut into pieces) is made canonical
(``tools/canonical_outputs.py``). Machine-dependent cells, the ones nbval does not compare (tag
``nbval-ignore-output``: timings, speeds, a live run's date, a trained model's last digits),
**keep their stored output when their source has not changed**: their output changes only when
the maintainer asks for it with ``--timings`` (``make refresh NB=... TIMINGS=1``), e.g. after
a change to the code such a cell runs. The refresh names the kept cells whose fresh output
differed, so nothing changes silently. An edited cell, or one never stored by this tool, always
gets its fresh output; cells that display widgets always do (see ``canonical_outputs``).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from canonical_outputs import canonicalize, keep_ignored_outputs  # noqa: E402  (tools/ is not a package)


def refresh(path: Path, timeout: int = 600, timings: bool = False) -> tuple[float, list[int]]:
    """Execute ``path`` and store it; return the run time and the kept-but-different code cells."""
    nb = nbformat.read(path, as_version=4)
    stored = [copy.deepcopy(c) for c in nb.cells if c.cell_type == "code"]
    nb.metadata.pop("widgets", None)  # drop stale widget state; execution stores fresh state
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
        record_timing=False,  # keeps timestamps out of the committed JSON
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    kept = keep_ignored_outputs(nb, stored, fresh=timings)  # machine-dependent cells: only on request
    canonicalize(nb, path.stem)  # random ids and stream fragments: an unchanged chapter gives no diff
    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return elapsed, kept


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: chapters/*.ipynb")
    parser.add_argument("--timings", action="store_true",
                        help="also store fresh outputs of nbval-ignore-output cells (timings, machine-dependent "
                             "numbers) whose source did not change; by default they keep their stored output")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(Path("chapters").glob("*.ipynb"))
    for p in paths:
        print(f"executing {p} ...", flush=True)
        elapsed, kept = refresh(p, timings=args.timings)
        print(f"  done in {elapsed:.1f} s", flush=True)
        if kept:
            print(f"  kept the stored output of {len(kept)} nbval-ignore-output cell(s) whose fresh output differs "
                  f"(code cells {', '.join(str(k + 1) for k in kept)}); --timings (TIMINGS=1) stores the fresh ones",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
