"""Fault catalogue for ``python -m camegrad_mini.rrg.prepare``: one test per fault of the adversarial review.

Each docstring names its row in one line. The house rules these tests hold the command to: bad input
gets a one-line ``error: ...`` on stderr naming the file or id and what to do, exit code 1 and no
traceback; skippable bad input is reported by id (and stops the run with ``--strict``); nothing
exits 0 with a wrong or partial result; no run deletes what it did not create.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))   # tests/: reuse the fixture builders of the layout tests
from test_rrg_layouts import SAMPLES, _xml, make_raw  # noqa: E402

from camegrad_mini.rrg import layouts, prepare  # noqa: E402

PNG = (SAMPLES / "images" / "CXR2_IM-0652-1001.png").read_bytes()
SAMPLE_REPORTS = ("2", "7", "54", "1000", "1900", "25")    # what make_raw keeps when given extra reports


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run prepare in-process (an uncaught exception fails the test: that is the traceback)."""
    rc = prepare.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 1, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, f"not one error line: {err!r}"
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


def small_raw(tmp: Path, **extra_reports: bytes) -> Path:
    """Open-i layout with six real reports (+ ``extra_reports``, file name -> XML) and the sample PNGs."""
    return make_raw(tmp, extra_reports={"dummy.xml": b"<eCitation><uId id='CXR0'/></eCitation>", **extra_reports})


def entry(sid: str, report: str | None = "Clear lungs.") -> dict:
    return {"id": sid, "report": report, "image_path": [f"{sid}/0.png", f"{sid}/1.png"], "split": "train"}


def make_r2gen(tmp: Path, entries: list[dict], with_images: bool = True) -> Path:
    root = tmp / "r2"
    root.mkdir()
    for e in entries if with_images else []:
        for p in e.get("image_path") or []:
            (root / "images" / p).parent.mkdir(parents=True, exist_ok=True)
            (root / "images" / p).write_bytes(PNG)
    (root / "annotation.json").write_text(json.dumps({"train": entries, "val": [], "test": []}))
    return root


