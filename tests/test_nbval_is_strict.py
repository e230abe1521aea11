"""Prove that the project's pytest configuration really compares stored outputs.

A mis-typed flag or a sanitize rule that is too broad would let every chapter pass whatever it
prints. Here a small notebook is executed, then run through pytest with the project's own
configuration twice: unchanged (must pass) and with one stored output altered (must fail).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("strict")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np\nprint(f'{np.sqrt(2.0):.4f}')"),
        nbformat.v4.new_code_cell("object()  # a memory address: the sanitize file must hide it"),
    ]
    NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    path = folder / "probe.ipynb"
    nbformat.write(nb, path)
    return path


def _run_pytest(path: Path) -> subprocess.CompletedProcess:
    # -c pyproject.toml: exactly the addopts (strict --nbval, sanitize file) that `make test` uses.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(ROOT), str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_unchanged_outputs_pass(executed):
    result = _run_pytest(executed)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 passed" in result.stdout


def test_a_changed_stored_output_fails(executed, tmp_path):
    nb = nbformat.read(executed, as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "1.4142\n"
    nb.cells[0].outputs[0]["text"] = "1.4143\n"
    altered = tmp_path / "altered.ipynb"
    nbformat.write(nb, altered)
    result = _run_pytest(altered)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "1 failed, 1 passed" in result.stdout
