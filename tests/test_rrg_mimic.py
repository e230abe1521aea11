"""MIMIC-CXR in R2Gen's layout, read by the IU X-Ray data layer (``--dataset mimic_cxr``).

MIMIC-CXR is credentialed data (PhysioNet) and never shipped: every test builds a small synthetic
folder in that layout in a temporary directory (fake reports, tiny JPEGs written with Pillow)::

    annotation.json  {"train"|"val"|"test": [{id, study_id, subject_id, report,
                                               image_path: ["p10/p10000032/s50414267/<id>.jpg"], split}]}
    images/p10/p10000032/s50414267/<id>.jpg
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camegrad_mini.rrg import train as T
from camegrad_mini.rrg.layouts import check_mimic_cxr_root, entry_views, is_mimic_entry
from camegrad_mini.rrg.paths import DataError, DataNotFoundError

PIL = pytest.importorskip("PIL.Image")
torch.set_num_threads(1)

REPORTS = [
    "The lungs are clear. There is no pleural effusion or pneumothorax. Heart size is normal.",
    "Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "Right lower lobe opacity concerning for pneumonia. No effusion.",
    "No acute cardiopulmonary process. The cardiomediastinal silhouette is normal.",
    "Mild pulmonary edema. Stable cardiomegaly. Small bilateral pleural effusions.",
    "There is a left basilar atelectasis. No focal consolidation. No pneumothorax.",
]
COUNTS = {"train": 16, "val": 4, "test": 4}


def _entry(k: int, split: str, n_images: int = 1) -> dict:
    subject, study = 10000032 + k, 50414267 + k
    folder = f"p{str(subject)[:2]}/p{subject}/s{study}"
    ids = [f"{k:08x}-bde0afdd-112c0b34-7bc16630-{i:08x}" for i in range(n_images)]
    return {"id": ids[0], "study_id": study, "subject_id": subject, "report": REPORTS[k % len(REPORTS)],
            "image_path": [f"{folder}/{i}.jpg" for i in ids], "split": split}


def _write_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = (np.linspace(0, 255, 48)[None, :] * 0.5 + rng.integers(0, 120, (40, 48))).astype(np.uint8)
    PIL.fromarray(a).save(path, quality=90)


def make_mimic(root: Path, counts: dict[str, int] = COUNTS, two_views: int = 0) -> Path:
    """A MIMIC-CXR folder in R2Gen's layout; the first ``two_views`` entries have two images."""
    ann: dict[str, list[dict]] = {}
    k = 0
    for split, n in counts.items():
        ann[split] = []
        for _ in range(n):
            e = _entry(k, split, 2 if k < two_views else 1)
            for j, p in enumerate(e["image_path"]):
                _write_jpeg(root / "images" / p, seed=10 * k + j)
            ann[split].append(e)
            k += 1
    (root / "annotation.json").write_text(json.dumps(ann))
    return root


@pytest.fixture
def mimic(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAMEGRAD_MINI_CACHE", str(tmp_path / "cache"))
    return make_mimic(tmp_path / "mimic_cxr", two_views=2)


def _cfg(root: Path, **over):
    return T.get_config("tiny", dataset="mimic_cxr", data_root=str(root), device="cpu", **over)


def test_entries_are_recognised_and_one_image_fills_both_views(mimic):
    ann = json.loads((mimic / "annotation.json").read_text())
    single, double = ann["train"][5], ann["train"][0]
    assert is_mimic_entry(single) and is_mimic_entry({"image_path": single["image_path"]})
    assert not is_mimic_entry({"id": "CXR2_IM-0652", "image_path": ["CXR2_IM-0652/0.png"]})
    assert entry_views(mimic, single) == [mimic / "images" / single["image_path"][0]] * 2
    assert entry_views(mimic, double) == [mimic / "images" / p for p in double["image_path"]]
    # an IU X-Ray study still needs two images
    assert entry_views(mimic, {"id": "CXR2_IM-0652", "image_path": [single["image_path"][0].replace("/", "_")]}) is None
    assert check_mimic_cxr_root(mimic) == mimic


def test_the_trainer_reads_mimic_cxr_through_the_same_data_layer(mimic):
    data = T.prepare_data(_cfg(mimic), "cpu")
    assert {k: len(v) for k, v in data.splits.items()} == COUNTS
    assert not data.images_are_standins
    assert data.description.startswith("MIMIC-CXR from")
    tr = data.splits["train"]
    assert tr.images.shape == (16, 2, 32, 32) and tr.images.dtype == torch.uint8
    assert not torch.equal(tr.images[0, 0], tr.images[0, 1])  # a two-image entry: two views
    assert torch.equal(tr.images[5, 0], tr.images[5, 1])  # one image: the same picture twice
    assert float(tr.images.float().std()) > 5  # decoded JPEGs, not blanks
    assert tr.labels.shape == (16, 14) and tr.labels[1].sum() > 0  # labelled from the fake reports


def test_a_missing_image_skips_its_entry_and_says_so(mimic):
    ann = json.loads((mimic / "annotation.json").read_text())
    gone = ann["train"][3]
    (mimic / "images" / gone["image_path"][0]).unlink()
    ds = T.load_dataset(_cfg(mimic))
    assert len(ds.splits["train"]) == 15 and gone["id"] not in ds.splits["train"].ids
    assert ds.problems.items["missing_image"] == [gone["id"]]


def test_bad_mimic_folders_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="needs data_root"):
        T.get_config("tiny", dataset="mimic_cxr")
    with pytest.raises(ValueError, match="dataset="):
        T.get_config("tiny", dataset="chexpert")
    with pytest.raises(DataNotFoundError, match="PhysioNet"):
        check_mimic_cxr_root(tmp_path)
    with pytest.raises(DataNotFoundError, match="not shipped"):
        check_mimic_cxr_root(None)
    iu = tmp_path / "iu"
    (iu / "images").mkdir(parents=True)
    (iu / "annotation.json").write_text(json.dumps(
        {"train": [{"id": "CXR2_IM-0652", "report": "x", "image_path": ["CXR2_IM-0652/0.png", "CXR2_IM-0652/1.png"],
                    "split": "train"}], "val": [], "test": []}))
    with pytest.raises(DataError, match="does not look like"):
        check_mimic_cxr_root(iu)
    rc = T.main(["--method", "ls", "--config", "tiny", "--dataset", "mimic_cxr", "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "o")])
    assert rc == 2


def test_a_tiny_training_on_mimic_cxr(mimic, tmp_path):
    s = T.train(_cfg(mimic, epochs=1, n_train=16, n_val=4, n_test=4), tmp_path / "run", resume=False)
    assert (s["steps"], s["n_train"], s["n_test"], s["images_are_standins"]) == (2, 16, 4, False)
    assert s["config"]["dataset"] == "mimic_cxr"
    assert len((tmp_path / "run" / "generations_test.jsonl").read_text().splitlines()) == 4