def make_tab(tmp: Path, projections: list[tuple[str, str, str]], reports_csv: bytes | None = None) -> Path:
    """Tabular layout: reports of uids 2 and 54, the given (uid, filename, projection) rows, sample PNGs."""
    src = tmp / "tab"
    (src / "images_normalized").mkdir(parents=True)
    (src / "indiana_reports.csv").write_bytes(reports_csv or (
        b"uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        b"2,normal,normal,Xray Chest PA and Lateral,,,Borderline cardiomegaly.,No acute disease.\n"
        b"54,normal,normal,Xray Chest PA and Lateral,,,Clear lungs.,Normal.\n"))
    with (src / "indiana_projections.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("uid", "filename", "projection"), *projections])
    for uid in ("2", "54"):
        for img in (SAMPLES / "images").glob(f"CXR{uid}_IM-*.png"):
            (src / "images_normalized" / (img.name[3:-4] + ".dcm.png")).write_bytes(img.read_bytes())
    return src


GOOD_PROJECTIONS = [("2", "2_IM-0652-1001.dcm.png", "Frontal"), ("2", "2_IM-0652-2001.dcm.png", "Lateral"),
                    ("54", "54_IM-2145-1001.dcm.png", "Frontal"), ("54", "54_IM-2145-1002.dcm.png", "Lateral")]


# --------------------------------------------------------------------------------------------
# row 1: data loss through --overwrite
# --------------------------------------------------------------------------------------------
def test_overwrite_refuses_an_out_folder_that_holds_the_source(tmp_path, capsys):
    """Row 1 (data loss): --out parent --src parent/raw --overwrite deleted the archives and unrelated files."""
    parent = tmp_path / "parent"
    parent.mkdir()
    raw = small_raw(parent)
    (parent / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(parent) for p in parent.rglob("*"))
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", parent, "--overwrite")
    assert_error(rc, err, str(parent), "--src")
    assert sorted(p.relative_to(parent) for p in parent.rglob("*")) == before      # nothing touched
    # the same folder, and an output inside the source, are refused as well
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", raw, "--overwrite")
    assert_error(rc, err, str(raw))
    (raw / "r2gen").mkdir()
    (raw / "r2gen" / "keep.txt").write_text("mine")
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", raw / "r2gen", "--overwrite")
    assert_error(rc, err, "--src")
    assert (raw / "r2gen" / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_only_a_folder_prepare_wrote(tmp_path, capsys):
    """Row 1 (data loss): --overwrite replaced any non-empty folder, not only one prepare had written."""
    raw = small_raw(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", mine, "--overwrite")
    assert_error(rc, err, str(mine), "prepare_info.json")
    assert (mine / "thesis.tex").read_text() == "years of work"
    # a folder prepare wrote is replaced ...
    out = tmp_path / "out"
    assert cli(capsys, "--layout", "openi", "--src", raw, "--out", out)[0] == 0
    assert cli(capsys, "--layout", "openi", "--src", raw, "--out", out, "--overwrite", "--seed", "1")[0] == 0
    assert json.loads((out / "prepare_info.json").read_text())["seed"] == 1
    # ... unless someone put their own files into it since
    (out / "my_notes.txt").write_text("mine")
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", out, "--overwrite")
    assert_error(rc, err, "my_notes.txt")
    assert (out / "my_notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_out_that_is_a_file_or_the_current_folder(tmp_path, capsys, monkeypatch):
    """Row 1 (data loss): --out naming an existing file, or `.`, was not refused with a clear error."""
    raw = small_raw(tmp_path)
    f = tmp_path / "out.txt"
    f.write_text("mine")
    for extra in ([], ["--overwrite"]):
        rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", f, *extra)
        assert_error(rc, err, str(f), "file")
        assert f.read_text() == "mine"
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for extra in ([], ["--overwrite"]):
        rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", ".", *extra)
        assert_error(rc, err, "current folder")
    assert list(here.iterdir()) == [] and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------------------
# row 2: tracebacks instead of sentences
# --------------------------------------------------------------------------------------------
def test_missing_annotation_file(tmp_path, capsys):
    """Row 2 (traceback): --annotation naming a missing file raised FileNotFoundError."""
    raw = small_raw(tmp_path)
    nope = tmp_path / "nope.json"
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", tmp_path / "out", "--annotation", nope)
    assert_error(rc, err, str(nope), "none")
    assert not (tmp_path / "out").exists()


def test_invalid_json_annotation(tmp_path, capsys):
    """Row 2 (traceback): an --annotation file that is not valid JSON raised JSONDecodeError."""
    raw = small_raw(tmp_path)
    bad = tmp_path / "annotation.json"
    bad.write_text('{"train": [')
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", tmp_path / "out", "--annotation", bad)
    assert_error(rc, err, str(bad), "JSON")


def test_non_utf8_csv(tmp_path, capsys):
    """Row 2 (traceback): a non-UTF-8 CSV of the tabular layout raised UnicodeDecodeError."""
    src = make_tab(tmp_path, GOOD_PROJECTIONS, reports_csv=(
        b"uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
        b"2,normal,normal,Xray,,,Caf\xe9 lungs.,Normal.\n"))
    rc, _, err = cli(capsys, "--layout", "tabular", "--src", src, "--out", tmp_path / "out")
    assert_error(rc, err, "indiana_reports.csv", "UTF-8")


def test_csv_row_without_image_file_name(tmp_path, capsys):
    """Row 2 (traceback): a projections CSV row with an empty filename crashed the tabular conversion."""
    src = make_tab(tmp_path, [("2", "", "Frontal"), *GOOD_PROJECTIONS])
    rc, out, err = cli(capsys, "--layout", "tabular", "--src", src, "--out", tmp_path / "out", "--annotation", "none")
    assert rc == 0, err
    assert "malformed CSV rows: indiana_projections.csv:'2'" in out
    ann = json.loads((tmp_path / "out" / "annotation.json").read_text())
    assert sorted(e["id"] for s in ann for e in ann[s]) == ["CXR2_IM-0652", "CXR54_IM-2145"]


def test_annotation_entry_without_image_path(tmp_path, capsys):
    """Row 2 (traceback): an R2Gen annotation entry without image_path raised KeyError."""
    broken = entry("CXR8_IM-1")
    del broken["image_path"]
    src = make_r2gen(tmp_path, [entry("CXR9_IM-1"), broken])
    rc, out, err = cli(capsys, "--layout", "r2gen", "--src", src, "--out", tmp_path / "out")
    assert rc == 0, err
    assert "CXR8_IM-1" in out and "image_path" in out
    ann = json.loads((tmp_path / "out" / "annotation.json").read_text())
    assert [e["id"] for e in ann["train"]] == ["CXR9_IM-1"]
    rc, _, err = cli(capsys, "--layout", "r2gen", "--src", src, "--out", tmp_path / "strict", "--strict")
    assert_error(rc, err, "CXR8_IM-1")


def test_read_only_out_parent_is_found_before_reading_images(tmp_path, capsys, monkeypatch):
    """Row 2 (traceback): an --out in a read-only folder failed with PermissionError after validating every image."""
    raw = small_raw(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:               # root writes anyway: make mkdir fail the way it does for a user
        real_mkdir = os.mkdir

        def mkdir(path, *a, **k):
            if Path(path).parent == ro:
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, *a, **k)
        monkeypatch.setattr(os, "mkdir", mkdir)
    checked = []
    real_check = layouts.is_readable_png
    monkeypatch.setattr(layouts, "is_readable_png", lambda data: checked.append(1) or real_check(data))
    try:
        rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", ro / "out")
    finally:
        ro.chmod(0o755)
    assert_error(rc, err, str(ro))
    assert checked == []                 # refused before the first image was read


def test_no_valid_study_at_all(tmp_path, capsys):
    """Row 2 (traceback): no valid study raised FileNotFoundError on a hidden temporary path."""
    src = make_r2gen(tmp_path, [entry("CXR8_IM-1")], with_images=False)
    rc, _, err = cli(capsys, "--layout", "r2gen", "--src", src, "--out", tmp_path / "out")
    assert_error(rc, err, f"no valid study found in {src}", "CXR8_IM-1")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_openi_image_id_without_dash_is_skipped(tmp_path, capsys):
    """Row 2 (traceback): an Open-i image id without the dash pattern (CXR12) aborted a non-strict conversion."""
    raw = small_raw(tmp_path, **{"12.xml": _xml(12, "Clear lungs.", ["CXR12", "CXR12b"])})
    rc, out, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", tmp_path / "out")
    assert rc == 0, err
    assert "CXR12" in out and "CXR<uid>_IM-<nnnn>-<mmmm>" in out
    assert (tmp_path / "out" / "annotation.json").is_file()
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", tmp_path / "strict", "--strict")
    assert_error(rc, err, "CXR12")


def test_tabular_file_name_without_dash_is_skipped(tmp_path, capsys):
    """Row 2 (traceback): a tabular file name without the dash pattern (foo.png) aborted a non-strict conversion."""
    src = make_tab(tmp_path, [("2", "foo.png", "Frontal"), ("2", "2_IM-0652-2001.dcm.png", "Lateral"),
                              *GOOD_PROJECTIONS[2:]])
    (src / "images_normalized" / "foo.png").write_bytes(PNG)
    rc, out, err = cli(capsys, "--layout", "tabular", "--src", src, "--out", tmp_path / "out", "--annotation", "none")
    assert rc == 0, err
    assert "foo.png" in out
    ann = json.loads((tmp_path / "out" / "annotation.json").read_text())
    assert [e["id"] for s in ann for e in ann[s]] == ["CXR54_IM-2145"]
    rc, _, err = cli(capsys, "--layout", "tabular", "--src", src, "--out", tmp_path / "strict", "--strict")
    assert_error(rc, err, "foo.png")


# --------------------------------------------------------------------------------------------
# row 3: silent losses
# --------------------------------------------------------------------------------------------
def test_duplicate_uid_is_reported_with_both_files(tmp_path, capsys):
    """Row 3 (silent): two Open-i XMLs with the same uId silently dropped a study."""
    first = _xml(9005, "First report.", ["CXR9005_IM-1-1001", "CXR9005_IM-1-2001"])
    second = _xml(9005, "Second report.", ["CXR9005_IM-2-1001", "CXR9005_IM-2-2001"])
    raw = small_raw(tmp_path, **{"9005.xml": first, "9006.xml": second})
    p = layouts.Problems()
    reps = layouts.read_openi_reports(raw / "NLMCXR_reports.tgz", p)
    assert reps["CXR9005"].findings == "First report."                    # the first is kept
    assert p.items["duplicate_uid"] == ["CXR9005 (9006.xml repeats 9005.xml)"]
    rc, out, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", tmp_path / "out")
    assert rc == 0 and "CXR9005 (9006.xml repeats 9005.xml)" in out, err
    rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", tmp_path / "strict", "--strict")
    assert_error(rc, err, "9005.xml", "9006.xml")


def test_null_report_is_reported_by_id(tmp_path, capsys):
    """Row 3 (silent): an R2Gen entry with "report": null passed prepare and failed later without its id."""
    src = make_r2gen(tmp_path, [entry("CXR9_IM-1"), entry("CXR8_IM-1", report=None)])
    rc, out, err = cli(capsys, "--layout", "r2gen", "--src", src, "--out", tmp_path / "out")
    assert rc == 0, err
    assert "without a report" in out and "CXR8_IM-1" in out
    ann = json.loads((tmp_path / "out" / "annotation.json").read_text())
    assert [e["id"] for e in ann["train"]] == ["CXR9_IM-1"]
    rc, _, err = cli(capsys, "--layout", "r2gen", "--src", src, "--out", tmp_path / "strict", "--strict")
    assert_error(rc, err, "CXR8_IM-1")


# --------------------------------------------------------------------------------------------
# row 4: leaks
# --------------------------------------------------------------------------------------------
def _stopped_run(raw: Path, out: Path, how: str) -> subprocess.Popen:
    """A prepare run in a child process that stops while checking images: ``how`` is ``kill``
    (SIGKILL, so no cleanup code runs) or ``hang`` (the run is still alive)."""
    stop = "os.kill(os.getpid(), signal.SIGKILL)" if how == "kill" else "time.sleep(120)"
    code = textwrap.dedent(f"""
        import os, signal, time
        from camegrad_mini.rrg import layouts, prepare
        layouts.is_readable_png = lambda data: {stop}
        prepare.main(["--layout", "openi", "--src", {str(raw)!r}, "--out", {str(out)!r}])
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=raw.parent)       # the installed package, not whatever the test's cwd holds


def _hidden(folder: Path) -> set[Path]:
    return {p for p in folder.iterdir() if p.name.startswith(".")}


def test_killed_run_leftovers_are_removed_by_the_next_run(tmp_path, capsys):
    """Row 4 (leak): a killed prepare left a hidden partial folder next to --out that no later run removed."""
    raw = small_raw(tmp_path)
    out = tmp_path / "out"
    killed = _stopped_run(raw, out, "kill")
    assert killed.wait(120) == -9, killed.stderr.read()
    stale = _hidden(tmp_path)
    assert len(stale) == 1 and not out.exists()
    # a run that still works on the same --out, and a look-alike folder prepare did not write
    hanging = _stopped_run(raw, out, "hang")
    try:
        for _ in range(600):
            live = _hidden(tmp_path) - stale
            if live:
                break
            assert hanging.poll() is None, hanging.stderr.read()
            time.sleep(0.1)
        assert len(live) == 1
        foreign = tmp_path / ".out.prepare-99999999.tmp"
        foreign.mkdir()
        (foreign / "data.bin").write_text("not yours")
        rc, _, err = cli(capsys, "--layout", "openi", "--src", raw, "--out", out)
        assert rc == 0, err
        assert _hidden(tmp_path) == live | {foreign}          # the stale one is gone, the others kept
        assert (foreign / "data.bin").exists()
    finally:
        hanging.kill()
        hanging.wait()
