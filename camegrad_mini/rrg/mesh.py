"""Map the manual Open-i MeSH terms of a report to the 14 CheXpert observations.

Open-i's indexers coded every IU X-Ray report by hand with MeSH-style terms (``<MeSH><major>``
in the XML, the ``MeSH``/``Problems`` columns of the tabular export), e.g.
``Cardiomegaly/borderline`` or ``Opacity/lung/base/left``. They are independent of our rule
labeler, so they measure it: :func:`mesh_labels` turns a report's terms into 14 binary labels
and ``tools/rrg_report_figures.py`` reports per-observation precision/recall/F1.

Limits of this reference, to keep in mind when reading the agreement:

* the terms mark what is *present*; absence and uncertainty are not coded, so only the binary
  positive-or-uncertain label can be compared;
* they were coded from the whole report (findings *and* impression), while R2Gen's reports and
  our labels use the findings only;
* only ``<major>`` terms are used: the ``<automatic>`` ones were produced by software from the
  text and are not independent;
* the mapping is ours: CheXpert has no MeSH correspondence. Choices: ``Markings``, ``Density``,
  ``Cicatrix`` (scarring), ``Infiltrate``, ``Airspace Disease`` -> Lung Opacity; ``Nodule``,
  ``Mass``, ``Cavitation`` -> Lung Lesion (granulomas are *not* lesions, as in the labeler);
  ``Pulmonary Congestion``, ``Heart Failure`` -> Edema; ``Costophrenic Angle/blunted`` -> Pleural
  Effusion (the labeler calls blunting an uncertain effusion); ``Cardiac Shadow/enlarged`` ->
  Cardiomegaly; ``Mediastinum`` (not its lymph nodes) -> Enlarged Cardiomediastinum;
  ``Thickening/pleura`` -> Pleural Other; catheters, tubes, stents, implanted devices and
  sutures -> Support Devices (surgical clips, ``Surgical Instruments``, are not);
  ``normal`` -> No Finding.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .labeler import CHEXPERT_OBSERVATIONS


def _obs_of(term: str) -> set[str]:
    parts = [p.strip() for p in term.split("/")]
    head, mods = parts[0], set(p.lower() for p in parts[1:])
    out = set()
    if head == "normal":
        out.add("No Finding")
    if head == "Mediastinum" and "lymph nodes" not in mods:
        out.add("Enlarged Cardiomediastinum")
    if head == "Cardiomegaly" or (head == "Cardiac Shadow" and mods & {"enlarged", "borderline"}):
        out.add("Cardiomegaly")
    if head in ("Nodule", "Mass", "Cavitation"):
        out.add("Lung Lesion")
    if head in ("Opacity", "Airspace Disease", "Density", "Infiltrate", "Cicatrix", "Markings",
                "Pulmonary Fibrosis", "Lung Diseases, Interstitial"):
        out.add("Lung Opacity")
    if head in ("Pulmonary Edema", "Pulmonary Congestion", "Heart Failure"):
        out.add("Edema")
    if head == "Consolidation":
        out.add("Consolidation")
    if head == "Pneumonia":
        out.add("Pneumonia")
    if head in ("Pulmonary Atelectasis", "Volume Loss"):
        out.add("Atelectasis")
    if head in ("Pneumothorax", "Hydropneumothorax", "Hemopneumothorax"):
        out.add("Pneumothorax")
    if (head in ("Pleural Effusion", "Hydropneumothorax", "Hemothorax")
            or (head == "Costophrenic Angle" and "blunted" in mods)):
        out.add("Pleural Effusion")
    if (head == "Thickening" and "pleura" in mods) or head == "Pleura":
        out.add("Pleural Other")
    if head == "Fractures, Bone":
        out.add("Fracture")
    if head in ("Catheters, Indwelling", "Implanted Medical Device", "Medical Device", "Tube, Inserted",
                "Stents", "Sutures"):
        out.add("Support Devices")
    return out


def mesh_labels(terms: Sequence[str]) -> np.ndarray:
    """Binary ``float32 [14]`` labels from one report's ``<major>`` MeSH terms."""
    if isinstance(terms, str):
        raise ValueError("terms must be a sequence of MeSH strings, e.g. ['Cardiomegaly/mild']")
    found = set().union(*(_obs_of(t) for t in terms)) if terms else set()
    return np.array([o in found for o in CHEXPERT_OBSERVATIONS], dtype=np.float32)


def agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-observation precision / recall / F1 / counts of binary ``pred`` against ``ref``."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    out = {}
    for j, o in enumerate(CHEXPERT_OBSERVATIONS):
        tp = int((pred[:, j] & ref[:, j]).sum())
        npred, nref = int(pred[:, j].sum()), int(ref[:, j].sum())
        p = tp / npred if npred else 0.0
        r = tp / nref if nref else 0.0
        out[o] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                  "n_mesh": nref, "n_labeler": npred}
    return out
