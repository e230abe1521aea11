"""Fault injection for the report metrics and the rule labeler: one test per fault, each naming it.

METEOR is pycocoevalcap's Java program, fed one line per hypothesis on stdin: a test that needs it
runs the metric in a child process with a timeout (a hang fails the test instead of stalling the
suite, and the Java grandchild is killed with its process group) and is skipped without ``java``.
The other tests replace the scorers with recorders and need no Java.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from camegrad_mini.rrg import labeler as L
from camegrad_mini.rrg import metrics as M
from camegrad_mini.rrg.labeler import BLANK, CHEXPERT_OBSERVATIONS, POSITIVE, label_report, label_reports
from camegrad_mini.rrg.text import clean_report

ROOT = Path(__file__).parents[2]
DIRTY = ["the heart\nis normal .", "no\r\neffusion ||| .", "small\x00 effusion\t.\x0b", "clear\u2028lungs ."]


def _python(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in its own process group; kill the whole group on timeout."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)        # the METEOR java child too
        proc.communicate()
        pytest.fail(f"timed out after {timeout} s (hang)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class _Recorder:
    """Stands in for one pycocoevalcap scorer: records every string it is given, scores 0.5."""

    seen: list[str] = []

    def __init__(self, *args, **kwargs):
        pass

    def compute_score(self, gts, res, **kwargs):
        for d in (gts, res):
            for texts in d.values():
                _Recorder.seen.extend(texts)
        return ([0.5] * 4 if isinstance(self, _FakeBleu) else 0.5), None


class _FakeBleu(_Recorder):
    pass


@pytest.fixture
def recorded(monkeypatch):
    """Every scorer (METEOR included, as if Java were installed) replaced by a recorder."""
    import pycocoevalcap.bleu.bleu as bleu
    import pycocoevalcap.cider.cider as cider
    import pycocoevalcap.meteor.meteor as meteor
    import pycocoevalcap.rouge.rouge as rouge

    monkeypatch.setattr(bleu, "Bleu", _FakeBleu)
    for mod, name in ((cider, "Cider"), (meteor, "Meteor"), (rouge, "Rouge")):
        monkeypatch.setattr(mod, name, _Recorder)
    monkeypatch.setattr(M, "java_available", lambda: True)
    monkeypatch.setattr(M, "_close_meteor", lambda scorer: None)
    _Recorder.seen = []
    return _Recorder.seen


# --- 1. METEOR and line breaks ----------------------------------------------------------------

def test_no_scorer_receives_a_line_break_control_char_or_separator(recorded):
    """Fault 1a: newlines, CR, other control characters and METEOR's '|||' reached the scorers verbatim."""
    M.text_metrics(DIRTY, DIRTY[::-1])
    assert recorded, "no scorer was called"
    for s in recorded:
        assert "|||" not in s and s.isprintable(), repr(s)
    assert "the heart is normal ." in " ".join(" ".join(s.split()) for s in recorded)   # words are kept
    recorded.clear()
    M.text_metrics(["heart  size normal ."], ["heart size normal ."])   # R2Gen's double spaces
    assert set(recorded) == {"heart  size normal .", "heart size normal ."}  # clean text: untouched


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_does_not_hang_on_a_newline_in_a_hypothesis_or_reference():
    """Fault 1b: METEOR (line-based Java stdin) hung forever on a hypothesis or reference containing \\n or \\r."""
    res = _python(f"""
        import json
        from camegrad_mini.rrg.metrics import text_metrics
        dirty = {DIRTY!r}
        clean = [" ".join(s.replace("|||", " ").replace("\\x00", " ").split()) for s in dirty]
        a = text_metrics(dirty, dirty[::-1])
        b = text_metrics(clean, clean[::-1])
        print(json.dumps([a["METEOR"], b["METEOR"]]))
    """, timeout=150)
    assert res.returncode == 0, res.stderr
    dirty, clean = json.loads(res.stdout.strip().splitlines()[-1])
    assert dirty is not None and dirty == pytest.approx(clean)       # same score as the cleaned text


