"""tools/canonical_outputs.py: `make refresh` stores outputs without run-to-run noise."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from canonical_outputs import VIEW_MIME, STATE_MIME, canonicalize  # noqa: E402

A, B, C = "a" * 32, "b" * 32, "c" * 32


def _notebook(root: str, child: str, anim: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    printed = nbformat.v4.new_code_cell("print(x)")
    printed.outputs = [nbformat.v4.new_output("stream", name="stdout", text="one\n"),
                       nbformat.v4.new_output("stream", name="stdout", text="two " + C + "\n"),
                       nbformat.v4.new_output("stream", name="stderr", text="warn\n")]
    widget = nbformat.v4.new_code_cell("w")
    widget.outputs = [nbformat.v4.new_output("display_data", data={
        VIEW_MIME: {"model_id": root, "version_major": 2, "version_minor": 0}, "text/plain": "VBox()"})]
    html = f'<img id="_anim_img{anim}"><button onclick="anim{anim}.next_frame()">'
    movie = nbformat.v4.new_code_cell("HTML(a.to_jshtml())")
    movie.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html})]
    nb.cells = [printed, widget, movie]
    for k, cell in enumerate(nb.cells):  # cell ids are the notebook's own, kept across runs
        cell.id = f"cell{k}"
    nb.metadata["widgets"] = {STATE_MIME: {"version_major": 2, "version_minor": 0, "state": {
        child: {"model_name": "FloatSliderModel", "state": {"value": 1.0}},
        root: {"model_name": "VBoxModel", "state": {"children": [f"IPY_MODEL_{child}"]}}}}}
    return nb


def test_two_runs_with_other_random_ids_store_the_same_notebook():
    first, second = _notebook(A, B, "1" * 32), _notebook("d" * 32, "e" * 32, "2" * 32)
    canonicalize(first, "ch")
    canonicalize(second, "ch")
    assert nbformat.writes(first) == nbformat.writes(second)


def test_references_follow_the_renaming_and_results_are_untouched():
    nb = _notebook(A, B, "1" * 32)
    before = copy.deepcopy(nb)
    canonicalize(nb, "ch")
    state = nb.metadata["widgets"][STATE_MIME]["state"]
    root = nb.cells[1].outputs[0]["data"][VIEW_MIME]["model_id"]
    assert root != A and set(state) == {root, state[root]["state"]["children"][0].removeprefix("IPY_MODEL_")}
    assert [o.get("text") for o in nb.cells[0].outputs] == ["one\ntwo " + C + "\n", "warn\n"]  # printed hex kept
    assert "1" * 32 not in nb.cells[2].outputs[0]["data"]["text/html"]
    assert nb.cells[2].outputs[0]["data"]["text/html"].count(
        nb.cells[2].outputs[0]["data"]["text/html"].split("_anim_img")[1][:32]) == 2
    assert before.cells[0].source == nb.cells[0].source


def test_other_chapters_get_other_ids():
    a, b = _notebook(A, B, "1" * 32), _notebook(A, B, "1" * 32)
    canonicalize(a, "01_chapter")
    canonicalize(b, "02_chapter")
    assert set(a.metadata["widgets"][STATE_MIME]["state"]).isdisjoint(b.metadata["widgets"][STATE_MIME]["state"])
