"""Report cleaning, tokenizer round trips and the rule labeler on hand-labelled real reports."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from camegrad_mini.rrg.labeler import (BLANK, CHEXPERT_OBSERVATIONS, NEGATIVE, POSITIVE, STATE_NAMES, UNCERTAIN,
                                       label_report, label_reports, labels_to_binary)
from camegrad_mini.rrg.text import Tokenizer, clean_report

FIXTURES = Path(__file__).parent / "fixtures" / "rrg"
OBS_INDEX = {n: i for i, n in enumerate(CHEXPERT_OBSERVATIONS)}


def test_clean_report_follows_r2gen():
    raw = "1. Heart size normal.. 2. No XXXX, effusion (small); x-ray ok."
    assert clean_report(raw) == "heart size normal . no xxxx effusion small x-ray ok ."
    # R2Gen's quirk: the empty-sentence filter never fires, so ". ." gives an extra "." token
    assert clean_report("Clear lungs. .").split() == ["clear", "lungs", ".", "."]


def test_tokenizer_vocab_threshold_specials_and_round_trip():
    train = ["the heart is normal ."] * 3 + ["the lungs are clear ."] * 3 + ["rare word ."]
    tok = Tokenizer.fit(train, clean=False)
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert "rare" not in tok.stoi and "heart" in tok.stoi     # count 1 < threshold 3
    assert tok.itos[4:] == sorted(tok.itos[4:])                 # R2Gen sorts the vocabulary
    ids = tok.encode("the heart is clear .")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "the heart is clear ."
    assert tok.decode(tok.encode("the rare heart .")) == "the <unk> heart ."
    # truncation keeps eos and at most max_len ids
    long = " ".join(["the"] * 100)
    ids = tok.encode(long)
    assert len(ids) == 60 and ids[-1] == tok.eos_id
    batch = tok.encode_batch(["the heart .", long])
    assert batch.shape == (2, 60) and batch[0, 5] == tok.pad_id
    assert tok.decode_batch(batch)[0] == "the heart ."
    assert Tokenizer.from_dict(tok.to_dict()).itos == tok.itos
    with pytest.raises(ValueError, match="threshold"):
        Tokenizer(threshold=0)


def test_tokenizer_round_trip_on_real_reports():
    ann = json.loads((Path(__file__).parents[1] / "data_samples" / "iu_xray" / "annotation.json").read_text())
    train = [clean_report(e["report"]) for e in ann["train"]]
    tok = Tokenizer.fit(train, clean=False)
    assert 700 < len(tok) < 800                                  # R2Gen's IU vocabulary is about 760
    ok = [r for r in train if len(r.split()) <= 58]
    # rare words become <unk>, so the round trip is exact for the in-vocabulary reports
    inv = [r for r in ok if all(w in tok.stoi for w in r.split())]
    assert len(inv) > 0.8 * len(ok)
    assert all(tok.decode(tok.encode(r)) == " ".join(r.split()) for r in inv)  # up to R2Gen's double spaces


@pytest.mark.parametrize("case", json.loads((FIXTURES / "labeler_cases.json").read_text())["cases"],
                         ids=lambda c: c["id"])
def test_labeler_on_hand_labelled_reports(case):
    for text in (case["report"], clean_report(case["report"])):
        got = {CHEXPERT_OBSERVATIONS[j]: STATE_NAMES[int(s)] for j, s in enumerate(label_report(text)) if s != BLANK}
        assert got == case["labels"], text


@pytest.mark.parametrize("text, obs, state", [
    ("no pneumothorax or pleural effusion .", "Pleural Effusion", NEGATIVE),
    ("there is a small right pleural effusion .", "Pleural Effusion", POSITIVE),
    ("pneumonia cannot be excluded .", "Pneumonia", UNCERTAIN),
    ("findings may represent atelectasis .", "Atelectasis", UNCERTAIN),
    ("no change in the left pleural effusion .", "Pleural Effusion", POSITIVE),   # pseudo-negation
    ("no effusion but there is atelectasis .", "Atelectasis", POSITIVE),           # scope ends at "but"
    ("the previously seen pneumothorax has resolved .", "Pneumothorax", NEGATIVE),  # post-negation
    ("the heart is not enlarged .", "Cardiomegaly", NEGATIVE),
    ("heart size is mildly enlarged .", "Cardiomegaly", POSITIVE),
    ("normal heart size with enlarged pulmonary arteries .", "Cardiomegaly", NEGATIVE),
    ("opacity projecting over the heart .", "Cardiomegaly", BLANK),
    ("small pericardial effusion .", "Pleural Effusion", BLANK),
    ("findings of chf .", "Cardiomegaly", UNCERTAIN),                              # CheXpert's CHF rule
])
def test_labeler_rules(text, obs, state):
    assert label_report(text)[OBS_INDEX[obs]] == state


def test_no_finding_rule_and_binary():
    s = label_reports(["the lungs are clear . heart size normal .", "pacemaker in place . lungs are clear .",
                       "hiatal hernia . lungs are clear .", "mild cardiomegaly ."])
    assert list(s[:, 0]) == [POSITIVE, POSITIVE, BLANK, BLANK]   # devices do not count; other findings do
    b = labels_to_binary(np.array([[BLANK, POSITIVE, NEGATIVE, UNCERTAIN] + [0] * 10]))
    assert b.dtype == np.float32 and b[0, :4].tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="sequence"):
        label_reports("one string")


def test_mesh_mapping_and_agreement():
    from camegrad_mini.rrg.mesh import agreement, mesh_labels
    m = mesh_labels(["Cardiomegaly/borderline", "Costophrenic Angle/right/blunted", "Mediastinum/lymph nodes/enlarged",
                     "Surgical Instruments/mediastinum", "Calcified Granuloma/lung"])
    assert {CHEXPERT_OBSERVATIONS[j] for j in np.flatnonzero(m)} == {"Cardiomegaly", "Pleural Effusion"}
    assert mesh_labels(["normal"])[0] == 1 and mesh_labels([]).sum() == 0
    a = agreement(np.array([[1] + [0] * 13, [1] + [0] * 13]), np.array([[1] + [0] * 13, [0] * 14]))
    assert a["No Finding"]["precision"] == 0.5 and a["No Finding"]["recall"] == 1.0
    with pytest.raises(ValueError, match="sequence"):
        mesh_labels("normal")
