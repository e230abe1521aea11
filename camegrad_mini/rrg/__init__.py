"""IU X-Ray data layer for report generation: layouts, download, image cache, stand-ins, text, labels, metrics.

Everything chapter 6 needs *before* a model exists. The model, the training loop and their CLI
live next to these modules (``model.py``, ``train.py``) and build on the API below.

Quick start (the names the trainer relies on)::

    from camegrad_mini.rrg import load_iu_xray, Tokenizer, CHEXPERT_OBSERVATIONS, label_reports
    ds = load_iu_xray(root=None, images="auto", image_size=128, strict=False, seed=0)
    tr = ds.splits["train"]          # also "val", "test"
    tr.ids, tr.reports               # list[str]; reports are R2Gen-cleaned findings
    tr.images                        # np.uint8 [N, 2, H, W]  (view 0 = first, usually frontal)
    tr.labels                        # np.float32 [N, 14]: 1 = positive or uncertain, else 0
    tr.label_states                  # np.int8 [N, 14]: 0 blank, 1 pos, 2 neg, 3 uncertain
    tr.standin                       # np.bool_ [N]: True where the images are stand-ins
    tok = ds.tokenizer               # fitted on train (threshold 3, max_len 60)
    tok.encode(report) -> list[int]  # [bos] + words + [eos], at most 60 ids
    tok.decode(ids) -> str
    tok.encode_batch(reports) -> np.int64 [N, 60] padded with tok.pad_id
    ds.images_are_standins           # True if ANY returned image is a stand-in
    ds.image_note                    # one line for figure titles: which images were used
    print(ds.describe())             # counts, image source, vocabulary, skipped studies, notes

    from camegrad_mini.rrg.metrics import text_metrics, clinical_efficacy, always_normal_floor
    text_metrics(refs, hyps, meteor=True) -> {"BLEU_1".."BLEU_4", "METEOR" (None without Java),
                                               "ROUGE_L", "CIDEr", "notes"}
    clinical_efficacy(refs, hyps)   # reports or label arrays -> macro / example / micro P, R, F1
    always_normal_floor(refs, report=NORMAL_REPORT)   # the same metrics for a constant normal report

``root=None`` means the shipped ``data_samples/iu_xray``: the real R2Gen reports of all 2,955
studies, real radiographs for the few sample studies and labelled stand-ins for the rest. Point
``root`` at a folder prepared by ``python -m camegrad_mini.rrg.prepare`` (layout 1, R2Gen) to use
the real images.

Module layout (one obvious place per idea):

- ``paths``     where the data are: ``data_samples_dir()``, ``find_data_root()``, ``cache_dir()``;
                errors name the command that fetches or prepares the missing folder.
- ``layouts``   readers for the three layouts people have: (1) R2Gen ``annotation.json`` +
                ``images/<study>/<n>.png``; (2) raw Open-i ``NLMCXR_reports.tgz`` /
                ``NLMCXR_png.tgz``; (3) tabular ``indiana_reports.csv`` + ``indiana_projections.csv``
                + ``images_normalized/``; converters of (2) and (3) into (1).
- ``download``  Open-i downloader: progress bar, HTTP Range resume, size/sha256 check, atomic
                placement, clear offline message (``python -m camegrad_mini.rrg.download``).
- ``prepare``   CLI: ``python -m camegrad_mini.rrg.prepare --layout r2gen|openi|tabular --src S --out D``.
- ``cache``     one memory-mappable uint8 image cache per settings key, written atomically.
- ``standin``   labelled stand-in radiographs whose pictures depend on each study's labels.
- ``text``      R2Gen report cleaning and the word-level ``Tokenizer``.
- ``labeler``   rule-based labeler for the 14 CheXpert observations (``label_reports``).
- ``mesh``      the manual Open-i MeSH terms mapped to the 14 observations (to measure the labeler).
- ``metrics``   BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap) and clinical efficacy.
- ``dataset``   ``load_iu_xray`` and the ``IUXRay`` / ``Split`` containers.
- ``pipeline``  chapter 6's switch: ``run_chapter6(images="phantom"|"real")`` downloads, prepares,
                caches, trains and scores into a persistent folder (``default_output_dir()``),
                resuming what an earlier call left.

Only numpy is needed for the stand-in path (a GPU machine with torch, numpy and matplotlib
can load the data); Pillow is imported only to decode real PNGs, tqdm only to show progress,
pycocoevalcap only inside ``metrics.text_metrics``.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "load_iu_xray",
    "IUXRay",
    "Split",
    "Tokenizer",
    "clean_report",
    "CHEXPERT_OBSERVATIONS",
    "label_reports",
    "labels_to_binary",
    "BLANK",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "render_standins",
    "data_samples_dir",
    "run_chapter6",
    "default_output_dir",
]

# name -> module that defines it; imported on first use so that `import camegrad_mini.rrg`
# stays cheap and never needs Pillow, tqdm or pycocoevalcap.
_LAZY = {
    "load_iu_xray": "dataset",
    "IUXRay": "dataset",
    "Split": "dataset",
    "Tokenizer": "text",
    "clean_report": "text",
    "CHEXPERT_OBSERVATIONS": "labeler",
    "label_reports": "labeler",
    "labels_to_binary": "labeler",
    "BLANK": "labeler",
    "POSITIVE": "labeler",
    "NEGATIVE": "labeler",
    "UNCERTAIN": "labeler",
    "render_standins": "standin",
    "data_samples_dir": "paths",
    "run_chapter6": "pipeline",
    "default_output_dir": "pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
