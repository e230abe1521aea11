"""The phantom set: cartoon chest X-rays drawn from each study's labels. NOT real images.

The book calls these images **phantoms**, as imaging calls a test object with known content: the
reports and labels are the real IU X-Ray ones, and each finding has a known visual sign. The
module keeps its older name, ``standin``.

The real IU X-Ray images (about 1 GB) cannot be shipped or fetched on CI machines, yet the
report-generation chapter needs images whose content *predicts the findings*, so that the
report loss and the classification loss see the same evidence and their gradients can agree or
conflict as on real data. This module draws, for each study, a frontal (view 0) and a lateral
(view 1) grayscale picture:

* anatomy: body outline, two dark lung fields, mediastinum and spine, diaphragm, faint ribs,
  a heart whose width is the study's cardiothoracic ratio (jittered);
* findings from the labeler (positive or uncertain):
  Cardiomegaly -> heart 30-50 % wider; Enlarged Cardiomediastinum -> wide upper mediastinum;
  Pleural Effusion -> fluid level with a meniscus blunting a costophrenic angle;
  Consolidation / Pneumonia / Lung Opacity -> dense or patchy blobs in a lung;
  Edema -> bilateral perihilar haze; Atelectasis -> a plate-like band at a base;
  Pneumothorax -> a dark apical rim without lung markings; Lung Lesion -> a small round nodule;
  Pleural Other -> a thick lateral pleural stripe; Fracture -> a broken bright rib segment;
  Support Devices -> a bright tube and, sometimes, a pacemaker box.

Every parameter is drawn from a generator seeded by ``(seed, crc32(study id))``, so a study
always gets the same picture, whatever other studies are rendered with it. The drawing is
vectorized over studies (numpy broadcasting; shapes only on the studies that have the finding),
so the 2,955 IU studies take a few seconds at 128 px. Consumers must say that stand-ins were
used; ``dataset.IUXRay`` carries ``images_are_standins`` and a per-study ``standin`` mask.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from .labeler import CHEXPERT_OBSERVATIONS

STANDIN_VERSION = 1  # bump when the drawing changes: it is part of the cache key
STANDIN_NOTE = "PHANTOM images (drawn from report labels: each finding has a known visual sign; not real radiographs)"
_O = {n: i for i, n in enumerate(CHEXPERT_OBSERVATIONS)}
_N_PARAMS = 32


def _params(ids: Sequence[str], seed: int) -> np.ndarray:
    """Per-study uniforms ``[N, 32]`` from ``default_rng([seed, crc32(id)])``."""
    out = np.empty((len(ids), _N_PARAMS), dtype=np.float32)
    for i, sid in enumerate(ids):
        out[i] = np.random.default_rng([int(seed), zlib.crc32(sid.encode())]).random(_N_PARAMS)
    return out


def _ellipse(yy, xx, cy, cx, ry, rx, edge=0.08):
    """Soft ellipse masks ``[B, H, W]`` in [0, 1] for per-study centres and radii ``[B]``."""
    dy = ((yy[None, :, None] - cy[:, None, None]) / ry[:, None, None]) ** 2
    dx = ((xx[None, None, :] - cx[:, None, None]) / rx[:, None, None]) ** 2
    return np.clip((1.0 - (dy + dx)) / edge, 0.0, 1.0)


def _gauss(yy, xx, cy, cx, s):
    gy = np.exp(-((yy[None, :] - cy[:, None]) ** 2) / (2 * s[:, None] ** 2))
    gx = np.exp(-((xx[None, :] - cx[:, None]) ** 2) / (2 * s[:, None] ** 2))
    return gy[:, :, None] * gx[:, None, :]


def _templates(size: int, yy, xx, k: int = 12, seed: int = 0) -> np.ndarray:
    """``k`` jittered base anatomies per view (no heart, no findings): ``[k, 2, H, W]``."""
    rng = np.random.default_rng(1234 + seed)
    out = np.zeros((k, 2, size, size), dtype=np.float32)
    one = np.ones(k, dtype=np.float32)
    j = rng.uniform(-1, 1, (k, 6)).astype(np.float32)
    # frontal
    body = _ellipse(yy, xx, 0.05 + 0.03 * j[:, 0], 0 * one, 1.05 * one, 0.86 + 0.05 * j[:, 1], 0.15)
    f = 0.10 + 0.32 * body
    for side in (-1, 1):
        lung = _ellipse(yy, xx, -0.08 + 0.03 * j[:, 2], side * (0.38 + 0.02 * j[:, 3]), 0.62 * one,
                        0.27 + 0.02 * j[:, 4], 0.25)
        f -= 0.20 * lung
        ribs = 0.5 + 0.5 * np.cos((yy[None, :, None] + 0.15 * np.abs(xx[None, None, :])) * 26.0)
        f += 0.035 * lung * ribs
    f += 0.20 * (np.abs(xx) < 0.07)[None, None, :] * (yy < 0.7)[None, :, None]
    f += 0.25 * np.clip((yy[None, :, None] - (0.55 + 0.04 * j[:, 5, None, None]) + 0.1 * xx[None, None, :] ** 2)
                        / 0.05, 0, 1) * body
    out[:, 0] = f
    # lateral
    body = _ellipse(yy, xx, 0.05 * one, 0 * one, 1.0 * one, 0.75 + 0.05 * j[:, 1], 0.15)
    lung = _ellipse(yy, xx, -0.1 + 0.03 * j[:, 2], 0.0 * one, 0.62 * one, 0.55 + 0.03 * j[:, 4], 0.25)
    g = 0.10 + 0.34 * body - 0.20 * lung
    g += 0.22 * (np.abs(xx - 0.62) < 0.09)[None, None, :] * body
    g += 0.25 * np.clip((yy[None, :, None] - 0.52 - 0.04 * j[:, 5, None, None]) / 0.05, 0, 1) * body
    out[:, 1] = g
    return out


def render_standins(labels: np.ndarray, ids: Sequence[str], *, image_size: int = 128, seed: int = 0,
                    chunk: int = 256) -> np.ndarray:
    """Stand-in images ``uint8 [N, 2, H, W]`` for binary labels ``[N, 14]`` (positive-or-uncertain).

    ``labels`` may also be the 4-state codes of :func:`~camegrad_mini.rrg.labeler.label_reports`
    (1 positive or 3 uncertain count as present).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(CHEXPERT_OBSERVATIONS):
        raise ValueError(f"labels must have shape [N, 14], got {labels.shape}")
    if len(ids) != len(labels):
        raise ValueError(f"ids ({len(ids)}) and labels ({len(labels)}) must have the same length")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in [16, 1024], got {image_size}")
    present = (labels == 1) | (labels == 3) if labels.dtype.kind in "iu" else labels > 0.5
    s = int(image_size)
    yy = np.linspace(-1, 1, s, dtype=np.float32)
    xx = yy.copy()
    tmpl = _templates(s, yy, xx)
    noise_rng = np.random.default_rng(99 + seed)
    noise = noise_rng.normal(0, 0.025, (8, 2, s, s)).astype(np.float32)
    params = _params(ids, seed)
    out = np.empty((len(ids), 2, s, s), dtype=np.uint8)
    for a in range(0, len(ids), chunk):
        b = min(a + chunk, len(ids))
        out[a:b] = _render_chunk(present[a:b], params[a:b], tmpl, noise, yy, xx)
    return out


