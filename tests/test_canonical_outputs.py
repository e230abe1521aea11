"""tools/canonical_outputs.py: `make refresh` stores outputs without run-to-run noise."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from canonical_outputs import (HASH_KEY, IGNORE_TAG, STATE_MIME, VIEW_MIME, canonicalize,  # noqa: E402
                               ignores_output, keep_ignored_outputs, source_hash)

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


# ----------------------------------------------------------------------------------------------
# Machine-dependent cells keep their stored output unless the maintainer asks (--timings)
# ----------------------------------------------------------------------------------------------

def _cell(source: str, text: str, tags=(), stamp: bool = False) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = list(tags)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    if stamp:
        cell.metadata["refresh"] = {HASH_KEY: source_hash(source)}
    return cell


def _executed(stored: list, fresh_texts: list[str]) -> nbformat.NotebookNode:
    """What nbclient leaves: the same cells, fresh outputs (printed in two fragments)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = copy.deepcopy(stored)
    for cell, text in zip(nb.cells, fresh_texts, strict=True):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text[:3]),
                        nbformat.v4.new_output("stream", name="stdout", text=text[3:])]
    return nb


def test_an_unchanged_timing_cell_keeps_its_stored_output_and_is_named():
    stored = [_cell("bench()", "12.3 ms/step\n", [IGNORE_TAG], stamp=True), _cell("print(1)", "1\n")]
    nb = _executed(stored, ["14.9 ms/step\n", "1\n"])
    assert keep_ignored_outputs(nb, stored) == [0]                  # kept although the fresh one differs
    assert [o.text for o in nb.cells[0].outputs] == ["12.3 ms/step\n"]
    assert "".join(o.text for o in nb.cells[1].outputs) == "1\n"    # compared cells: always fresh
    assert "refresh" not in nb.cells[1].metadata
    assert nb.cells[0].metadata["refresh"][HASH_KEY] == source_hash("bench()")


def test_a_kept_output_that_equals_the_fresh_one_is_not_reported():
    stored = [_cell("bench()", "same output\n", [IGNORE_TAG], stamp=True)]
    assert keep_ignored_outputs(_executed(stored, ["same output\n"]), stored) == []


def test_timings_flag_edited_source_or_no_stamp_store_the_fresh_output():
    stored = [_cell("bench()", "12.3 ms\n", [IGNORE_TAG], stamp=True)]
    nb = _executed(stored, ["14.9 ms\n"])
    assert keep_ignored_outputs(nb, stored, fresh=True) == []        # --timings / TIMINGS=1
    assert "".join(o.text for o in nb.cells[0].outputs) == "14.9 ms\n"
    assert nb.cells[0].metadata["refresh"][HASH_KEY] == source_hash("bench()")

    edited = [_cell("bench(steps=5)", "12.3 ms\n", [IGNORE_TAG])]
    edited[0].metadata["refresh"] = {HASH_KEY: source_hash("bench()")}  # stored by the old source
    nb = _executed(edited, ["3.1 ms\n"])
    keep_ignored_outputs(nb, edited)
    assert "".join(o.text for o in nb.cells[0].outputs) == "3.1 ms\n"
    assert nb.cells[0].metadata["refresh"][HASH_KEY] == source_hash("bench(steps=5)")

    unstamped = [_cell("bench()", "12.3 ms\n", [IGNORE_TAG])]          # never stored by the tool
    nb = _executed(unstamped, ["14.9 ms\n"])
    keep_ignored_outputs(nb, unstamped)
    assert "".join(o.text for o in nb.cells[0].outputs) == "14.9 ms\n"
    assert HASH_KEY in nb.cells[0].metadata["refresh"]               # the next refresh keeps it


def test_two_refreshes_of_an_unchanged_chapter_store_the_same_notebook():
    source = [_cell("bench()", "old\n", [IGNORE_TAG]), _cell("# NBVAL_IGNORE_OUTPUT\nprint(now())", "t0\n"),
              _cell("print(1)", "1\n")]
    first = _executed(source, ["t1\n", "t1\n", "1\n"])
    keep_ignored_outputs(first, source)
    canonicalize(first, "ch")
    second = _executed(first.cells, ["t2\n", "t2\n", "1\n"])
    assert keep_ignored_outputs(second, copy.deepcopy(first.cells)) == [0, 1]
    canonicalize(second, "ch")
    assert nbformat.writes(first) == nbformat.writes(second)


def test_widget_cells_always_get_their_fresh_output():
    stored = _notebook(A, B, "1" * 32).cells[1]
    stored.metadata["tags"] = [IGNORE_TAG]
    stored.metadata["refresh"] = {HASH_KEY: source_hash(stored.source)}
    nb = nbformat.v4.new_notebook()
    nb.cells = [copy.deepcopy(stored)]
    nb.cells[0].outputs[0]["data"][VIEW_MIME]["model_id"] = "f" * 32  # a new widget
    assert keep_ignored_outputs(nb, [stored]) == []
    assert nb.cells[0].outputs[0]["data"][VIEW_MIME]["model_id"] == "f" * 32
    assert "refresh" not in nb.cells[0].metadata


def test_ignores_output_reads_tags_and_nbval_comment_markers():
    assert ignores_output(_cell("x", "", [IGNORE_TAG]))
    assert ignores_output(_cell("#  NBVAL_IGNORE_OUTPUT\nx", ""))
    assert not ignores_output(_cell("# nbval-ignore-output: a comment nbval does not read\nx", ""))
    assert not ignores_output(nbformat.v4.new_markdown_cell("NBVAL_IGNORE_OUTPUT"))
