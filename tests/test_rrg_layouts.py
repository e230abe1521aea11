"""The three layouts, the converters, and bad input (reported by id; strict raises; nothing half-written)."""
from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from camegrad_mini.rrg.layouts import (Problems, convert_openi, convert_tabular, copy_r2gen, parse_openi_xml,
                                       read_openi_reports, read_r2gen, seeded_split, study_id_from_image_id)
from camegrad_mini.rrg.paths import DataError, DataNotFoundError

SAMPLES = Path(__file__).parents[1] / "data_samples" / "iu_xray"
# the five sample studies whose first two Open-i images are shipped (4 R2Gen train, 1 test)
COMPLETE = {"CXR1000_IM-0003": "train", "CXR1900_IM-0584": "train", "CXR54_IM-2145": "train",
            "CXR7_IM-2263": "train", "CXR2_IM-0652": "test"}


def _xml(uid: int, findings: str, images: list[str]) -> bytes:
    imgs = "".join(f'<parentImage id="{i}"><figureId>F1</figureId></parentImage>' for i in images)
    return (f'<?xml version="1.0"?><eCitation><uId id="CXR{uid}"/><MedlineCitation><Article><Abstract>'
            f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
            f'<AbstractText Label="IMPRESSION">Normal.</AbstractText></Abstract></Article></MedlineCitation>'
            f'<MeSH><major>normal</major></MeSH>{imgs}</eCitation>').encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_raw(tmp: Path, extra_reports: dict[str, bytes] | None = None, extra_pngs: dict[str, bytes] | None = None,
             reports_from_samples: bool = True) -> Path:
    """A raw Open-i folder: the real NLMCXR_reports.tgz (+ extra XMLs) and a PNG archive of the samples."""
    raw = tmp / "raw"
    raw.mkdir()
    if reports_from_samples and not extra_reports:
        shutil.copy(SAMPLES / "NLMCXR_reports.tgz", raw / "NLMCXR_reports.tgz")
    else:
        with (tarfile.open(SAMPLES / "NLMCXR_reports.tgz") as src,
              tarfile.open(raw / "NLMCXR_reports.tgz", "w:gz") as dst):
            for m in src:
                if m.isfile() and Path(m.name).stem in {"2", "7", "54", "1000", "1900", "25"}:
                    _add(dst, m.name, src.extractfile(m).read())
            for name, data in (extra_reports or {}).items():
                _add(dst, f"ecgen-radiology/{name}", data)
    with tarfile.open(raw / "NLMCXR_png.tgz", "w:gz") as tar:
        for f in sorted((SAMPLES / "images").glob("*.png")):
            if f.stat().st_size < 400_000:         # keep the archive small: the 512-px exports only
                _add(tar, f.name, f.read_bytes())
        _add(tar, "CXR1000_IM-0003-1001.png", (SAMPLES / "images" / "CXR1000_IM-0003-1001.png").read_bytes())
        _add(tar, "CXR1000_IM-0003-2001.png", (SAMPLES / "images" / "CXR1000_IM-0003-2001.png").read_bytes())
        for name, data in (extra_pngs or {}).items():
            _add(tar, name, data)
    return raw


def test_ids_and_xml_parsing():
    assert study_id_from_image_id("CXR2_IM-0652-1001") == "CXR2_IM-0652"
    rep = parse_openi_xml(_xml(5, "Clear lungs.", ["CXR5_IM-1-1001", "CXR5_IM-1-2001"]))
    assert rep.uid == "CXR5" and rep.findings == "Clear lungs." and rep.study_id == "CXR5_IM-1"
    assert rep.mesh_major == ["normal"]


def test_read_real_reports_archive_counts():
    reps = read_openi_reports(SAMPLES / "NLMCXR_reports.tgz")
    assert len(reps) == 3955
    both = [r for r in reps.values() if r.findings and len(r.image_ids) >= 2]
    assert len(both) == 2955                    # exactly R2Gen's 2,069 + 296 + 590
    assert reps["CXR2"].image_ids[:2] == ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"]