# long function: one pass that draws every sign of every study of a chunk in order; the phantom
# drawing is being rewritten on a side branch (issue 9), which will split it, so it is not split here.
def _render_chunk(present, p, tmpl, noise, yy, xx) -> np.ndarray:
    img = tmpl[(p[:, 0] * len(tmpl)).astype(int)] + noise[(p[:, 1] * len(noise)).astype(int)]
    fr, la = img[:, 0], img[:, 1]  # views, modified in place
    has = lambda name: np.flatnonzero(present[:, _O[name]])  # noqa: E731
    side = np.where(p[:, 2] < 0.5, -1.0, 1.0).astype(np.float32)   # which lung a finding sits in
    lvl = (-0.35 + 0.6 * p[:, 3]).astype(np.float32)                # height of a focal finding (in a lung)

    # heart: width = cardiothoracic ratio; enlarged for Cardiomegaly (the key image-text signal)
    ctr = 0.32 + 0.04 * (p[:, 4] - 0.5)
    cm = present[:, _O["Cardiomegaly"]]
    ctr = np.where(cm, ctr * (1.3 + 0.2 * p[:, 5]), ctr).astype(np.float32)
    fr += 0.28 * _ellipse(yy, xx, 0.28 + 0.02 * p[:, 6], 0.08 + 0.2 * (ctr - 0.32), 0.24 + 0.3 * (ctr - 0.32), ctr, 0.2)
    la += 0.24 * _ellipse(yy, xx, 0.22 + 0.02 * p[:, 6], -0.22 - 0.3 * (ctr - 0.32), 0.26 + 0.2 * (ctr - 0.32),
                          0.8 * ctr, 0.2)
    i = has("Enlarged Cardiomediastinum")
    if len(i):
        w = (0.16 + 0.05 * p[i, 7])[:, None, None]
        band = (np.abs(xx)[None, None, :] < w) & (yy[None, :, None] < 0.15) & (yy[None, :, None] > -0.75)
        fr[i] += 0.16 * band
        la[i] += 0.08 * band
    i = has("Pleural Effusion")
    if len(i):
        level = (0.05 + 0.25 * p[i, 8])[:, None, None]
        k = np.ones(len(i), dtype=np.float32)
        for sgn in (-1.0, 1.0):
            on = ((side[i] == sgn) | (p[i, 9] < 0.4))[:, None, None]   # one side, or both
            lung = _ellipse(yy, xx, -0.08 * k, sgn * 0.38 * k, 0.66 * k, 0.31 * k, 0.1)
            lateral = np.abs(xx[None, None, :] - sgn * 0.38)
            meniscus = level - 1.2 * lateral ** 2                       # fluid climbs the chest wall
            fluid = np.clip((yy[None, :, None] - meniscus) / 0.04, 0, 1) * lung
            fr[i] += 0.30 * on * fluid
        lung = _ellipse(yy, xx, -0.1 * k, 0.0 * k, 0.64 * k, 0.57 * k, 0.1)
        la[i] += 0.25 * np.clip((yy[None, :, None] - level - 0.05 + 0.3 * np.clip(xx, 0, None)[None, None, :]) / 0.04,
                                0, 1) * lung
    for name, amp, spread, blobs in (("Consolidation", 0.32, 0.10, 1), ("Pneumonia", 0.24, 0.14, 2),
                                     ("Lung Opacity", 0.16, 0.12, 2)):
        i = has(name)
        for blob in range(blobs):
            if not len(i):
                break
            cx = side[i] * (0.3 + 0.15 * p[i, 10 + blob])
            cy = lvl[i] - 0.25 * blob
            sg = spread + 0.05 * p[i, 12 + blob]
            fr[i] += amp * _gauss(yy, xx, cy, cx, sg)
            la[i] += 0.7 * amp * _gauss(yy, xx, cy, 0.1 * side[i], sg)
    i = has("Edema")
    if len(i):
        s = (0.22 + 0.06 * p[i, 14]).astype(np.float32)
        for sgn in (-1.0, 1.0):
            fr[i] += 0.17 * _gauss(yy, xx, 0.0 * s, sgn * 0.25 + 0 * s, s)
        la[i] += 0.12 * _gauss(yy, xx, 0.0 * s, 0.0 * s, s)
    i = has("Atelectasis")
    if len(i):
        y0 = (0.3 + 0.15 * p[i, 15])[:, None, None]
        x0 = (side[i] * 0.38)[:, None, None]
        band = np.exp(-((yy[None, :, None] - y0 - 0.1 * (xx[None, None, :] - x0)) ** 2) / (2 * 0.02 ** 2))
        band = band * (np.abs(xx[None, None, :] - x0) < 0.2)
        fr[i] += 0.25 * band
        la[i] += 0.15 * band
    i = has("Pneumothorax")
    if len(i):
        rim = _ellipse(yy, xx, -0.35 + 0 * side[i], side[i] * 0.45, 0.35 + 0 * side[i], 0.22 + 0 * side[i], 0.3)
        fr[i] = fr[i] * (1 - 0.6 * rim) - 0.04 * rim
        la[i] -= 0.05 * _ellipse(yy, xx, -0.5 + 0 * side[i], 0 * side[i], 0.2 + 0 * side[i], 0.4 + 0 * side[i], 0.3)
    i = has("Lung Lesion")
    if len(i):
        r = (0.04 + 0.04 * p[i, 16]).astype(np.float32)
        cx = side[i] * (0.25 + 0.2 * p[i, 17])
        cy = -0.4 + 0.6 * p[i, 18]
        fr[i] += 0.40 * _ellipse(yy, xx, cy, cx, r, r, 0.3)
        la[i] += 0.30 * _ellipse(yy, xx, cy, 0.1 * side[i], r, r, 0.3)
    i = has("Pleural Other")
    if len(i):
        ring = _ellipse(yy, xx, -0.08 + 0 * side[i], side[i] * 0.38, 0.64 + 0 * side[i], 0.30 + 0 * side[i], 0.2)
        inner = _ellipse(yy, xx, -0.08 + 0 * side[i], side[i] * 0.38, 0.60 + 0 * side[i], 0.26 + 0 * side[i], 0.2)
        fr[i] += 0.22 * np.clip(ring - inner, 0, 1) * (yy[None, :, None] < 0.0)
    i = has("Fracture")
    if len(i):
        y0 = (-0.5 + 0.8 * p[i, 19])[:, None, None]
        x = xx[None, None, :]
        seg = (np.abs(yy[None, :, None] - y0 - 0.25 * np.abs(x)) < 0.025) & (np.abs(np.abs(x) - 0.72) < 0.12)
        gap = np.abs(np.abs(x) - 0.72) < 0.025
        fr[i] += 0.35 * (seg & ~gap)
    i = has("Support Devices")
    if len(i):
        x0 = (-0.12 + 0.06 * p[i, 20])[:, None, None]
        tube = ((np.abs(xx[None, None, :] - x0 - 0.05 * yy[None, :, None]) < 0.018)
                & (yy[None, :, None] < 0.2 + 0.2 * p[i, 21, None, None]))
        fr[i] += 0.55 * tube
        la[i] += 0.45 * (np.abs(xx[None, None, :] + 0.1) < 0.018) * (yy[None, :, None] < 0.2)
        box = ((p[i, 22] < 0.5)[:, None, None] & (np.abs(xx[None, None, :] + 0.55) < 0.09)
               & (np.abs(yy[None, :, None] + 0.6) < 0.06))
        fr[i] += 0.6 * box
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
