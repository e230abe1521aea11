"""``load_iu_xray``: reports, labels, images and tokenizer of IU X-Ray, split as R2Gen does.

The returned :class:`IUXRay` holds three :class:`Split` objects with R2Gen-cleaned reports
(:func:`~camegrad_mini.rrg.text.clean_report`), the labeler's states and binary targets computed
from those *cleaned* reports (so training targets and clinical-efficacy references come from the
same text), and both views of every study as one ``uint8 [N, 2, H, W]`` array.

Image sources, chosen by ``images=``:

* ``"real"``   decoded radiographs only; studies without both image files are skipped and
  reported (or raise with ``strict=True``);
* ``"phantom"`` (also spelt ``"standin"``, the module's older name) the **phantom** set for every
  study: drawn images in which each finding of the study's real report has a known visual sign
  (:mod:`~camegrad_mini.rrg.standin`);
* ``"auto"``   with the shipped samples: real where both views are shipped (5 studies), stand-ins
  for the other 2,950; with a prepared folder it behaves like ``"real"`` (a study whose images
  are missing is skipped and reported, never silently replaced by a stand-in).

Whatever the mix, ``ds.images_are_standins`` is True as soon as one returned image is a
stand-in, each split's ``standin`` mask says which, and ``describe()`` states it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .cache import cached_array, decode_resize
from .labeler import CHEXPERT_OBSERVATIONS, label_reports, labels_to_binary
from .layouts import SPLITS, Problems, entry_views, read_openi_reports, read_r2gen, uid_of
from .paths import DataNotFoundError, data_samples_dir, resolve_root
from .standin import STANDIN_NOTE, STANDIN_VERSION, render_standins
from .text import Tokenizer, clean_report

IMAGE_MODES = ("auto", "real", "phantom", "standin")  # "standin" is the older name of "phantom"


@dataclass
class Split:
    """One split. ``images[i, 0]`` is the first view (usually frontal), ``images[i, 1]`` the second."""

    name: str
    ids: list[str]
    reports: list[str]
    images: np.ndarray
    labels: np.ndarray
    label_states: np.ndarray
    standin: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self, tokenizer: Tokenizer) -> np.ndarray:
        """Report token ids ``int64 [N, max_len]`` padded with ``tokenizer.pad_id``."""
        return tokenizer.encode_batch(self.reports)


@dataclass
class IUXRay:
    splits: dict[str, Split]
    tokenizer: Tokenizer
    image_size: int
    images_mode: str
    source: str
    problems: Problems = field(default_factory=Problems)
    notes: list[str] = field(default_factory=list)

    @property
    def images_are_standins(self) -> bool:
        """True if ANY returned image is a stand-in (then every output must say so)."""
        return any(bool(s.standin.any()) for s in self.splits.values())

    @property
    def observations(self) -> tuple[str, ...]:
        return CHEXPERT_OBSERVATIONS

    @property
    def image_note(self) -> str:
        """A short line for figure titles and printed results: which images were used."""
        n_std = sum(int(s.standin.sum()) for s in self.splits.values())
        n_all = sum(len(s) for s in self.splits.values())
        if n_std == 0:
            return "real IU X-Ray radiographs"
        if n_std == n_all:
            return "PHANTOM images (drawn from each study's report labels), not real radiographs"
        return (f"PHANTOM images for {n_std} of {n_all} studies (drawn from report labels); "
                "real radiographs for the rest")

    def describe(self) -> str:
        n = {k: len(v) for k, v in self.splits.items()}
        n_real = sum(int((~s.standin).sum()) for s in self.splits.values())
        n_std = sum(int(s.standin.sum()) for s in self.splits.values())
        lines = [
            f"IU X-Ray from {self.source}: train {n.get('train', 0)} / val {n.get('val', 0)} / "
            f"test {n.get('test', 0)} studies, 2 views each at {self.image_size} px",
            f"images: {n_real} studies with real radiographs, {n_std} with "
            + (STANDIN_NOTE if n_std else "phantoms (none)"),
            f"vocabulary {len(self.tokenizer)} tokens (threshold {self.tokenizer.threshold} on train, "
            f"max length {self.tokenizer.max_len})",
        ]
        tr = self.splits.get("train")
        if tr is not None and len(tr):
            prev = tr.labels.mean(axis=0)
            ranked = sorted(zip(CHEXPERT_OBSERVATIONS, prev, strict=True), key=lambda t: -t[1])
            top = ", ".join(f"{o} {p:.2f}" for o, p in ranked[:4])
            lines.append(f"train label prevalence (rule labeler, positive-or-uncertain): {top}")
        if self.problems:
            lines.append(f"skipped: {self.problems.summary()}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _sample_views(root: Path, study_ids: set[str]) -> dict[str, list[Path]]:
    """Shipped samples: study id -> its first two image files, in the report's Open-i order."""
    files = {f.name[:-4]: f for f in (root / "images").glob("*.png")}
    uids = {uid_of(i) for i in files}
    reports = read_openi_reports(root / "NLMCXR_reports.tgz", uids=uids)
    out = {}
    for rep in reports.values():
        sid = rep.study_id
        if sid in study_ids and len(rep.image_ids) >= 2 and all(v in files for v in rep.image_ids[:2]):
            out[sid] = [files[v] for v in rep.image_ids[:2]]
    return out


