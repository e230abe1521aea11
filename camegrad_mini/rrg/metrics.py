"""Text metrics (pycocoevalcap) and clinical efficacy (rule labeler) with the always-normal floor.

Text: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap 1.2, the package R2Gen, CMN and
PromptMRG use, on whitespace tokens without the PTB tokenizer (R2Gen's convention). METEOR
runs a Java program: when ``java`` is not on the PATH it is skipped and the result says so in
``notes`` instead of crashing. As in R2Gen, references should be the *decoded* cleaned reports
(truncated, ``<unk>``-mapped: :func:`r2gen_references`), identical for every compared method.
Every text is checked first (a ``str``, one hypothesis per reference: a bad entry is named by
index, and id when ``ids`` are given, before any scorer starts) and then made safe for the scorers
in one place, :func:`_scorer_text`: line breaks, other control characters and METEOR's field
separator ``|||`` become spaces (METEOR reads one line per hypothesis; a newline used to hang it).

Clinical efficacy ("rule-labeler CE", not CheXbert CE): the labeler of
:mod:`~camegrad_mini.rrg.labeler` is applied to references and generations alike; positive or
uncertain counts as positive (the CAME-Grad trainer's definition). Reported:

* macro precision / recall / F1 over the 14 observations (the paper's CE; per-label values with
  0 where undefined, as sklearn's ``zero_division=0``), and over the 13 abnormal ones;
* example-based P / R / F1 (PromptMRG): per report, then averaged; a report whose two label
  sets are both empty scores 0;
* micro P / R / F1 over all (report, observation) pairs.

An always-normal report is the floor every model must be shown against: on IU X-Ray about 60 %
of findings are normal, so a constant normal report scores well on example-F1 and BLEU.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .labeler import CHEXPERT_OBSERVATIONS, NEGATIVE, POSITIVE, UNCERTAIN, label_reports, labels_to_binary

# The always-normal report: what `pick_normal_report` returns on R2Gen's training split (a test
# checks this), so that a floor computed without the training reports is the same floor.
NORMAL_REPORT = ("the heart is normal in size and contour . there is no mediastinal widening . "
                 "the lungs are clear bilaterally . no large pleural effusion or pneumothorax . "
                 "the xxxx are intact .")


def java_available() -> bool:
    return shutil.which("java") is not None


# METEOR's Java program reads one "SCORE ||| ref ||| hyp" request per line of stdin: a line break
# inside a text splits a request in two and both sides wait on each other, and "|||" shifts the
# fields. No scorer means anything by other control characters either, so they go too.
_UNSAFE_FOR_SCORERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]|\|\|\|")


def _scorer_text(text: str) -> str:
    """``text`` as every scorer sees it: unsafe characters -> spaces, nothing else changed (ROUGE-L
    splits on single spaces, so collapsing R2Gen's double spaces would move published numbers)."""
    text = _UNSAFE_FOR_SCORERS.sub(" ", text)
    # an empty generation would crash some scorers; a lone "." scores (almost) zero as it should
    return text if text.strip() else "."


def _check_pair(refs, hyps, ids) -> None:
    """One hypothesis per reference (and one id per pair): checked before any work is done."""
    if isinstance(refs, str) or isinstance(hyps, str):
        raise ValueError("refs and hyps must be sequences of strings, not single strings")
    if len(refs) != len(hyps):
        raise ValueError(f"refs ({len(refs)}) and hyps ({len(hyps)}) must have the same length "
                         "(one hypothesis per reference)")
    if ids is not None and len(ids) != len(refs):
        raise ValueError(f"ids ({len(ids)}) and refs ({len(refs)}) must have the same length")


def _check_texts(texts, name: str, ids=None) -> None:
    """Every entry must be a report text: name the first one that is not, by index and id."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            where = f"{name}[{i}]" + (f" (id {ids[i]!r})" if ids is not None else "")
            what = "None" if t is None else f"of type {type(t).__name__} ({t!r:.40})"
            raise TypeError(f"{where} is {what}, not a report text (str)")


def text_metrics(refs: Sequence[str], hyps: Sequence[str], *, meteor: bool = True,
                 ids: Sequence | None = None) -> dict:
    """Corpus BLEU-1..4, METEOR, ROUGE-L, CIDEr of ``hyps`` against one reference each.

    ``ids`` (optional, one per pair) only name a bad entry in the error. Returns a dict with the
    metric keys (METEOR may be None) and ``notes`` (list of str).
    """
    _check_pair(refs, hyps, ids)
    if not len(refs):
        raise ValueError("refs must not be empty")
    _check_texts(refs, "refs", ids)
    _check_texts(hyps, "hyps", ids)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [_scorer_text(r)] for i, r in enumerate(refs)}
    res = {i: [_scorer_text(h)] for i, h in enumerate(hyps)}
    out: dict = {"notes": []}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"BLEU_{n + 1}"] = float(bleu[n])
    out["METEOR"] = None
    if not meteor:
        out["notes"].append("METEOR skipped (meteor=False)")
    elif not java_available():
        out["notes"].append("METEOR skipped: no `java` on the PATH (install a JRE, e.g. "
                            "`apt-get install default-jre-headless`); the other metrics are unaffected")
    else:
        out["METEOR"] = _meteor(gts, res)
    out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def _meteor(gts: dict, res: dict) -> float:
    """Corpus METEOR; a failure of the Java program is an error that says so, never a hang."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    except (ValueError, OSError) as e:      # a reply that is not a number, or a dead process
        raise RuntimeError(f"METEOR (pycocoevalcap's Java program) failed: {e}") from e
    finally:
        _close_meteor(scorer)


def _close_meteor(scorer) -> None:
    """Stop the METEOR Java process now (pycocoevalcap 1.2 only does it in ``__del__``)."""
    proc = getattr(scorer, "meteor_p", None)
    if proc is None:
        return
    # No waiting on scorer.lock: compute_score keeps it when it raises, so waiting would hang
    # forever. This scorer is ours alone, so killing its process without the lock is safe.
    proc.kill()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            stream.close()
        except (OSError, AttributeError):
            pass
    proc.wait()
    # pycocoevalcap's __del__ takes the lock, then closes and kills again (harmless): free the lock
    # a failed compute_score left taken, or the garbage collector would wait on it forever.
    if scorer.lock.locked():
        scorer.lock.release()


def _is_texts(x) -> bool:
    """Reports (or junk meant as reports, such as None), as opposed to a label array."""
    if isinstance(x, np.ndarray) and x.dtype.kind not in "OUS":
        return False
    return any(v is None or isinstance(v, str) for v in x)


def _as_binary(x, name: str = "reports", ids=None) -> np.ndarray:
    """Reports -> labeler; int codes (0 blank, 1 pos, 2 neg, 3 unc) or 0/1 floats -> binary."""
    if _is_texts(x):
        _check_texts(x, name, ids)
        return labels_to_binary(label_reports(list(x)))
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != len(CHEXPERT_OBSERVATIONS):
        raise ValueError(f"labels must have shape [N, 14], got {a.shape}")
    if a.dtype.kind in "iu":
        if not np.isin(a, (0, POSITIVE, NEGATIVE, UNCERTAIN)).all():
            raise ValueError("integer labels must be labeler codes 0/1/2/3")
        return labels_to_binary(a)
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError("float labels must be 0/1 (positive-or-uncertain)")
    return a.astype(np.float32)


def _prf(tp, fp, fn):
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=float), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=float), where=(tp + fn) > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return p, r, f


