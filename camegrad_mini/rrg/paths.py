"""Where the IU X-Ray data live, and errors that say how to get them.

Three places matter:

* the shipped samples, ``data_samples/iu_xray`` at the repository root: the real R2Gen
  ``annotation.json`` (all 2,955 reports), the official ``NLMCXR_reports.tgz``, and 18 real
  radiographs of 12 studies (``images/<Open-i image id>.png``). Found through the environment
  variable ``CAMEGRAD_MINI_DATA_SAMPLES``, next to the installed package (editable install or a
  clone), or in the current directory and its parents;
* a user data root, prepared by ``python -m camegrad_mini.rrg.prepare`` into R2Gen's layout
  (``annotation.json`` + ``images/<study>/<n>.png``); ``CAMEGRAD_MINI_DATA`` may name it;
* a cache folder for resized images (git-ignored): ``CAMEGRAD_MINI_CACHE`` or
  ``~/.cache/camegrad_mini``. Original files are never written to.
"""
from __future__ import annotations

import os
from pathlib import Path

SAMPLES_ENV = "CAMEGRAD_MINI_DATA_SAMPLES"
DATA_ENV = "CAMEGRAD_MINI_DATA"
CACHE_ENV = "CAMEGRAD_MINI_CACHE"
# The repository that ships data_samples/ (also named in the book's _config.yml).
REPOSITORY_URL = "https://github.com/camegrad-book/camegrad-mini-book"

DOWNLOAD_CMD = "python -m camegrad_mini.rrg.download --out data/iu_xray_raw"
PREPARE_CMD = ("python -m camegrad_mini.rrg.prepare --layout openi --src data/iu_xray_raw "
               "--out data/iu_xray")

# MIMIC-CXR (credentialed, PhysioNet): what a reader with access does to train on it
MIMIC_SETUP = ("With PhysioNet access, download MIMIC-CXR-JPG 2.0.0 (its files/ folder) and R2Gen's MIMIC-CXR "
               "annotation.json, put annotation.json in a folder with images/ pointing at files/ "
               "(`ln -s /path/to/mimic-cxr-jpg/2.0.0/files DIR/images`), and pass "
               "`--dataset mimic_cxr --data-root DIR`.")


class DataNotFoundError(FileNotFoundError):
    """A data folder or file is missing; the message names the command that creates it."""


class DataError(ValueError):
    """The data are present but broken (unreadable image, malformed XML, ...), in strict mode."""


def _looks_like_samples(p: Path) -> bool:
    return (p / "annotation.json").is_file() and (p / "NLMCXR_reports.tgz").is_file()


def data_samples_dir() -> Path:
    """The shipped ``data_samples/iu_xray`` folder (see the module docstring for the search order)."""
    env = os.environ.get(SAMPLES_ENV)
    if env:
        p = Path(env).expanduser()
        if _looks_like_samples(p):
            return p
        raise DataNotFoundError(
            f"{SAMPLES_ENV}={env!r} does not contain annotation.json and NLMCXR_reports.tgz")
    candidates = [Path(__file__).resolve().parents[2] / "data_samples" / "iu_xray"]
    here = Path.cwd().resolve()
    candidates += [d / "data_samples" / "iu_xray" for d in (here, *here.parents)]
    candidates.append(_cache_root() / "data_samples" / "iu_xray")   # `download --samples`
    for p in candidates:
        if _looks_like_samples(p):
            return p
    raise DataNotFoundError(
        "The shipped IU X-Ray samples (data_samples/iu_xray) were not found. They come with the "
        f"repository: `git clone {REPOSITORY_URL}` and run from inside it, or fetch them (15 MB) with "
        "`python -m camegrad_mini.rrg.download --samples`, or set "
        f"{SAMPLES_ENV} to the folder. For the full dataset run `{DOWNLOAD_CMD}` and then "
        f"`{PREPARE_CMD}`.")


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``None`` -> the samples; otherwise the given folder, which must exist."""
    if root is None:
        env = os.environ.get(DATA_ENV)
        return Path(env).expanduser() if env else data_samples_dir()
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DataNotFoundError(
            f"root={str(p)!r} is not a folder. Fetch the Open-i archives with `{DOWNLOAD_CMD}` and "
            f"convert them with `{PREPARE_CMD}` (or pass root=None for the shipped samples).")
    return p


def _cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "camegrad_mini"


def cache_dir() -> Path:
    """Folder for resized image caches (created on demand; never inside a tracked folder)."""
    p = _cache_root()
    p.mkdir(parents=True, exist_ok=True)
    return p