def _fingerprint(paths: list[list[Path]]) -> str:
    h = hashlib.sha256()
    for pair in paths:
        for p in pair:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _hint_for(root: Path) -> str:
    if (root / "NLMCXR_reports.tgz").exists() or (root / "NLMCXR_png.tgz").exists():
        return (f"it holds the raw Open-i archives: convert them with `python -m camegrad_mini.rrg.prepare "
                f"--layout openi --src {root} --out {root}_r2gen` and pass root={str(root) + '_r2gen'!r}")
    if (root / "indiana_reports.csv").exists():
        return (f"it holds the tabular export: convert it with `python -m camegrad_mini.rrg.prepare "
                f"--layout tabular --src {root} --out {root}_r2gen`")
    return ("fetch the Open-i archives with `python -m camegrad_mini.rrg.download --out data/iu_xray_raw` "
            "and prepare them with `python -m camegrad_mini.rrg.prepare --layout openi --src data/iu_xray_raw "
            "--out data/iu_xray`")


def load_iu_xray(root: str | os.PathLike | None = None, images: str = "auto", image_size: int = 128,
                 strict: bool = False, seed: int = 0, *, cache: bool = True,
                 cache_directory: str | os.PathLike | None = None, progress: bool = False) -> IUXRay:
    """Load IU X-Ray in R2Gen's split (module docstring; chapter 6, section 6.1, *The data: real
    reports, and which images*).

    Parameters
    ----------
    root: ``None`` for the shipped samples, or a folder in R2Gen's layout (see ``prepare``).
    images: ``"auto"``, ``"real"`` or ``"phantom"`` (``"standin"`` is accepted as its older name).
    image_size: side of the square grayscale images, 16..1024.
    strict: raise :class:`~camegrad_mini.rrg.paths.DataError` on any missing or unreadable image
        instead of skipping the study with a summary in ``ds.problems``.
    seed: seed of the stand-in drawings (the split itself is fixed by ``annotation.json``).
    cache: keep decoded / drawn images in the memory-mappable cache (``cache.py``).
    """
    images, image_size = _check_arguments(images, image_size)
    root_path = resolve_root(root)
    is_samples = (root_path / "images" / "manifest.csv").is_file() and (root_path / "NLMCXR_reports.tgz").is_file()
    if not is_samples and not (root_path / "annotation.json").is_file():
        raise DataNotFoundError(f"{root_path} is not an R2Gen-layout folder (no annotation.json): "
                                f"{_hint_for(root_path)}")
    problems = Problems()
    ann = read_r2gen(root_path, problems, check_images=False)
    entries = [(split, e) for split in SPLITS for e in ann[split]]
    ids = [e["id"] for _, e in entries]

    views, source = _image_files(root_path, entries, ids, images, is_samples, problems)
    problems.check(strict, context=f"loading {root_path}")
    notes: list[str] = []
    views = _views_pillow_can_decode(views, images, is_samples, notes)

    # decode real images once (cached), reporting unreadable files by id
    real_ids = [sid for sid in ids if sid in views]
    real_arr, unreadable = _decode_real(real_ids, views, image_size, problems, strict, root_path,
                                        cache, cache_directory, progress)
    real_pos = {sid: k for k, sid in enumerate(real_ids) if sid not in unreadable}

    cleaned = [clean_report(e["report"]) for _, e in entries]
    states = label_reports(cleaned)
    binary = labels_to_binary(states)

    keep = [i for i, sid in enumerate(ids)
            if sid in real_pos or (images == "standin") or (images == "auto" and is_samples)]
    keep = [i for i in keep if ids[i] not in unreadable]
    std_idx = [i for i in keep if ids[i] not in real_pos]
    std_arr = _draw_standins([ids[i] for i in std_idx], states[std_idx], image_size, seed, cache, cache_directory)
    std_pos = {ids[i]: k for k, i in enumerate(std_idx)}

    out = {split: _assemble_split(split, [i for i in keep if entries[i][0] == split], ids, cleaned, binary, states,
                                  real_arr, real_pos, std_arr, std_pos, image_size)
           for split in SPLITS}
    if not len(out["train"]):
        raise DataNotFoundError(f"no training studies with images in {root_path}: {_hint_for(root_path)}")
    # R2Gen fits the vocabulary on every training report of the annotation, with or without images
    tok = Tokenizer.fit([c for c, (split, _) in zip(cleaned, entries, strict=True) if split == "train"], clean=False)
    return IUXRay(out, tok, image_size, images, source, problems, notes)


def _check_arguments(images: str, image_size: Any) -> tuple[str, int]:
    """``images`` with ``"phantom"`` spelt ``"standin"`` (the internal name), ``image_size`` as an int."""
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    images = "standin" if images == "phantom" else images
    if not isinstance(image_size, (int, np.integer)) or not 16 <= int(image_size) <= 1024:
        raise ValueError(f"image_size must be an int in [16, 1024], got {image_size!r}")
    return images, int(image_size)


