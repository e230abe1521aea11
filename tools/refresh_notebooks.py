"""Re-execute chapters in place and store their outputs and widget state.

Usage: python tools/refresh_notebooks.py chapters/01_multitask_conflict.ipynb [...]

Why nbclient and not "save from JupyterLab": JupyterLab does not save widget state by default,
and the site (execute_notebooks: off) renders exactly what is stored here. Each notebook runs in
a fresh kernel of this interpreter with its own folder as working directory, as nbval runs it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from canonical_outputs import canonicalize  # noqa: E402  (tools/ is not a package)


def refresh(path: Path, timeout: int = 600) -> float:
    nb = nbformat.read(path, as_version=4)
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
    canonicalize(nb, path.stem)  # random ids and stream fragments: an unchanged chapter gives no diff
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(Path("chapters").glob("*.ipynb"))
    for p in paths:
        print(f"executing {p} ...", flush=True)
        print(f"  done in {refresh(p):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