def clinical_efficacy(refs, hyps, *, ids: Sequence | None = None) -> dict:
    """Rule-labeler CE of ``hyps`` against ``refs`` (reports, or label arrays; module docstring).

    ``ids`` (optional, one per pair) only name a bad entry in the error.
    """
    _check_pair(refs, hyps, ids)
    y = _as_binary(refs, "refs", ids)
    yh = _as_binary(hyps, "hyps", ids)
    if y.shape != yh.shape:
        raise ValueError(f"refs and hyps must describe the same studies: {y.shape} vs {yh.shape}")
    tp = (y * yh).sum(0)
    fp = ((1 - y) * yh).sum(0)
    fn = (y * (1 - yh)).sum(0)
    p, r, f = _prf(tp, fp, fn)
    mp, mr, mf = _prf(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))
    inter = (y * yh).sum(1)
    npred, ntrue = yh.sum(1), y.sum(1)
    ex_p = np.divide(inter, npred, out=np.zeros_like(inter), where=npred > 0)
    ex_r = np.divide(inter, ntrue, out=np.zeros_like(inter), where=ntrue > 0)
    ex_f = np.divide(2 * inter, npred + ntrue, out=np.zeros_like(inter), where=(npred + ntrue) > 0)
    return {
        "precision_macro": float(p.mean()), "recall_macro": float(r.mean()), "f1_macro": float(f.mean()),
        "f1_macro_13": float(f[1:].mean()),
        "precision_example": float(ex_p.mean()), "recall_example": float(ex_r.mean()),
        "f1_example": float(ex_f.mean()),
        "precision_micro": float(mp[0]), "recall_micro": float(mr[0]), "f1_micro": float(mf[0]),
        "per_label": {o: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                          "support": int(y[:, j].sum())} for j, o in enumerate(CHEXPERT_OBSERVATIONS)},
        "n": int(len(y)),
    }


def r2gen_references(tokenizer, reports: Sequence[str]) -> list[str]:
    """R2Gen's references: cleaned reports after ``encode`` and ``decode`` (truncated, ``<unk>``)."""
    return [tokenizer.decode(tokenizer.encode(r)) for r in reports]