def _image_files(root_path: Path, entries: list[tuple[str, dict]], ids: list[str], images: str, is_samples: bool,
                 problems: Problems) -> tuple[dict[str, list[Path]], str]:
    """Which studies have both image files (study id -> paths), and where the data came from.
    Studies that should have real images but lack them are added to ``problems``."""
    if is_samples:
        views = _sample_views(root_path, set(ids)) if images != "standin" else {}
        source = "the shipped samples (data_samples/iu_xray: real reports of all R2Gen studies)"
    else:
        views = {}
        if images != "standin":
            for _, e in entries:
                paths = entry_views(root_path, e)  # a one-image MIMIC-CXR entry fills both views
                if paths is not None:
                    views[e["id"]] = paths
        source = f"an R2Gen-layout folder ({root_path.name})"
    if images == "real" or (images == "auto" and not is_samples):
        for sid in ids:
            if sid not in views:
                problems.add("missing_image", sid)
    return views, source


def _views_pillow_can_decode(views: dict[str, list[Path]], images: str, is_samples: bool,
                             notes: list[str]) -> dict[str, list[Path]]:
    """``views``, or none (with a note) where Pillow is missing and stand-ins may replace the samples."""
    if views:
        try:
            import PIL  # noqa: F401  (decoding PNGs needs Pillow; a bare GPU box may lack it)
        except ImportError:
            if images == "real" or not is_samples:
                raise ImportError("decoding the radiographs needs Pillow: pip install pillow") from None
            notes.append("Pillow is not installed, so the sample radiographs were replaced by stand-ins")
            return {}
    return views


def _decode_real(real_ids: list[str], views: dict[str, list[Path]], image_size: int, problems: Problems, strict: bool,
                 root_path: Path, cache: bool, cache_directory: str | os.PathLike | None,
                 progress: bool) -> tuple[np.ndarray, set[str]]:
    """The real images of ``real_ids`` as ``uint8 [N, 2, S, S]`` (cached), and the ids whose files
    could not be read (added to ``problems``; raised with ``strict``)."""
    real_arr = np.zeros((0, 2, image_size, image_size), np.uint8)
    unreadable: set[str] = set()
    if not real_ids:
        return real_arr, unreadable

    def build_real() -> np.ndarray:
        arr = np.zeros((len(real_ids), 2, image_size, image_size), np.uint8)
        it: Iterable[int] = range(len(real_ids))
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc="decoding images", unit="study")
        for k in it:
            for v, p in enumerate(views[real_ids[k]]):
                try:
                    arr[k, v] = decode_resize(p, image_size)
                except (OSError, ValueError, SyntaxError):
                    unreadable.add(real_ids[k])
        return arr
    settings = {"kind": "real", "size": image_size, "files": _fingerprint([views[s] for s in real_ids])}
    # a cache is never written when a file was unreadable: it is found and reported on every load
    real_arr = cached_array("iu_real", settings, build_real, cache_directory, enabled=cache,
                            keep=lambda: not unreadable)
    if unreadable:
        for sid in sorted(unreadable):
            problems.add("unreadable_image", sid)
        problems.check(strict, kinds=("unreadable_image",), context=f"loading {root_path}")
    return real_arr, unreadable


def _draw_standins(std_ids: list[str], std_states: np.ndarray, image_size: int, seed: int, cache: bool,
                   cache_directory: str | os.PathLike | None) -> np.ndarray:
    """The phantom images of ``std_ids`` (drawn from their label states; cached)."""
    if not std_ids:
        return np.zeros((0, 2, image_size, image_size), np.uint8)
    h = hashlib.sha256(("\n".join(std_ids)).encode() + std_states.tobytes()).hexdigest()[:16]
    settings = {"kind": "standin", "size": image_size, "seed": seed, "v": STANDIN_VERSION, "content": h}
    return cached_array("iu_standin", settings,
                        lambda: render_standins(std_states, std_ids, image_size=image_size, seed=seed),
                        cache_directory, enabled=cache)


def _assemble_split(split: str, idx: list[int], ids: list[str], cleaned: list[str], binary: np.ndarray,
                    states: np.ndarray, real_arr: np.ndarray, real_pos: dict[str, int], std_arr: np.ndarray,
                    std_pos: dict[str, int], image_size: int) -> Split:
    """One :class:`Split` of the studies ``idx``: each study's real images, or its stand-ins."""
    imgs = np.empty((len(idx), 2, image_size, image_size), np.uint8)
    mask = np.zeros(len(idx), dtype=bool)
    for j, i in enumerate(idx):
        sid = ids[i]
        if sid in real_pos:
            imgs[j] = real_arr[real_pos[sid]]
        else:
            imgs[j] = std_arr[std_pos[sid]]
            mask[j] = True
    return Split(split, [ids[i] for i in idx], [cleaned[i] for i in idx], imgs,
                 binary[idx] if idx else np.zeros((0, 14), np.float32),
                 states[idx] if idx else np.zeros((0, 14), np.int8), mask)


__all__ = ["load_iu_xray", "IUXRay", "Split", "data_samples_dir"]
