"""load_iu_xray on the shipped samples and on a prepared folder; the image cache; the stand-ins."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from camegrad_mini.rrg import CHEXPERT_OBSERVATIONS, load_iu_xray
from camegrad_mini.rrg.cache import cache_key, cached_array
from camegrad_mini.rrg.labeler import POSITIVE
from camegrad_mini.rrg.paths import SAMPLES_ENV, DataNotFoundError, data_samples_dir
from camegrad_mini.rrg.standin import render_standins

SAMPLES = Path(__file__).parents[1] / "data_samples" / "iu_xray"
OBS_INDEX = {n: i for i, n in enumerate(CHEXPERT_OBSERVATIONS)}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMEGRAD_MINI_CACHE", str(tmp_path / "cache"))


def test_samples_auto_full_split_real_reports_and_labelled_standins():
    t0 = time.perf_counter()
    ds = load_iu_xray(images="auto", image_size=64)
    assert time.perf_counter() - t0 < 30                      # a few seconds; generous for shared CI cores
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 2069, "val": 296, "test": 590}
    tr, te = ds.splits["train"], ds.splits["test"]
    assert tr.images.shape == (2069, 2, 64, 64) and tr.images.dtype == np.uint8
    assert tr.labels.shape == (2069, 14) and tr.labels.dtype == np.float32
    assert set(np.unique(tr.labels)) <= {0.0, 1.0}
    assert ds.images_are_standins and int((~tr.standin).sum()) == 4 and int((~te.standin).sum()) == 1
    assert not te.standin[te.ids.index("CXR2_IM-0652")]       # the real radiograph of CXR2
    assert te.reports[te.ids.index("CXR2_IM-0652")].startswith("borderline cardiomegaly .")
    assert 700 < len(ds.tokenizer) < 800
    assert "PHANTOM" in ds.describe() and "2950" in ds.describe()
    assert tr.tokens(ds.tokenizer).shape == (2069, 60)
    # cached: the second load reads the memory-mapped arrays and gives identical images
    ds2 = load_iu_xray(images="auto", image_size=64)
    assert np.array_equal(ds2.splits["val"].images, ds.splits["val"].images)


def test_real_only_and_strict(tmp_path):
    ds = load_iu_xray(images="real", image_size=32)
    assert len(ds.splits["train"]) == 4 and not ds.images_are_standins
    assert ds.problems.count("missing_image") == 2950 and "CXR2384_IM-0942" in ds.problems.summary()
    from camegrad_mini.rrg.paths import DataError
    with pytest.raises(DataError, match="annotation ids without an image"):
        load_iu_xray(images="real", image_size=32, strict=True)


def test_prepared_folder_with_unreadable_image(tmp_path):
    root = tmp_path / "r2"
    ann = {"train": [], "val": [], "test": []}
    for sid, split in (("CXR2_IM-0652", "train"), ("CXR7_IM-2263", "train"), ("CXR54_IM-2145", "test")):
        (root / "images" / sid).mkdir(parents=True)
        imgs = sorted((SAMPLES / "images").glob(sid + "-*.png"))[:2]
        for n, f in enumerate(imgs):
            shutil.copy(f, root / "images" / sid / f"{n}.png")
        ann[split].append({"id": sid, "report": "Heart size normal. No effusion.", "split": split,
                           "image_path": [f"{sid}/0.png", f"{sid}/1.png"]})
    (root / "annotation.json").write_text(json.dumps(ann))
    (root / "images" / "CXR7_IM-2263" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ds = load_iu_xray(root, images="real", image_size=32)
    assert ds.splits["train"].ids == ["CXR2_IM-0652"] and ds.problems.items["unreadable_image"] == ["CXR7_IM-2263"]
    assert not ds.images_are_standins and ds.splits["train"].images.std() > 10
    from camegrad_mini.rrg.paths import DataError
    with pytest.raises(DataError, match="CXR7_IM-2263"):
        load_iu_xray(root, images="real", image_size=32, strict=True)


def test_missing_and_unprepared_roots_name_the_command(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="camegrad_mini.rrg.download"):
        load_iu_xray(tmp_path / "absent")
    (tmp_path / "raw").mkdir()
    shutil.copy(SAMPLES / "NLMCXR_reports.tgz", tmp_path / "raw")
    with pytest.raises(DataNotFoundError, match="prepare --layout openi"):
        load_iu_xray(tmp_path / "raw")
    monkeypatch.setenv(SAMPLES_ENV, str(tmp_path))
    with pytest.raises(DataNotFoundError, match=SAMPLES_ENV):
        data_samples_dir()
    with pytest.raises(ValueError, match="images"):
        load_iu_xray(images="png")
    with pytest.raises(ValueError, match="image_size"):
        load_iu_xray(image_size=8)


def test_standins_depend_on_labels_and_are_deterministic():
    n = 40
    labels = np.zeros((n, 14), np.float32)
    labels[:, OBS_INDEX["No Finding"]] = 1
    cm = labels.copy()
    cm[:, OBS_INDEX["Cardiomegaly"]] = 1
    cm[:, OBS_INDEX["No Finding"]] = 0
    ids = [f"CXR{i}_IM-1" for i in range(n)]
    a = render_standins(labels, ids, image_size=64)
    b = render_standins(cm, ids, image_size=64)
    assert a.shape == (n, 2, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, render_standins(labels, ids, image_size=64))          # deterministic
    assert np.array_equal(a[5], render_standins(labels[5:6], ids[5:6], image_size=64)[0])  # per-study
    # a wider heart: more bright pixels in the lower middle of the frontal view, for every study
    centre = (slice(None), 0, slice(36, 52), slice(10, 54))
    assert (b[centre].astype(float).mean(axis=(1, 2)) > a[centre].astype(float).mean(axis=(1, 2)) + 3).all()
    eff = labels.copy()
    eff[:, OBS_INDEX["Pleural Effusion"]] = 1
    c = render_standins(eff, ids, image_size=64)
    base = (slice(None), 0, slice(44, 56), slice(4, 60))
    assert (c[base].astype(float).mean(axis=(1, 2)) > a[base].astype(float).mean(axis=(1, 2)) + 3).all()
    # 4-state codes are accepted too (1 positive, 3 uncertain count as present)
    states = np.where(cm > 0, POSITIVE, 0).astype(np.int8)
    assert np.array_equal(render_standins(states, ids, image_size=64), b)
    with pytest.raises(ValueError, match="shape"):
        render_standins(labels[:, :3], ids)


def test_cache_is_keyed_atomic_and_memory_mapped(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    a = cached_array("t", {"size": 4}, build, tmp_path)
    b = cached_array("t", {"size": 4}, build, tmp_path)
    assert len(calls) == 1 and isinstance(b, np.memmap) and np.array_equal(a, b)
    cached_array("t", {"size": 5}, build, tmp_path)
    assert len(calls) == 2 and cache_key({"size": 4}) != cache_key({"size": 5})
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # a corrupt cache file is rebuilt, not trusted
    expected = np.array(a)
    del a, b  # (a cache file is only ever replaced, never rewritten in place, so open maps stay valid)
    f = next(tmp_path.glob(f"t-{cache_key({'size': 4})}.u8.npy"))
    f.unlink()
    f.write_bytes(b"junk")
    assert np.array_equal(cached_array("t", {"size": 4}, build, tmp_path), expected) and len(calls) == 3

    def failing():
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        cached_array("t", {"size": 6}, failing, tmp_path)
    assert not list(tmp_path.glob(f"t-{cache_key({'size': 6})}*"))


def test_phantom_is_the_name_of_the_drawn_set():
    """images="phantom" and its older spelling "standin" load the same drawn images."""
    a = load_iu_xray(images="phantom", image_size=16)
    b = load_iu_xray(images="standin", image_size=16)
    assert a.images_are_standins and all(s.standin.all() for s in a.splits.values())
    for k in a.splits:
        assert np.array_equal(np.asarray(a.splits[k].images), np.asarray(b.splits[k].images))
