"""Make a re-executed notebook's stored outputs deterministic, so that `make refresh` of an
unchanged chapter leaves `git status` clean.

Three things differ from one execution to the next without any result changing:

* **widget model ids** (random uuid4 hex from ipywidgets): in each widget view output, in the
  widget state stored in the notebook's metadata, and in the ``IPY_MODEL_<id>`` references between
  widgets. They are renamed in a fixed order: the displayed widgets in the order the cells show
  them, then the widgets they reference, depth first. The state dictionary is stored sorted.
* **animation ids** of matplotlib's ``to_jshtml`` players (``_anim_img<id>``, ``anim<id>`` ...):
  renamed in order of appearance.
* **stream fragments**: how a cell's printed text is cut into ``stream`` outputs depends on when
  the kernel flushed; consecutive fragments of one stream are merged (nbval merges them too before
  comparing, so this changes nothing it checks).

New ids are derived from the notebook's file name and a counter, so they stay unique across the
chapters of the site. Nothing else is touched: a printed 32-digit hex number stays as it is.

A fourth source of noise is real: cells whose output depends on the machine (timings, speeds, the
date of a live run, the last digits of a trained model's metrics). nbval does not compare them
(tag ``nbval-ignore-output`` or the comment marker ``# NBVAL_IGNORE_OUTPUT``), and
:func:`keep_ignored_outputs` makes the refresh leave them alone as well: such a cell keeps its
stored output when its source has not changed since that output was stored, so that its output
changes only when the maintainer asks (``make refresh ... TIMINGS=1``, i.e.
``refresh_notebooks.py --timings``). "Since that output was stored" is recorded in the cell's
metadata (``refresh.source_sha256``: a hash of the source, written whenever the refresh stores or
keeps the cell's output); a cell without it, or whose source changed, gets its fresh output.
Cells that display widgets are exempt (their views point into the notebook's widget state, which
is stored fresh on every run): they always get their fresh output, without a hash.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

STATE_MIME = "application/vnd.jupyter.widget-state+json"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"
_ANIM = re.compile(r"(_anim_(?:img|slider|loop_select|radio\d_)|\banim)([0-9a-f]{32})")
_REF = re.compile(r"IPY_MODEL_([0-9a-f]{32})")


IGNORE_TAG = "nbval-ignore-output"
_IGNORE_MARKERS = ("NBVAL_IGNORE_OUTPUT", "PYTEST_VALIDATE_IGNORE_OUTPUT")  # nbval's comment markers
HASH_KEY = "source_sha256"


def _new_id(stem: str, kind: str, k: int) -> str:
    return hashlib.md5(f"{stem}:{kind}:{k}".encode()).hexdigest()


def merge_streams(nb: Any) -> None:
    """Join consecutive ``stream`` outputs of the same name in every code cell."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            merge_streams_cell(cell)


def merge_streams_cell(cell: Any) -> None:
    """:func:`merge_streams` for one code cell."""
    merged: list[Any] = []
    for out in cell.outputs:
        prev = merged[-1] if merged else None
        if (out.output_type == "stream" and prev is not None and prev.output_type == "stream"
                and prev.name == out.name):
            prev.text = prev.text + out.text
        else:
            merged.append(out)
    cell.outputs = merged


def _widget_order(nb: Any, state: dict[str, Any]) -> list[str]:
    """Model ids: displayed ones in cell order, then what they reference (depth first), then the rest."""
    order: list[str] = []

    def visit(mid: str) -> None:
        if mid in order or mid not in state:
            return
        order.append(mid)
        for ref in _REF.findall(json.dumps(state[mid], sort_keys=True)):
            visit(ref)

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(VIEW_MIME) if out.get("output_type") != "stream" else None
            if view:
                visit(view["model_id"])
    rest = sorted((m for m in state if m not in order), key=lambda m: json.dumps(state[m], sort_keys=True))
    for mid in rest:
        visit(mid)
    return order


