"""What the model writes and how it scores: decoding reports (:func:`generate_reports`), the
classifier's probabilities (:func:`classifier_probs`), the validation NLL and the rule-labeler
clinical scores (:func:`clinical_scores`, whose macro-F1 selects the checkpoint).

Chapter 6, sections 6.2 (*Labels and their floors*) and 6.6 (*What the encoder knows and what
the text says*).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camegrad_mini.rrg.model import ReportGenerator
from camegrad_mini.rrg.training_data import SplitTensors

__all__ = ["generate_reports", "classifier_probs", "validation_nll", "clinical_scores"]

@torch.no_grad()
def generate_reports(model: ReportGenerator, split: SplitTensors, tokenizer: Any, batch_size: int,
                     beam_size: int = 1, autocast: Any = nullcontext, **decoding: Any) -> list[str]:
    """Decoded generated reports for every study in ``split`` (model put in eval mode);
    ``decoding`` goes to :meth:`ReportGenerator.generate` (``no_repeat_ngram``, ``length_penalty``).
    Chapter 6, section 6.6 (*Generated reports beside their references*)."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for i in range(0, len(split), batch_size):
        with autocast():
            ids = model.generate(split.images[i:i + batch_size], beam_size=beam_size, **decoding)
        texts.extend(tokenizer.decode(s) for s in ids)
    model.train(was_training)
    return texts


@torch.no_grad()
def classifier_probs(model: ReportGenerator, split: SplitTensors, batch_size: int,
                     autocast: Any = nullcontext) -> np.ndarray:
    """The classification head's probabilities ``[N, n_obs]``: what the encoder knows, to read
    beside what the generated text says."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(split), batch_size):
        with autocast():
            logits = model.classify(model.encode(split.images[i:i + batch_size]))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.n_obs), dtype=np.float32)


@torch.no_grad()
def validation_nll(model: ReportGenerator, split: SplitTensors, batch_size: int, autocast: Any = nullcontext) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(split), batch_size):
        sl = slice(i, i + batch_size)
        with autocast():
            logits = model(split.images[sl], split.tokens[sl]).logits
        t = split.targets[sl]
        total += float(F.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=-100, reduction="sum"))
        count += int((t != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def clinical_scores(generated: list[str], references: list[str]) -> dict[str, float]:
    """Rule-labeler clinical efficacy of generated against reference reports (same labeler on both).
    Chapter 6, section 6.2 (*Labels and their floors*)."""
    from camegrad_mini.rrg.metrics import clinical_efficacy

    return {k: float(v) for k, v in clinical_efficacy(references, generated).items()
            if isinstance(v, (int, float, np.floating, np.integer)) and k != "n"}


def _macro_f1(scores: dict[str, float]) -> float:
    return scores["f1_macro"]