def test_layout1_r2gen_annotation_reads_split_and_reports_missing_images(tmp_path):
    p = Problems()
    ann = read_r2gen(SAMPLES, p, check_images=False)
    assert {k: len(v) for k, v in ann.items()} == {"train": 2069, "val": 296, "test": 590}
    root = tmp_path / "r2"
    (root / "images" / "CXR9_IM-1").mkdir(parents=True)
    png = (SAMPLES / "images" / "CXR2_IM-0652-1001.png").read_bytes()
    for n in (0, 1):
        (root / "images" / "CXR9_IM-1" / f"{n}.png").write_bytes(png)
    entries = {"train": [{"id": "CXR9_IM-1", "report": "Clear lungs.",
                          "image_path": ["CXR9_IM-1/0.png", "CXR9_IM-1/1.png"], "split": "train"},
                         {"id": "CXR8_IM-1", "report": "No effusion.",
                          "image_path": ["CXR8_IM-1/0.png", "CXR8_IM-1/1.png"], "split": "train"}],
               "val": [], "test": []}
    (root / "annotation.json").write_text(json.dumps(entries))
    p = Problems()
    ann = read_r2gen(root, p)
    assert [e["id"] for e in ann["train"]] == ["CXR9_IM-1"]
    assert p.items["missing_image"] == ["CXR8_IM-1"]
    assert "1 annotation ids without an image file: CXR8_IM-1" in p.summary()
    with pytest.raises(DataError, match="CXR8_IM-1"):
        copy_r2gen(root, tmp_path / "copy", strict=True)
    assert not (tmp_path / "copy").exists()
    res = copy_r2gen(root, tmp_path / "copy")
    assert res.counts == {"train": 1, "val": 0, "test": 0}
    assert (tmp_path / "copy" / "images" / "CXR9_IM-1" / "0.png").read_bytes() == png   # bytes unchanged


def test_layout2_openi_conversion_keeps_r2gen_split_and_bytes(tmp_path):
    raw = make_raw(tmp_path)
    res = convert_openi(raw, tmp_path / "out")
    ann = json.loads((tmp_path / "out" / "annotation.json").read_text())
    got = {e["id"]: s for s in ann for e in ann[s]}
    assert got == COMPLETE
    assert res.problems.count("no_images") == 2955 - 5       # reported by id, with counts
    e = next(e for e in ann["test"] if e["id"] == "CXR2_IM-0652")
    assert e["report"].startswith("Borderline cardiomegaly.")
    for n, img in enumerate(["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"]):
        assert (tmp_path / "out" / "images" / "CXR2_IM-0652" / f"{n}.png").read_bytes() == \
            (SAMPLES / "images" / f"{img}.png").read_bytes()
    info = json.loads((tmp_path / "out" / "prepare_info.json").read_text())
    assert info["split_source"] == {"R2Gen annotation.json": 5}
    # without an R2Gen annotation: the documented seeded split
    res2 = convert_openi(raw, tmp_path / "out2", annotation=None, seed=3)
    assert sum(res2.counts.values()) == 5 and list(res2.split_source) == ["seeded 70/10/20 split (seed 3)"]
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob(".*staging*"))


def test_seeded_split_is_deterministic_and_proportional():
    ids = [f"CXR{i}" for i in range(1000)]
    a, b = seeded_split(ids, seed=1), seeded_split(list(reversed(ids)), seed=1)
    assert a == b
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 700, "val": 100, "test": 200}
    assert seeded_split(ids, seed=2) != a
    with pytest.raises(ValueError, match="fractions"):
        seeded_split(ids, fractions=(0.5, 0.5, 0.5))


