"""R2Gen's report cleaning and a word-level tokenizer.

``clean_report`` re-implements ``Tokenizer.clean_report_iu_xray`` of zhjohnchan/R2Gen
(``modules/tokenizers.py``) so that vocabulary, lengths and BLEU references match the numbers
most IU X-Ray papers report. It lower-cases, drops enumeration markers, removes punctuation
inside sentences, keeps digits and the anonymization token (``XXXX`` becomes ``xxxx``, which stays
in the vocabulary), and ends every sentence with a separate ``.`` token.

``Tokenizer`` keeps R2Gen's vocabulary rule (words with count >= 3 on the *training* split,
sorted alphabetically, plus ``<unk>``) and its maximum length (60 ids including bos/eos), with
two documented differences:

* R2Gen uses id 0 for padding, begin and end alike; here ``<pad>`` = 0, ``<bos>`` = 1,
  ``<eos>`` = 2 and ``<unk>`` = 3 are distinct, so a decoder can tell "stop" from "padding".
* R2Gen truncates ``[0] + ids + [0]`` to 60, so a long report loses its end token; here the
  words are truncated to ``max_len - 2`` and ``<eos>`` is always kept. About 8 % of IU
  findings are affected.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# R2Gen's class verbatim. Note `:-\[` is a *range* from ':' to '[' that also deletes `;<=>?@` and
# A-Z (harmless after lower-casing); a hyphen is therefore NOT deleted ("x-ray" stays "x-ray").
_SENT_PUNCT = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_ENUM_DOT = (". 2. ", ". 3. ", ". 4. ", ". 5. ", " 2. ", " 3. ", " 4. ", " 5. ")


def clean_report(report: str) -> str:
    """Clean one findings text exactly as R2Gen's ``clean_report_iu_xray`` does.

    >>> clean_report("Heart size normal. No XXXX, effusion.")
    'heart size normal . no xxxx effusion .'
    """
    if not isinstance(report, str):
        raise ValueError(f"report must be a str, got {type(report).__name__}")
    t = report.replace("..", ".").replace("..", ".").replace("..", ".").replace("1. ", "")
    for pattern in _ENUM_DOT:
        t = t.replace(pattern, ". ")
    sentences = t.strip().lower().split(". ")
    cleaned = []
    for sent in sentences:
        s = sent.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
        cleaned.append(_SENT_PUNCT.sub("", s))
    # R2Gen's empty-sentence filter compares a str with [] and never fires; we keep that quirk
    # (it produces an extra "." for reports ending in ". .") so that references are identical.
    return " . ".join(cleaned) + " ."


class Tokenizer:
    """Word-level tokenizer with R2Gen's vocabulary rule (see the module docstring).

    Parameters
    ----------
    threshold:
        Minimum count of a word in the fitting corpus to enter the vocabulary (R2Gen IU: 3).
    max_len:
        Maximum number of ids returned by :meth:`encode`, bos and eos included (R2Gen IU: 60).
    """

    PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
    SPECIALS = (PAD, BOS, EOS, UNK)

    def __init__(self, words: Sequence[str] = (), *, threshold: int = 3, max_len: int = 60) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 (bos, one word, eos), got {max_len}")
        self.threshold = int(threshold)
        self.max_len = int(max_len)
        words = sorted(set(words) - set(self.SPECIALS))
        self.itos: list[str] = list(self.SPECIALS) + words
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def fit(cls, reports: Iterable[str], *, threshold: int = 3, max_len: int = 60,
            clean: bool = True) -> "Tokenizer":
        """Build the vocabulary from ``reports`` (the training split only, as R2Gen does).

        ``clean=True`` applies :func:`clean_report` first; pass ``False`` for already cleaned text.
        """
        counts: Counter[str] = Counter()
        n = 0
        for r in reports:
            counts.update((clean_report(r) if clean else r).split())
            n += 1
        if n == 0:
            raise ValueError("reports must not be empty: a vocabulary needs a training corpus")
        return cls([w for w, c in counts.items() if c >= threshold], threshold=threshold, max_len=max_len)

    # -- ids ----------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab={len(self)}, threshold={self.threshold}, max_len={self.max_len})"

    def encode(self, report: str, *, clean: bool = False) -> list[int]:
        """``[bos] + word ids + [eos]``, words truncated to ``max_len - 2``; unknown words -> unk.

        The input is expected to be cleaned already (``load_iu_xray`` returns cleaned reports);
        pass ``clean=True`` for raw report text.
        """
        words = (clean_report(report) if clean else report).split()[: self.max_len - 2]
        return [self.bos_id] + [self.stoi.get(w, self.unk_id) for w in words] + [self.eos_id]

    def encode_batch(self, reports: Sequence[str], *, clean: bool = False) -> np.ndarray:
        """Encode and right-pad with ``pad_id`` to shape ``[N, max_len]`` (int64)."""
        out = np.full((len(reports), self.max_len), self.pad_id, dtype=np.int64)
        for i, r in enumerate(reports):
            ids = self.encode(r, clean=clean)
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first eos (or pad); bos is skipped, so ``decode(encode(r)) == r`` for
        a cleaned report whose words are all in the vocabulary and fit in ``max_len - 2``."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.bos_id:
                continue
            if i in (self.eos_id, self.pad_id):
                break
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside the vocabulary of size {len(self)}")
            words.append(self.itos[i])
        return " ".join(words)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(row) for row in batch]

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "max_len": self.max_len, "itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        itos = list(d["itos"])
        if tuple(itos[:4]) != cls.SPECIALS:
            raise ValueError(f"itos must start with {cls.SPECIALS}, got {tuple(itos[:4])}")
        tok = cls(itos[4:], threshold=d["threshold"], max_len=d["max_len"])
        if tok.itos != itos:
            raise ValueError("itos is not in the sorted order this Tokenizer produces")
        return tok
