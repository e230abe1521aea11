"""Checks that keep strict nbval meaningful and the chapters fit for strangers.

nbval never compares a cell without an execution count, so an unexecuted or stripped notebook
would pass silently; these tests make that impossible.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from chapter_cells import colab_cell_source  # noqa: E402

CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
LOCAL_PATH = re.compile(r"(/work/|/root/|/home/[a-z]|/tmp/[A-Za-z]|C:\\\\Users)")
MAX_BYTES = 3_000_000


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def test_there_are_chapters():
    assert CHAPTERS, "no chapters found under chapters/"


def test_toc_lists_every_chapter_and_nothing_missing():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    listed = {f for f in files if f.startswith("chapters/")}
    present = {f"chapters/{p.stem}" for p in CHAPTERS}
    assert listed == present
    for f in files:
        assert any((ROOT / f).with_suffix(s).exists() for s in (".md", ".ipynb")), f


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
class TestChapter:
    def test_name(self, path):
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name)

    def test_every_code_cell_executed_in_order(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        counts = [c["execution_count"] for c in _code_cells(nb)]
        assert None not in counts, "unexecuted code cells: nbval would silently skip them"
        assert counts == list(range(1, len(counts) + 1)), "cells were not run top to bottom in one kernel"

    def test_no_error_outputs(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in _code_cells(nb):
            if "raises-exception" in _tags(cell):
                continue
            for out in cell["outputs"]:
                assert out["output_type"] != "error", "".join(cell["source"])[:120]
                if out["output_type"] == "stream" and out["name"] == "stderr":
                    pytest.fail(f"stderr output stored (a warning?): {''.join(out['text'])[:200]}")

    def test_no_local_paths(self, path):
        text = path.read_text(encoding="utf-8")
        m = LOCAL_PATH.search(text)
        assert m is None, f"a local machine path is stored: ...{text[max(0, m.start()-60):m.end()+60]}..."

    def test_size(self, path):
        assert path.stat().st_size < MAX_BYTES

    def test_first_cell_is_the_colab_install(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        first = "".join(_code_cells(nb)[0]["source"])
        assert first == colab_cell_source()

    def test_ignored_outputs_say_why(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in _code_cells(nb):
            if "nbval-ignore-output" in _tags(cell):
                src = "".join(cell["source"])
                assert src.lstrip().startswith("#"), f"an nbval-ignore-output cell must start with a comment saying why:\n{src[:200]}"

    def test_has_learning_goals_and_exercises(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").lower()
        assert "learning goals" in md
        assert "exercise" in md

    def test_widgets_have_stored_state(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        views = [o for c in _code_cells(nb) for o in c["outputs"]
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        if views:
            state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
            assert state.get("state"), "widget outputs without stored state render as nothing on the site"

    def test_every_interactive_figure_has_a_kernel_free_form(self, path):
        """Widgets on the static site cannot call Python: each needs a precomputed sweep
        (a to_jshtml animation) or small multiples (a cell tagged `static-form`)."""
        nb = json.loads(path.read_text(encoding="utf-8"))
        interactive = sum(
            any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in c["outputs"])
            for c in _code_cells(nb))
        static = sum(
            "static-form" in _tags(c) or any('class="animation"' in "".join(o.get("data", {}).get("text/html", ""))
                                               for o in c["outputs"])
            for c in _code_cells(nb))
        assert static >= interactive, f"{interactive} interactive figures but {static} kernel-free forms"


def test_package_names_the_same_repository_as_the_book():
    """Colab readers fetch sample data from the repository the package names; it must be the
    repository _config.yml names (the package cannot read _config.yml inside Colab)."""
    from camegrad_mini.rrg import paths
    from chapter_cells import repository_url

    assert paths.REPOSITORY_URL.rstrip("/") == repository_url()
