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
    def walk(entries):  # chapters and their sections (an appendix sits under its chapter)
        for e in entries:
            yield e["file"]
            yield from walk(e.get("sections", []))

    files = [f for part in toc["parts"] for f in walk(part["chapters"])]
    listed = {f for f in files if f.startswith("chapters/")}
    present = {f"chapters/{p.stem}" for p in CHAPTERS}
    assert listed == present
    for f in files:
        assert any((ROOT / f).with_suffix(s).exists() for s in (".md", ".ipynb")), f


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
class TestChapter:
    def test_name(self, path):
        assert re.fullmatch(r"\d\d[a-z]?_[a-z0-9_]+\.ipynb", path.name)

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
        cell = _code_cells(nb)[0]
        first = "".join(cell["source"])
        assert first == colab_cell_source()
        # The one repository (_config.yml) and the package's own version, as the generator promises.
        import camegrad_mini
        from chapter_cells import repository_url

        assert f'REPO, VERSION = "{repository_url()}", "{camegrad_mini.__version__}"' in first
        assert cell["outputs"] == [], "outside Colab the install cell must print nothing (strict nbval)"
        # first in the notebook (Colab), but not above the chapter's title on the site
        assert "remove-cell" in cell["metadata"].get("tags", []), "tag the install cell remove-cell"
        assert nb["cells"][0] is cell

    def test_ignored_outputs_say_why(self, path):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in _code_cells(nb):
            if "nbval-ignore-output" in _tags(cell):
                src = "".join(cell["source"])
                assert src.lstrip().startswith("#"), (
                    f"an nbval-ignore-output cell must start with a comment saying why:\n{src[:200]}")

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


# The Colab install cell itself, executed as Colab would run it: with `google.colab` imported and
# pip replaced by a stand-in (or, once, by a real pip that fails). The code is read from each
# chapter, so these tests check the cells readers run, not a copy.

def _colab_cell(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join(_code_cells(nb)[0]["source"])


def _run_cell(source: str, monkeypatch, *, in_colab=True, pip=None) -> list:
    """Execute the cell; `pip(args)` stands in for subprocess.run. Returns the pip calls."""
    import subprocess
    import types

    calls = []

    def fake_run(args, **kwargs):
        calls.append(list(args))
        assert kwargs.get("capture_output") and kwargs.get("text"), "pip's words must reach the message"
        return pip(args)

    monkeypatch.setattr(subprocess, "run", fake_run)
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(source, "<colab cell>", "exec"), {"__name__": "__main__"})
    return calls


def _completed(code, out="", err=""):
    import subprocess

    return lambda args: subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
class TestColabInstallCell:
    def test_outside_colab_it_does_nothing(self, path, monkeypatch, capsys):
        calls = _run_cell(_colab_cell(path), monkeypatch, in_colab=False, pip=_completed(0))
        assert calls == []
        assert capsys.readouterr() == ("", "")

    def test_in_colab_a_good_install_is_quiet(self, path, monkeypatch, capsys):
        from chapter_cells import repository_url
        import camegrad_mini

        calls = _run_cell(_colab_cell(path), monkeypatch, pip=_completed(0))
        spec = f"camegrad_mini @ git+{repository_url()}@v{camegrad_mini.__version__}"
        assert calls == [[sys.executable, "-m", "pip", "install", "-q", spec]]
        assert capsys.readouterr() == ("", "")

    def test_a_failed_pip_stops_the_notebook_with_what_to_do(self, path, monkeypatch):
        from chapter_cells import repository_url

        err = "ERROR: Could not resolve host: github.com"
        with pytest.raises(RuntimeError) as info:
            _run_cell(_colab_cell(path), monkeypatch, pip=_completed(1, err=err))
        msg = str(info.value)
        url = repository_url()
        assert "Could not install camegrad_mini" in msg and "pip exit code 1" in msg
        assert err in msg, "pip's own error must be shown"
        assert f"git clone {url}\n" in msg
        assert f"cd {url.rsplit('/', 1)[-1]}\n" in msg
        assert "pip install -e ." in msg and "jupyter lab chapters/" in msg and "Restart session" in msg

    def test_a_wrong_version_that_imports_also_stops(self, path, monkeypatch):
        import camegrad_mini

        monkeypatch.setattr(camegrad_mini, "__version__", "0.0.0-stale")
        with pytest.raises(RuntimeError, match="version that imports: 0.0.0-stale"):
            _run_cell(_colab_cell(path), monkeypatch, pip=_completed(0))

    def test_a_package_that_does_not_import_also_stops(self, path, monkeypatch):
        monkeypatch.setitem(sys.modules, "camegrad_mini", None)  # `import camegrad_mini` raises ImportError
        with pytest.raises(RuntimeError, match=r"version that imports: none \("):
            _run_cell(_colab_cell(path), monkeypatch, pip=_completed(0))


def test_colab_cell_with_a_real_failing_pip(monkeypatch, tmp_path):
    """The cell's own pip command, run for real, with only the requirement pointed at a folder
    that does not exist: pip exits non-zero and its message reaches the reader."""
    import subprocess

    real_run = subprocess.run
    missing = tmp_path / "no_such_checkout"

    def pip(args):
        assert args[-1].startswith("camegrad_mini @ git+")
        return real_run(args[:-1] + [f"camegrad_mini @ file://{missing}"], capture_output=True, text=True,
                        timeout=120)

    with pytest.raises(RuntimeError) as info:
        _run_cell(_colab_cell(CHAPTERS[0]), monkeypatch, pip=pip)
    msg = str(info.value)
    assert "pip exit code 0" not in msg
    assert "no_such_checkout" in msg, msg[:1500]
