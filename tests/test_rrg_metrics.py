"""Text metrics (pycocoevalcap), rule-labeler clinical efficacy, the always-normal floor."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from camegrad_mini.rrg import metrics as M
from camegrad_mini.rrg.labeler import NEGATIVE, POSITIVE, UNCERTAIN
from camegrad_mini.rrg.text import Tokenizer


def test_text_metrics_known_values_without_meteor():
    refs = ["the heart is normal .", "no pleural effusion ."]
    same = M.text_metrics(refs, refs, meteor=False)
    assert same["BLEU_4"] == pytest.approx(1.0, abs=1e-6) and same["ROUGE_L"] == pytest.approx(1.0)
    assert same["METEOR"] is None and "METEOR skipped" in same["notes"][0]
    # one word of four wrong, same length: clipped unigram precision 3/4, no brevity penalty
    r = M.text_metrics(["a b c d"], ["a b c e"], meteor=False)
    assert r["BLEU_1"] == pytest.approx(0.75, abs=1e-6)
    assert r["BLEU_2"] == pytest.approx(np.sqrt(0.75 * 2 / 3), abs=1e-6)
    with pytest.raises(ValueError, match="same length"):
        M.text_metrics(refs, refs[:1])
    empty = M.text_metrics(refs, ["", ""], meteor=False)        # empty generations score ~0, no crash
    assert empty["BLEU_1"] < 0.1


def test_meteor_skipped_with_note_when_java_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    r = M.text_metrics(["a b c"], ["a b c"])
    assert r["METEOR"] is None and "no `java`" in r["notes"][0] and r["BLEU_1"] > 0.99


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java (tested above: skipped with a note)")
def test_meteor_runs_with_java():
    r = M.text_metrics(["the heart is normal .", "no effusion ."], ["the heart is normal .", "small effusion ."])
    assert 0.3 < r["METEOR"] <= 1.0 and r["notes"] == []


def test_clinical_efficacy_by_hand():
    y = np.zeros((4, 14), np.float32)
    yh = np.zeros((4, 14), np.float32)
    y[0, 2] = y[1, 2] = 1          # Cardiomegaly in two references
    yh[0, 2] = yh[2, 2] = 1        # predicted in one of them and one other report
    y[3, 0] = yh[3, 0] = 1         # No Finding agrees once
    ce = M.clinical_efficacy(y, yh)
    pl = ce["per_label"]
    assert pl["Cardiomegaly"]["precision"] == 0.5 and pl["Cardiomegaly"]["recall"] == 0.5
    assert pl["No Finding"]["f1"] == 1.0 and pl["Edema"]["f1"] == 0.0
    assert ce["f1_macro"] == pytest.approx((0.5 + 1.0) / 14)
    assert ce["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))      # tp 2, fp 1, fn 1
    assert ce["f1_example"] == pytest.approx((1 + 0 + 0 + 1) / 4)        # report 2: empty truth, one guess
    # integer labeler codes: uncertain counts as positive, negative as absent
    codes = np.zeros((1, 14), np.int8)
    codes[0, 2], codes[0, 5] = UNCERTAIN, NEGATIVE
    assert M.clinical_efficacy(codes, np.where(codes == UNCERTAIN, POSITIVE, 0).astype(np.int8))["f1_micro"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        M.clinical_efficacy(y[:, :3], yh[:, :3])


def test_clinical_efficacy_from_reports_and_floor():
    refs = ["mild cardiomegaly . the lungs are clear .", "the heart is normal . the lungs are clear ."]
    ce = M.clinical_efficacy(refs, ["mild cardiomegaly .", "the lungs are clear ."])
    assert ce["f1_micro"] == 1.0
    floor = M.always_normal_floor(refs, report="the lungs are clear .", meteor=False)
    assert floor["ce"]["per_label"]["Cardiomegaly"]["recall"] == 0.0
    assert floor["ce"]["f1_example"] == pytest.approx(0.5)
    train = ["the lungs are clear ."] * 5 + ["the heart is normal . the lungs are clear ."] * 3 + ["cardiomegaly ."] * 9
    assert M.pick_normal_report(train) in {"the lungs are clear .", "the heart is normal . the lungs are clear ."}


def test_r2gen_references_truncate_and_map_unknown_words():
    tok = Tokenizer.fit(["the heart is normal ."] * 3, clean=False, max_len=5)
    assert M.r2gen_references(tok, ["the big heart is normal ."]) == ["the <unk> heart"]


def test_normal_report_constant_is_the_one_chosen_on_r2gen_train():
    import json
    from pathlib import Path

    from camegrad_mini.rrg.text import clean_report
    ann = json.loads((Path(__file__).parents[1] / "data_samples" / "iu_xray" / "annotation.json").read_text())
    assert M.pick_normal_report([clean_report(e["report"]) for e in ann["train"]]) == M.NORMAL_REPORT


def test_always_normal_floor_reads_labels_from_ce_refs():
    """Text is scored against `refs`, clinical labels against `ce_refs` (the full reports)."""
    refs = ["the lungs are clear ."] * 2
    full = ["the lungs are clear . there is cardiomegaly .", "the lungs are clear ."]
    plain = M.always_normal_floor(refs, report="the lungs are clear .", meteor=False)
    split = M.always_normal_floor(refs, report="the lungs are clear .", meteor=False, ce_refs=full)
    assert plain["text"] == split["text"]
    assert split["ce"]["f1_example"] < plain["ce"]["f1_example"]
    with pytest.raises(ValueError, match="ce_refs"):
        M.always_normal_floor(refs, report="x", meteor=False, ce_refs=full[:1])


def test_auroc_matches_the_pairwise_definition_with_ties():
    from camegrad_mini.rrg.metrics import auroc

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        s = rng.integers(0, 5, 40).astype(float)  # many ties
        if y.min() == y.max():
            continue
        pos, neg = s[y == 1], s[y == 0]
        pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
        assert auroc(y, s) == pytest.approx(pairs)
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_classifier_auroc_per_observation_and_macro_over_defined_ones():
    from camegrad_mini.rrg.metrics import classifier_auroc

    y = np.zeros((6, 14))
    y[:3, 1] = 1  # only observation 1 has both classes
    probs = np.full((6, 14), 0.5)
    probs[:, 1] = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3]
    out = classifier_auroc(y, probs)
    assert out["n_defined"] == 1 and out["macro"] == 1.0
    with pytest.raises(ValueError, match="probs must be"):
        classifier_auroc(y, probs[:, :3])


def test_text_diversity_sees_one_template_and_stutter():
    from camegrad_mini.rrg.metrics import text_diversity

    one = text_diversity(["the lungs are clear ."] * 10)
    assert one["distinct_share"] == pytest.approx(0.1) and one["n_triple_repeats"] == 0
    bad = text_diversity(["the the the heart", "clear . clear . clear", "a b c", "the heart the heart"])
    assert bad["n_triple_repeats"] == 1 and bad["distinct_share"] == 1.0