class _FailingMeteor:
    """A METEOR whose reply is garbage: like pycocoevalcap's, compute_score raises holding its lock."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.meteor_p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def compute_score(self, gts, res):
        self.lock.acquire()
        return float(b"Error: specify SCORE or EVAL or SING")


def test_a_failing_meteor_raises_instead_of_deadlocking_in_cleanup(monkeypatch):
    """Fault 1c: when METEOR failed, closing it waited forever on the lock pycocoevalcap kept (the hang of 1b)."""
    import threading

    import pycocoevalcap.meteor.meteor as meteor

    monkeypatch.setattr(meteor, "Meteor", _FailingMeteor)
    monkeypatch.setattr(M, "java_available", lambda: True)
    caught = []

    def run():
        try:
            M.text_metrics(["a b ."], ["a b ."])
        except Exception as e:  # noqa: BLE001 (handed to the test thread)
            caught.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "text_metrics hung after METEOR failed"
    assert len(caught) == 1 and isinstance(caught[0], RuntimeError) and "METEOR" in str(caught[0])


# --- 2. None and mismatched lengths -----------------------------------------------------------

@pytest.mark.parametrize("side", ["refs", "hyps"])
@pytest.mark.parametrize("bad", [None, 3, b"bytes"], ids=["None", "int", "bytes"])
def test_text_metrics_names_a_non_string_entry_before_any_scorer_starts(recorded, side, bad):
    """Fault 2a: None (or any non-str) as a reference or hypothesis gave a raw traceback deep in a scorer."""
    good = ["the heart is normal .", "no effusion .", "clear lungs ."]
    texts = {"refs": list(good), "hyps": list(good)}
    texts[side][2] = bad
    what = "None" if bad is None else f"of type {type(bad).__name__}"
    with pytest.raises(TypeError, match=rf"{side}\[2\] is {what}"):
        M.text_metrics(texts["refs"], texts["hyps"])
    with pytest.raises(TypeError, match=r"\[2\].*id 'CXR3'"):
        M.text_metrics(texts["refs"], texts["hyps"], ids=["CXR1", "CXR2", "CXR3"])
    assert recorded == []                                            # raised before any scorer ran


@pytest.mark.parametrize("position", [0, 1])
def test_clinical_efficacy_names_a_non_string_report(position):
    """Fault 2b: None among CE reports gave a misleading 'labels must have shape' or an unnamed labeler error."""
    hyps = ["mild cardiomegaly .", "the lungs are clear ."]
    hyps[position] = None
    with pytest.raises(TypeError, match=rf"hyps\[{position}\] is None"):
        M.clinical_efficacy(["mild cardiomegaly .", "the lungs are clear ."], hyps)
    with pytest.raises(TypeError, match=rf"refs\[{position}\].*id 's{position}'"):
        M.clinical_efficacy(hyps, ["a .", "b ."], ids=["s0", "s1"])
    with pytest.raises(ValueError, match=rf"reports\[{position}\]"):
        label_reports(hyps)


def test_mismatched_lengths_are_named_before_any_work():
    """Fault 2c: refs and hyps of different lengths: CE labelled everything, then compared array shapes."""
    with pytest.raises(ValueError, match=r"refs \(2\) and hyps \(1\).*same length"):
        M.text_metrics(["a .", "b ."], ["a ."], meteor=False)
    with pytest.raises(ValueError, match=r"refs \(2\) and hyps \(1\).*same length"):
        M.clinical_efficacy(["a .", "b ."], ["a ."])
    with pytest.raises(ValueError, match=r"ids \(1\).*same length"):
        M.text_metrics(["a .", "b ."], ["a .", "b ."], meteor=False, ids=["x"])


# --- 3. Empty reports and No Finding ----------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   ", ".", " . . ", ", ; !", "\n"])
def test_a_report_with_no_words_gets_no_positive_label(text):
    """Fault 3a: an empty or punctuation-only report was labelled No Finding (positive)."""
    assert label_report(text).tolist() == [BLANK] * len(CHEXPERT_OBSERVATIONS)
    assert label_report(clean_report(text)).tolist() == [BLANK] * len(CHEXPERT_OBSERVATIONS)


def test_empty_generations_earn_no_clinical_efficacy():
    """Fault 3b: always-empty generations scored a true positive on No Finding against normal references."""
    refs = ["the lungs are clear .", "the heart is normal . the lungs are clear .", "mild cardiomegaly ."]
    ce = M.clinical_efficacy(refs, ["", " . ", ""])
    nf = ce["per_label"]["No Finding"]
    assert nf["support"] == 2 and nf["precision"] == nf["recall"] == nf["f1"] == 0.0
    assert ce["f1_micro"] == ce["f1_example"] == ce["f1_macro"] == 0.0
    assert M.clinical_efficacy(refs, refs)["per_label"]["No Finding"]["f1"] == 1.0   # words still count
    assert label_report("xxxx .")[0] == POSITIVE                      # any word is "saying something"


# --- 4. Cost of many mentions in one clause ---------------------------------------------------

def _seconds(text: str, repeats: int = 3, bound: float | None = None) -> float:
    """Best of ``repeats`` timings of labelling ``text`` (cache cleared). With a ``bound``, stop
    early once a run is under it, or over four times it (clearly not noise)."""
    best = float("inf")
    for _ in range(repeats):
        L._label_cached.cache_clear()
        t = time.perf_counter()
        label_report(text)
        run = time.perf_counter() - t
        best = min(best, run)
        if bound is not None and (best < bound or run > 4 * bound):
            break
    return best


@pytest.mark.parametrize("phrase", ["cardiomegaly ", "there is a small pleural effusion ", "enlarged heart ",
                                    "heart , ", "no edema and ", "there is device ", "no change device , "])
def test_labeler_time_grows_linearly_with_mentions_in_one_clause(phrase):
    """Fault 4a: the labeler's time grew with the square of the mentions in one clause (104k characters: 42 s)."""
    n = 1000
    small = _seconds(phrase * n)
    big = _seconds(phrase * (4 * n), bound=8 * small)    # linear: about 4x; quadratic: about 16x
    assert big < 8 * small, f"{n} mentions: {small:.3f} s, {4 * n}: {big:.3f} s"


def test_labels_of_every_iu_report_are_unchanged_by_the_near_linear_rewrite():
    """Fault 4b (guard): the fix of 4a must not change one label of the 2,955 IU reports, raw or cleaned.

    The hash is of the labels the quadratic labeler gave; a deliberate rule change must update it.
    """
    ann = json.loads((ROOT / "data_samples" / "iu_xray" / "annotation.json").read_text())
    raw = [e["report"] for split in ("train", "val", "test") for e in ann[split]]
    labels = np.stack([L._label_uncached(t) for t in raw + [clean_report(r) for r in raw]]).astype(np.int8)
    assert labels.shape == (5910, 14)
    assert hashlib.sha256(labels.tobytes()).hexdigest() == \
        "9836ea807e43c5a48235a1f64eb541b7847e630727f162ae0cbe90999affd388"
