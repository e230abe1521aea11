"""Tests of the training loop, its CLI, exact resume after a kill, and the experiment runner.

Everything runs the ``tiny`` config (a ~0.1 M-parameter model on 24 training studies at 32 px)
on the shipped data (real reports, stand-in images) on one CPU thread.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from camegrad_mini.rrg import experiment as E
from camegrad_mini.rrg import train as T

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    cfg = T.get_config("tiny")
    return T.prepare_data(cfg, "cpu")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- pieces ------------------------------------------------------------------------------------

def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [T.lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))  # neighbours: monotone decay after warm-up
    assert T.lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert T.lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)  # cosine midpoint


@pytest.mark.parametrize("over, word", [(dict(method="adam"), "method"), (dict(batch_size=1), "batch_size"),
                                        (dict(lr=0.0), "lr"), (dict(align_weight=0.5), "align"),
                                        (dict(task_weights=(1.0,)), "task_weights"), (dict(n_train=1), "n_train"),
                                        (dict(device="tpu"), "device"), (dict(max_grad_norm=0.0), "max_grad_norm")])
def test_bad_config_raises_naming_the_field(over, word):
    with pytest.raises(ValueError, match=word):
        T.get_config("tiny", **over)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown config"):
        T.get_config("huge")
    with pytest.raises(ValueError, match="epoch"):
        T.get_config("tiny", epoch=3)


def test_encode_marks_padding_by_length_even_when_ids_coincide():
    tok = SimpleNamespace(pad_id=0, bos_id=0, eos_id=0, encode=lambda r: [0] + [int(w) for w in r.split()] + [0])
    inputs, targets = T._encode(tok, ["5 6", "7 8 9 10 11"], max_len=4)
    assert inputs.tolist() == [[0, 5, 6, 0], [0, 7, 8, 9]]
    assert targets.tolist() == [[5, 6, 0, -100], [7, 8, 9, 10]]  # eos is a target; padding is -100


def test_augment_keeps_range_and_is_identity_when_off():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 2, 32, 32), dtype=torch.uint8)
    x[:, 1] = x[:, 0]
    cfg = T.get_config("tiny")
    y = T.augment(x, cfg)
    assert y.shape == x.shape and y.dtype == torch.float32 and 0 <= float(y.min()) and float(y.max()) <= 1
    assert torch.equal(y[:, 0], y[:, 1])  # one geometric transform per study, both views alike
    assert not torch.allclose(y, x.float() / 255)
    off = T.get_config("tiny", augment=False)
    assert torch.equal(T.augment(x, off), x.float() / 255)


def test_prepared_data_matches_the_config(data):
    tr = data.splits["train"]
    assert len(tr) == 24 and len(data.splits["val"]) == 8 and len(data.splits["test"]) == 8
    assert tr.images.dtype == torch.uint8 and tr.images.shape[1:] == (2, 32, 32)
    assert tr.labels.shape == (24, 14)
    assert bool((tr.tokens[:, 0] == data.tokenizer.bos_id).all())
    assert bool(((tr.targets == data.tokenizer.eos_id).sum(1) <= 1).all())


# -- the loop ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for m in ("ls", "came", "pcgrad", "cagrad"):
        cfg = T.get_config("tiny", method=m, device="cpu")
        out[m] = (T.train(cfg, root / m, resume=False, data=data), root / m)
    return out


@pytest.mark.parametrize("method", ["ls", "came", "pcgrad", "cagrad"])
def test_every_method_trains_and_records_conflict(runs, method):
    s, d = runs[method]
    steps = _rows(d / "steps.csv")
    assert len(steps) == s["steps"] == 2 * (24 // 8)
    assert 0.0 <= s["conflict_share"] <= 1.0 and -1.0 <= s["mean_cosine"] <= 1.0
    share = np.mean([float(r["inner"]) < 0 for r in steps])
    assert s["conflict_share"] == pytest.approx(share)
    assert all(-1.0 - 1e-6 <= float(r["cosine"]) <= 1.0 + 1e-6 for r in steps)
    assert len(_rows(d / "metrics.csv")) == 2
    gens = [json.loads(line) for line in open(d / "generations_test.jsonl")]
    assert len(gens) == 8 and all({"id", "reference", "generated"} <= set(g) for g in gens)
    assert 0.0 <= s["test_f1_macro"] <= 1.0
    assert s["images_are_standins"] is True
    assert (d / "best.pt").exists() and (d / "last.pt").exists()


def test_same_seed_same_start_different_methods_different_end(runs):
    """Methods share initialisation and data order (identical first-step losses) and differ only
    by the aggregator (different final weights)."""
    first = {m: _rows(d / "steps.csv")[0] for m, (_, d) in runs.items()}
    assert len({r["loss_report"] for r in first.values()}) == 1
    w = {m: torch.load(d / "last.pt", weights_only=False)["model"]["cls_head.3.weight"] for m, (_, d) in runs.items()}
    assert not torch.equal(w["ls"], w["came"]) and not torch.equal(w["ls"], w["cagrad"])
    # PCGrad changes nothing unless the two task gradients conflict (inner product < 0)
    assert torch.equal(w["ls"], w["pcgrad"]) == (runs["pcgrad"][0]["conflict_share"] == 0.0)


def test_resume_refuses_a_different_config(tmp_path, data):
    T.train(T.get_config("tiny", method="ls", epochs=1, device="cpu"), tmp_path, data=data)
    with pytest.raises(ValueError, match="different config"):
        T.train(T.get_config("tiny", method="came", epochs=1, device="cpu"), tmp_path, data=data)


def _cli(out: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(T.EXIT_HOOK_ENV, None)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "camegrad_mini.rrg.train", "--method", "came", "--seed", "3", "--config", "tiny",
           "--out", str(out), "--device", "cpu", "--num-threads", "1", "--no-progress", "--epochs", "3"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_killed_run_resumes_exactly(tmp_path):
    """Kill a run right after its first epoch's checkpoint, rerun the same command, and compare
    with an uninterrupted run: parameters, optimizer state and step logs are bitwise identical."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = _cli(full)
    assert r.returncode == 0, r.stderr
    r = _cli(killed, {T.EXIT_HOOK_ENV: "0"})
    assert r.returncode == 75, r.stderr
    assert (killed / "last.pt").exists() and not (killed / "summary.json").exists()
    assert torch.load(killed / "last.pt", weights_only=False)["epoch"] == 0
    r = _cli(killed)
    assert r.returncode == 0, r.stderr
    a = torch.load(full / "last.pt", weights_only=False)
    b = torch.load(killed / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 9
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"], b["optimizer"]
    flat_a = [v for v in _tensors(sa)]
    flat_b = [v for v in _tensors(sb)]
    assert len(flat_a) == len(flat_b) > 0 and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "step_time_s"} for r in rows]  # noqa: E731
    assert drop(_rows(full / "steps.csv")) == drop(_rows(killed / "steps.csv"))
    ga = [json.loads(x)["generated"] for x in open(full / "generations_test.jsonl")]
    gb = [json.loads(x)["generated"] for x in open(killed / "generations_test.jsonl")]
    assert ga == gb


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_cli_reports_bad_arguments_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--method", "adam", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert T.main(["--method", "ls", "--config", "tiny", "--out", str(tmp_path), "--batch-size", "1"]) == 2
    assert "batch_size" in capsys.readouterr().err
    rc = T.main(["--method", "ls", "--config", "tiny", "--out", str(tmp_path / "o"),
                 "--data-root", str(tmp_path / "nowhere")])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    assert T.main(["--method", "ls", "--config", "tiny", "--out", str(tmp_path), "--overrides", "{oops"]) == 2
    assert "overrides" in capsys.readouterr().err