def rename_widgets(nb: Any, stem: str) -> None:
    """Deterministic widget model ids in outputs and stored state (module docstring)."""
    widgets = nb.metadata.get("widgets", {}).get(STATE_MIME)
    state = widgets.get("state", {}) if widgets else {}
    if not state:
        return
    mapping = {old: _new_id(stem, "widget", k) for k, old in enumerate(_widget_order(nb, state))}

    def sub(obj: Any) -> Any:
        text = json.dumps(obj)
        text = _REF.sub(lambda m: "IPY_MODEL_" + mapping.get(m.group(1), m.group(1)), text)
        return json.loads(text)

    widgets["state"] = {mapping[m]: sub(state[m]) for m in sorted(state, key=lambda m: mapping[m])}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(VIEW_MIME) if out.get("output_type") != "stream" else None
            if view and view.get("model_id") in mapping:
                view["model_id"] = mapping[view["model_id"]]


def rename_animations(nb: Any, stem: str) -> None:
    """Deterministic ids in matplotlib's ``to_jshtml`` players, in order of appearance."""
    mapping: dict[str, str] = {}

    def new(m: re.Match) -> str:
        old = m.group(2)
        if old not in mapping:
            mapping[old] = _new_id(stem, "anim", len(mapping))
        return m.group(1) + mapping[old]

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for mime, value in list(data.items()):
                if mime == "text/html":
                    text = "".join(value) if isinstance(value, list) else value
                    data[mime] = _ANIM.sub(new, text)


def canonicalize(nb: Any, stem: str) -> None:
    """All three steps, in place."""
    merge_streams(nb)
    rename_widgets(nb, stem)
    rename_animations(nb, stem)


# ----------------------------------------------------------------------------------------------
# Machine-dependent cells: keep the stored output unless asked (module docstring)
# ----------------------------------------------------------------------------------------------

def ignores_output(cell: Any) -> bool:
    """Whether nbval ignores this cell's output (its tag, or its comment marker as nbval reads it)."""
    if cell.get("cell_type") != "code":
        return False
    if IGNORE_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    return any(line.strip().startswith("#") and line.strip().lstrip("#").strip() in _IGNORE_MARKERS
               for line in cell.get("source", "").splitlines())


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _has_widget_view(outputs: list[Any]) -> bool:
    return any(VIEW_MIME in out.get("data", {}) for out in outputs)


def keep_ignored_outputs(nb: Any, stored: list[Any], fresh: bool = False) -> list[int]:
    """After a re-execution of ``nb``, put back the stored output of every machine-dependent cell
    whose source is unchanged (module docstring); in place.

    Args:
        nb: The executed notebook.
        stored: Its code cells as they were before the execution (same cells, same order).
        fresh: Keep nothing: store every fresh output (``--timings``); the hashes are renewed.

    Returns:
        The indices (among the code cells) of the cells whose stored output was kept although the
        fresh one differs: what ``--timings`` would change.
    """
    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(code) != len(stored):
        raise ValueError(f"{len(stored)} stored code cells for {len(code)} executed ones")
    differ = []
    for k, (cell, old) in enumerate(zip(code, stored, strict=True)):
        meta = cell.metadata
        if not ignores_output(cell) or _has_widget_view(cell.outputs) or _has_widget_view(old.get("outputs", [])):
            if isinstance(meta.get("refresh"), dict):
                meta["refresh"].pop(HASH_KEY, None)
                if not meta["refresh"]:
                    del meta["refresh"]
            continue
        h = source_hash(cell.source)
        unchanged = old.get("source") == cell.source and old.get("metadata", {}).get("refresh", {}).get(HASH_KEY) == h
        if unchanged and not fresh:
            merge_streams_cell(cell)
            new_text = json.dumps(cell.outputs, sort_keys=True)
            cell.outputs = copy.deepcopy(old.get("outputs", []))
            merge_streams_cell(cell)
            if json.dumps(cell.outputs, sort_keys=True) != new_text:
                differ.append(k)
        meta.setdefault("refresh", {})[HASH_KEY] = h
    return differ