def _corpus_bleu4(refs: Sequence[str], hyp: str) -> float:
    """Fast corpus BLEU-4 of one constant hypothesis (used only to *choose* the normal report)."""
    h = hyp.split()
    num = np.zeros(4)
    den = np.zeros(4)
    ref_len = 0
    for r in refs:
        rw = r.split()
        ref_len += len(rw)
        for n in range(1, 5):
            hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(rw[i:i + n]) for i in range(len(rw) - n + 1))
            num[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            den[n - 1] += max(len(h) - n + 1, 0)
    if (num == 0).any():
        return 0.0
    bp = min(1.0, np.exp(1 - ref_len / (len(h) * len(refs))))
    return float(bp * np.exp(np.mean(np.log(num / den))))


def pick_normal_report(train_reports: Sequence[str], k: int = 40, max_refs: int = 400) -> str:
    """The always-normal report: among the ``k`` most frequent training reports that the labeler
    calls No Finding, the one with the best BLEU-4 against (a fixed subsample of) the training
    reports. Choosing on train only keeps the floor honest; see rrg-notes section 7."""
    counts = Counter(train_reports)
    normal = [r for r, _ in counts.most_common() if label_reports([r])[0, 0] == POSITIVE][:k]
    if not normal:
        raise ValueError("no training report is labelled No Finding")
    step = max(1, len(train_reports) // max_refs)
    refs = list(train_reports)[::step]
    return max(normal, key=lambda c: (_corpus_bleu4(refs, c), c))


def always_normal_floor(refs: Sequence[str], *, report: str | None = None,
                        train_reports: Sequence[str] | None = None, meteor: bool = True,
                        ce_refs: Sequence[str] | None = None) -> dict:
    """Text metrics and CE of one constant normal report for every study in ``refs``.

    The report is ``report`` if given, else :func:`pick_normal_report` on ``train_reports``, else
    :data:`NORMAL_REPORT`. ``ce_refs`` are the references the clinical labels are read from
    (default ``refs``). The book's trainer scores text against R2Gen-decoded references
    (:func:`r2gen_references`: truncated to 60 tokens) but labels the full cleaned reports, the
    text the training labels came from; pass those as ``ce_refs`` to get the same floor.
    """
    if report is None:
        report = pick_normal_report(train_reports) if train_reports is not None else NORMAL_REPORT
    hyps = [report] * len(refs)
    ce_refs = list(refs) if ce_refs is None else list(ce_refs)
    if len(ce_refs) != len(refs):
        raise ValueError(f"ce_refs has {len(ce_refs)} reports but refs has {len(refs)}")
    return {"report": report, "text": text_metrics(refs, hyps, meteor=meteor),
            "ce": clinical_efficacy(ce_refs, hyps)}


# --------------------------------------------------------------------------------------------
# Is the model writing about the image, or one template?
# --------------------------------------------------------------------------------------------
_TRIPLE = re.compile(r"(?:^|\s)(\S+)(?: \1){2,}(?=\s|$)")


def text_diversity(hyps: Sequence[str]) -> dict:
    """Degeneracy checks a score table hides: the share of studies whose report is distinct
    (distinct reports / studies), and how many reports repeat a token three or more times in a
    row ("the the the"). One template for every study gives ``distinct_share = 1/N``."""
    if not hyps:
        raise ValueError("hyps is empty")
    for i, h in enumerate(hyps):
        if not isinstance(h, str):
            raise TypeError(f"hyps[{i}] is {type(h).__name__}, not a report text (str)")
    return {"distinct_share": len(set(hyps)) / len(hyps),
            "n_triple_repeats": sum(bool(_TRIPLE.search(h)) for h in hyps),
            "mean_words": float(np.mean([len(h.split()) for h in hyps]))}


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for binary ``y`` (Mann-Whitney U with mid-ranks for
    ties); NaN when only one class is present."""
    y, score = np.asarray(y).astype(bool).ravel(), np.asarray(score, dtype=float).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):  # mid-ranks over runs of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classifier_auroc(ref_labels, probs) -> dict:
    """Per-observation AUROC of the classification head's probabilities ``[N, 14]`` against the
    reference labels (states or reports; positive or uncertain = 1): what the encoder knows,
    to read beside what the generated text says (:func:`clinical_efficacy`)."""
    y = _as_binary(ref_labels, "ref_labels", None)
    p = np.asarray(probs, dtype=float)
    if p.shape != y.shape:
        raise ValueError(f"probs must be [N, {y.shape[1]}] like the labels, got {p.shape}")
    per = {o: auroc(y[:, j], p[:, j]) for j, o in enumerate(CHEXPERT_OBSERVATIONS)}
    vals = [v for v in per.values() if not np.isnan(v)]
    return {"per_label": per, "macro": float(np.mean(vals)) if vals else float("nan"), "n_defined": len(vals)}