# -- the experiment runner ---------------------------------------------------------------------

def test_aggregate_means_sds_and_paired_differences():
    rows = [{"method": "ls", "seed": s, "test_f1_macro": v} for s, v in [(0, 0.10), (1, 0.20), (2, 0.30)]]
    rows += [{"method": "came", "seed": s, "test_f1_macro": v} for s, v in [(0, 0.15), (1, 0.20), (2, 0.40)]]
    agg = E.aggregate(rows, metrics=["test_f1_macro"])
    ls, came = agg["methods"]["ls"]["test_f1_macro"], agg["methods"]["came"]["test_f1_macro"]
    assert ls["mean"] == pytest.approx(0.2) and ls["sd"] == pytest.approx(0.1)
    d = came["paired_diff"]
    assert d["per_seed"] == pytest.approx([0.05, 0.0, 0.1]) and d["mean"] == pytest.approx(0.05)
    assert d["wins"] == 2 and "paired_diff" not in ls
    assert list(agg["methods"]) == ["ls", "came"]  # the baseline first


def test_bench_times_every_method_and_plain_ls():
    b = E.bench("tiny", ["ls_plain", "ls", "came"], steps=2, warmup=1, overrides={"device": "cpu"})
    assert list(b["methods"]) == ["ls_plain", "ls", "came"]
    assert all(v["median_step_s"] > 0 and v["studies_per_s"] > 0 for v in b["methods"].values())
    assert b["methods"]["ls_plain"]["time_vs_ls_plain"] == 1.0
    with pytest.raises(ValueError, match="steps"):
        E.bench("tiny", ["ls"], steps=0)


def test_grid_posthoc_and_export_keep_only_small_files(tmp_path, monkeypatch):
    rows = E.run_grid("tiny", ["ls", "came"], [0, 1], tmp_path / "grid", overrides={"epochs": 1, "device": "cpu"})
    assert [(r["method"], r["seed"]) for r in rows] == [("ls", 0), ("ls", 1), ("came", 0), ("came", 1)]
    scored = E.posthoc(tmp_path / "grid", text=False)
    assert len(scored) == 4 and all("test_f1_macro" in m for m in scored)
    dest = E.export(tmp_path / "grid", tmp_path / "export", meta={"device": "cpu test"})
    assert not list(dest.rglob("*.pt"))
    res = E.load_results(dest)
    assert res["meta"]["device"] == "cpu test"
    assert res["aggregate"]["methods"]["came"]["test_f1_macro"]["paired_diff"]["n"] == 2
    assert "test_f1_macro" in res["always_normal"]
    table = E.format_table(res)
    assert table.splitlines()[1].startswith("ls") and "normal" in table
    assert E.load_results(tmp_path / "nothing") is None
    (tmp_path / "committed").mkdir()
    (tmp_path / "export").rename(tmp_path / "committed" / "iu_xray_gpu")
    monkeypatch.setenv("CAMEGRAD_RESULTS", str(tmp_path / "committed"))
    assert E.results_dir("iu_xray_gpu") == tmp_path / "committed" / "iu_xray_gpu"
    assert E.results_dir("no_such_results") is None