def test_layout2_bad_input_malformed_xml_unreadable_image_strict(tmp_path):
    bad_png = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
    raw = make_raw(tmp_path, extra_reports={"9001.xml": b"<eCitation><uId id='CXR9001'/>",  # truncated XML
                                            "9002.xml": _xml(9002, "Clear lungs.",
                                                             ["CXR9002_IM-1-1001", "CXR9002_IM-1-2001"]),
                                            "9003.xml": _xml(9003, "No effusion.", ["CXR9003_IM-1-1001"])},
                   extra_pngs={"CXR9002_IM-1-1001.png": bad_png, "CXR9002_IM-1-2001.png": bad_png})
    res = convert_openi(raw, tmp_path / "out")
    assert res.problems.items["malformed_xml"] == ["9001.xml"]
    assert sorted(res.problems.items["unreadable_image"]) == ["CXR9002_IM-1-1001", "CXR9002_IM-1-2001"]
    assert res.problems.items["too_few_images"] == ["CXR9003"]
    assert "CXR9002_IM-1" not in (tmp_path / "out" / "annotation.json").read_text()
    with pytest.raises(DataError, match="malformed XML.*9001.xml"):
        convert_openi(raw, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # nothing half-written
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_openi(raw, tmp_path / "out")


def test_missing_source_folders_name_the_command(tmp_path):
    with pytest.raises(DataNotFoundError, match="camegrad_mini.rrg.download"):
        convert_openi(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(DataNotFoundError, match="indiana_reports.csv"):
        convert_tabular(tmp_path, tmp_path / "out")
    with pytest.raises(DataNotFoundError, match="camegrad_mini.rrg.prepare"):
        read_r2gen(tmp_path)


def test_layout3_tabular_conversion(tmp_path):
    src = tmp_path / "tab"
    (src / "images_normalized").mkdir(parents=True)
    shutil.copy(SAMPLES / "indiana_reports.csv", src)       # the real, unchanged CSV export
    wanted = {"2", "7", "54", "1900"}
    with (SAMPLES / "indiana_projections.csv").open(newline="") as f, \
            (src / "indiana_projections.csv").open("w", newline="") as g:
        w = csv.writer(g)
        for row in csv.reader(f):
            if row[0] == "uid" or row[0] in wanted:
                w.writerow(row)
    for uid in wanted:
        for img in (SAMPLES / "images").glob(f"CXR{uid}_IM-*.png"):
            shutil.copy(img, src / "images_normalized" / (img.name[3:-4] + ".dcm.png"))
    (src / "images_normalized" / "7_IM-2263-2001.dcm.png").write_bytes(b"not a png")   # unreadable
    res = convert_tabular(src, tmp_path / "out")
    ann = json.loads((tmp_path / "out" / "annotation.json").read_text())
    got = {e["id"]: s for s in ann for e in ann[s]}
    assert got == {"CXR2_IM-0652": "test", "CXR54_IM-2145": "train", "CXR1900_IM-0584": "train"}
    assert res.problems.items["unreadable_image"] == ["7_IM-2263-2001.dcm.png"]
    assert res.problems.count("too_few_images") > 3000           # every uid without projections here
    # frontal first, then lateral
    front = (SAMPLES / "images" / "CXR54_IM-2145-1001.png").read_bytes()
    assert (tmp_path / "out" / "images" / "CXR54_IM-2145" / "0.png").read_bytes() == front


def test_prepare_cli_for_each_layout(tmp_path, capsys, monkeypatch):
    from camegrad_mini.rrg import prepare
    monkeypatch.setenv("CAMEGRAD_MINI_CACHE", str(tmp_path / "cache"))
    raw = make_raw(tmp_path)
    assert prepare.main(["--layout", "openi", "--src", str(raw), "--out", str(tmp_path / "a"),
                         "--cache-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "train 4, val 0, test 1 studies" in out and "5 studies with real radiographs" in out
    assert prepare.main(["--layout", "r2gen", "--src", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "annotation.json").read_text()) == \
        json.loads((tmp_path / "a" / "annotation.json").read_text())
    tab = tmp_path / "tab"
    (tab / "images_normalized").mkdir(parents=True)
    for name in ("indiana_reports.csv", "indiana_projections.csv"):
        shutil.copy(SAMPLES / name, tab)
    for img in (SAMPLES / "images").glob("CXR2_IM-*.png"):
        shutil.copy(img, tab / "images_normalized" / (img.name[3:-4] + ".dcm.png"))
    assert prepare.main(["--layout", "tabular", "--src", str(tab), "--out", str(tmp_path / "c"),
                         "--annotation", "none", "--seed", "1"]) == 0
    assert "seeded 70/10/20 split (seed 1)" in capsys.readouterr().out
    assert prepare.main(["--layout", "openi", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 1
    assert "camegrad_mini.rrg.download" in capsys.readouterr().err


def test_repository_url_matches_book_config():
    import re

    from camegrad_mini.rrg.paths import REPOSITORY_URL
    cfg = (Path(__file__).parents[1] / "_config.yml").read_text()
    assert re.search(r'url:\s*"?' + re.escape(REPOSITORY_URL), cfg)
