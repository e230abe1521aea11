"""One compact, memory-mappable uint8 image cache per settings key.

Training must never decode PNGs per step: each image is decoded once, converted to grayscale,
resized to ``image_size`` x ``image_size`` (R2Gen's eval transform also ignores the aspect
ratio) and stored with both views of every study in one ``uint8 [N, 2, H, W]`` ``.npy`` file
(5,910 views at 128 px: 97 MB; at 256 px: 390 MB, small enough to keep on a GPU).

The file name carries a hash of every setting that changes its content (source folder and file
sizes, study ids, size, generator version), so changing a setting never reuses a stale cache.
The cache lives in :func:`~camegrad_mini.rrg.paths.cache_dir` (git-ignored, outside the
repository by default); originals are never written. Files are written to a temporary name and
moved into place with ``os.replace``, so an interrupted run leaves no half-written cache; an
unreadable cache file is rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .paths import cache_dir

CACHE_VERSION = 1


def cache_key(settings: dict) -> str:
    """A short stable hash of JSON-serializable ``settings``."""
    blob = json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cached_array(name: str, settings: dict, build: Callable[[], np.ndarray],
                 directory: str | os.PathLike | None = None, enabled: bool = True,
                 keep: Callable[[], bool] = lambda: True) -> np.ndarray:
    """Return the array for ``settings``: memory-mapped from the cache, else ``build()`` it,
    store it atomically (with a ``.json`` of its settings beside it) and return it.

    ``keep()`` is asked after building; False (e.g. an image was unreadable) returns the array
    without storing it, so the problem is found and reported again on the next load.
    """
    if not enabled:
        return build()
    d = Path(directory) if directory is not None else cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}-{cache_key(settings)}.u8.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError):
            path.unlink(missing_ok=True)  # corrupt (e.g. a foreign partial copy): rebuild
    arr = np.ascontiguousarray(build())
    if not keep():
        return arr
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    _atomic_write_bytes(path, buf.getvalue())
    meta = {"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype), "settings": settings}
    _atomic_write_bytes(path.with_suffix("").with_suffix(".json"), json.dumps(meta, default=str).encode())
    return np.load(path, mmap_mode="r")


def decode_resize(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one PNG to grayscale uint8 ``[size, size]`` (bilinear; 16-bit scaled by its max).

    Raises ``OSError`` (or ``ValueError``) for an unreadable file; callers report it by id.
    """
    from PIL import Image  # only real images need Pillow

    with Image.open(path) as src:
        src.load()
        im: Image.Image
        if src.mode in ("I;16", "I;16B", "I", "F"):
            a = np.asarray(src, dtype=np.float32)
            a = a / max(float(a.max()), 1.0) * 255.0
            im = Image.fromarray(a.astype(np.uint8))
        else:
            im = src.convert("L")
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8)
