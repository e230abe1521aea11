"""rrg.results on a real (tiny) exported experiment: LS and CAME-Grad x 2 seeds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camegrad_mini.rrg import experiment as E
from camegrad_mini.rrg.labeler import CHEXPERT_OBSERVATIONS
from camegrad_mini.rrg.results import RunFolder
from camegrad_mini.stats import paired_difference


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    E.run_grid("tiny", ["ls", "came"], [0, 1], root, overrides={"device": "cpu"})
    E.posthoc(root, text=False)
    dest = tmp_path_factory.mktemp("export") / "res"
    E.export(root, dest)
    return RunFolder(dest)


def test_missing_folder_names_the_export_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="export"):
        RunFolder(tmp_path)


def test_paired_difference_uses_the_same_seeds(folder):
    assert folder.methods == ["ls", "came"] and folder.seeds == [0, 1]
    ci = folder.paired("test_f1_macro", "came")
    ref = paired_difference(folder.values("came", "test_f1_macro"), folder.values("ls", "test_f1_macro"))
    assert ci.mean == pytest.approx(ref.mean) and ci.n == 2 and ci.df == 1


def test_results_json_carries_the_t_interval(folder):
    pd = folder.results["aggregate"]["methods"]["came"]["test_f1_macro"]["paired_diff"]
    ci = folder.paired("test_f1_macro", "came")
    if "ci_lo" in pd:  # absent only when a difference is not finite
        assert pd["ci_lo"] == pytest.approx(ci.lo) and pd["ci_hi"] == pytest.approx(ci.hi)


def test_per_observation_tables_and_support(folder):
    f1 = folder.per_label("test_f1_per_label")
    au = folder.per_label("test_cls_auroc_per_label")
    assert set(f1) == {"ls", "came"} and list(f1["ls"]) == list(CHEXPERT_OBSERVATIONS)
    assert all(0 <= v <= 1 for v in f1["came"].values())
    assert all(np.isnan(v) or 0 <= v <= 1 for v in au["ls"].values())
    sup = folder.support()
    gens = folder.generations("ls", 0)
    assert sum(sup.values()) >= 1 and len(gens) == folder.runs[0]["n_test"]


def test_conflict_curve_is_a_moving_share(folder):
    steps = folder.steps("came", 0)
    x, share = folder.conflict_curve("came", 0, window=2)
    assert len(share) == len(steps) - 1 and np.all((share >= 0) & (share <= 1))
    assert share.mean() == pytest.approx(np.convolve([float(r["conflict"]) for r in steps], [0.5, 0.5], "valid").mean())
    with pytest.raises(ValueError, match="window"):
        folder.conflict_curve("came", 0, window=10_000)


def test_reports_of_gives_every_method_and_the_findings(folder):
    sid = folder.generations("came", 1)[0]["id"]
    (row,) = folder.reports_of([sid])
    assert set(row["generated"]) == {"ls", "came"} and set(row["findings"]) <= set(CHEXPERT_OBSERVATIONS)
    with pytest.raises(KeyError, match="not among"):
        folder.reports_of(["no-such-study"])


def test_posthoc_writes_diversity_and_classifier_auroc(folder):
    m = folder.posthoc("ls", 0)
    assert 0 < m["test_distinct_share"] <= 1 and m["test_n_triple_repeats"] >= 0
    assert "test_cls_auroc_macro" in m and len(m["test_cls_auroc_per_label"]) == 14
    json.dumps(m)  # plain JSON (NaN allowed by Python's json)
