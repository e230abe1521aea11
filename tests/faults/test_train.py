"""Fault catalogue, trainer and experiment runner (``python -m camegrad_mini.rrg.train`` and
``python -m camegrad_mini.rrg.experiment``): one test per reported fault, its docstring naming it.

House rules checked here: nothing exits 0 with a wrong or partial result; checkpoints are written
atomically and resume exactly; an error is one line (``error: ...``, no traceback) that names the
file and says what to do. Everything runs the ``tiny`` config in this process on one CPU thread;
the only subprocesses are a few lines of Python that hold a folder's lock, standing in for another
training that is using it.
"""
from __future__ import annotations

import contextlib
import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camegrad_mini.rrg import experiment as E
from camegrad_mini.rrg import train as T

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
BASE = ["--method", "came", "--seed", "1", "--config", "tiny", "--device", "cpu", "--num-threads", "1", "--no-progress"]

# another process holding OUT/.lock (what a running training does) until it is killed
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""

# the folder lock is fcntl.flock; where there is none (Windows) it is documented as a no-op
needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock")


@contextlib.contextmanager
def _held(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p.pid
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def _train(capsys, out: Path, *extra: str) -> tuple[int, str]:
    rc = T.main([*BASE, "--out", str(out), *extra])
    return rc, capsys.readouterr().err


def _experiment(capsys, *argv: str) -> tuple[int, str]:
    rc = E.main(list(argv))
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The user sees exactly one ``error:`` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: Path, drop: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != drop} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run (2 epochs, 6 steps), made through the command line."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert T.main([*BASE, "--out", str(out)]) == 0
    return out


# -- row 1: two trainings into one folder ---------------------------------------------------------

@needs_flock
def test_second_training_into_a_busy_out_fails_at_once(capsys, tmp_path, finished):
    """Row 1a: two trainings into one --out interleaved steps.csv (420 rows for 240 steps) and exited 0."""
    out = tmp_path / "run"
    _copy(finished, out)
    before = _snapshot(out)
    with _held(out) as pid:
        rc, err = _train(capsys, out)
    line = _one_error_line(err)
    assert rc in (1, 2)
    assert str(out) in line and "in use by another training" in line and f"pid {pid}" in line and "--out" in line
    assert ({k: v for k, v in _snapshot(out).items() if k != ".lock"}
            == {k: v for k, v in before.items() if k != ".lock"})


def test_atomic_writes_use_private_temp_names(capsys, tmp_path):
    """Row 1b: every writer used the fixed OUT/<name>.tmp, so two writers renamed each other's
    half-written files."""
    out = tmp_path / "run"
    out.mkdir()
    foreign = {n: f"half-written by another process: {n}".encode()
               for n in ("best.pt.tmp", "last.pt.tmp", "summary.json.tmp", "config.json.tmp",
                         "generations_test.jsonl.tmp")}
    for n, b in foreign.items():
        (out / n).write_bytes(b)
    rc, err = _train(capsys, out, "--epochs", "1")
    assert rc == 0, err
    assert all((out / n).read_bytes() == b for n, b in foreign.items())  # nobody else's file touched
    assert torch.load(out / "best.pt", weights_only=False)["epoch"] == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_experiment_run_rejects_duplicate_method_seed_pairs(capsys, tmp_path):
    """Row 1c: `experiment run --seeds 0 0 --jobs 2` trained the same run twice into one folder at once."""
    out = tmp_path / "grid"
    rc, err = _experiment(capsys, "run", "--config", "tiny", "--methods", "ls", "--seeds", "0", "0", "--jobs", "2",
                          "--out", str(out), "--overrides", '{"device": "cpu", "epochs": 1}')
    line = _one_error_line(err)
    assert rc == 2 and "duplicate" in line and "ls" in line and "0" in line
    assert not out.exists()  # rejected before anything ran


@needs_flock
def test_experiment_run_refuses_a_run_folder_in_use(capsys, tmp_path):
    """Row 1d: `experiment run` over a run folder that another training is using truncated its train.log."""
    out = tmp_path / "grid"
    run = out / E.run_name("ls", 0)
    run.mkdir(parents=True)
    (run / "train.log").write_text("the other training's log\n")
    with _held(run) as pid:
        rc, err = _experiment(capsys, "run", "--config", "tiny", "--methods", "ls", "--seeds", "0", "--jobs", "2",
                              "--out", str(out), "--overrides", '{"device": "cpu", "epochs": 1}')
    line = _one_error_line(err)
    assert rc == 2 and str(run) in line and f"pid {pid}" in line
    assert (run / "train.log").read_text() == "the other training's log\n"


# -- row 2: resume after --max-train-seconds -------------------------------------------------------

def test_time_limited_run_resumes_to_the_uninterrupted_result(capsys, tmp_path, finished):
    """Row 2: a run cut by --max-train-seconds stored its cut epoch as complete; the rerun skipped
    the rest (4 of 6 steps, stopped_early False)."""
    out = tmp_path / "cut"
    # a limit this small stops every invocation after exactly one step: cuts inside epoch 0, at its
    # end (step 3 of 3) and inside epoch 1
    for k in range(1, 5):
        rc, err = _train(capsys, out, "--max-train-seconds", "1e-9")
        assert rc == 0, err
        s = json.loads((out / "summary.json").read_text())
        assert (s["stopped_early"], s["steps"], s["steps_total"]) == (True, k, 6)
        assert "stopped early" in err
    rc, err = _train(capsys, out)
    assert rc == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert (s["stopped_early"], s["steps"], s["epochs_completed"]) == (False, 6, 2)
    a = torch.load(finished / "last.pt", weights_only=False)
    b = torch.load(out / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _rows(finished / "steps.csv", "step_time_s") == _rows(out / "steps.csv", "step_time_s")
    assert _rows(finished / "metrics.csv", "epoch_time_s") == _rows(out / "metrics.csv", "epoch_time_s")
    assert (finished / "generations_test.jsonl").read_text() == (out / "generations_test.jsonl").read_text()


# -- row 3: damaged checkpoints --------------------------------------------------------------------

def _damage(path: Path, how: str) -> None:
    b = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(b[: len(b) // 2]))
    elif how == "random":
        path.write_bytes(random.Random(0).randbytes(len(b)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped":
        b[len(b) // 2] ^= 0x01  # one bit, in the middle (tensor data): torch.load reads it happily
        path.write_bytes(bytes(b))


def _copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and p.name != ".lock":
            (dst / p.name).write_bytes(p.read_bytes())


@pytest.mark.parametrize("name, how", [("last.pt", "truncated"), ("last.pt", "random"), ("last.pt", "empty"),
                                       ("last.pt", "flipped"), ("best.pt", "flipped")])
def test_damaged_checkpoint_is_refused_in_one_line(capsys, tmp_path, finished, name, how):
    """Row 3: a truncated, random or empty last.pt raised a raw traceback; a flipped byte resumed without notice."""
    out = tmp_path / "run"
    _copy(finished, out)
    _damage(out / name, how)
    rc, err = _train(capsys, out)
    line = _one_error_line(err)
    assert rc in (1, 2)
    assert str(out / name) in line and "--no-resume" in line
    rc, err = _train(capsys, out, "--no-resume")  # what the message says to do works
    assert rc == 0, err


# -- row 4: empty validation split ------------------------------------------------------------------

def test_empty_validation_split_is_refused_before_training(capsys, tmp_path, monkeypatch):
    """Row 4: an empty validation split was discovered only after a full training epoch."""
    monkeypatch.setenv("CAMEGRAD_MINI_CACHE", str(tmp_path / "cache"))
    shipped = json.loads((ROOT / "data_samples" / "iu_xray" / "annotation.json").read_text())
    root = tmp_path / "iu_xray"
    root.mkdir()
    (root / "annotation.json").write_text(json.dumps({"train": shipped["train"][:24], "val": [],
                                                       "test": shipped["test"][:8]}))
    out = tmp_path / "run"
    rc, err = _train(capsys, out, "--data-root", str(root), "--images", "standin")
    line = _one_error_line(err)
    assert rc in (1, 2)
    assert "validation" in line and str(root / "annotation.json") in line
    assert not (out / "last.pt").exists() and not (out / "steps.csv").exists()  # nothing was trained


# -- row 5: experiment posthoc / export -------------------------------------------------------------

def _gen(i: int) -> str:
    return json.dumps({"id": f"s{i}", "reference": "the lungs are clear .", "reference_tok": "the lungs are clear .",
                       "generated": "no acute cardiopulmonary abnormality .", "ref_labels": [0] * 14,
                       "gen_labels": [0] * 14})


def _fake_run(root: Path, lines: list[str], n_test: int = 3) -> Path:
    run = root / E.run_name("ls", 0)
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"method": "ls", "seed": 0, "n_test": n_test, "test_f1_macro": 0.1}))
    (run / "generations_test.jsonl").write_text("".join(line + "\n" for line in lines))
    return run


@pytest.mark.parametrize("cut", ["last line cut", "last line missing"])
def test_posthoc_refuses_truncated_generations(capsys, tmp_path, cut):
    """Row 5a: `experiment posthoc` on a truncated generations file said only 'Unterminated string',
    or scored the partial file."""
    lines = [_gen(0), _gen(1), _gen(2)]
    lines = lines[:2] + [lines[2][:40]] if cut == "last line cut" else lines[:2]
    run = _fake_run(tmp_path / "grid", lines)
    rc, err = _experiment(capsys, "posthoc", str(tmp_path / "grid"), "--no-text")
    line = _one_error_line(err)
    assert rc == 2 and str(run / "generations_test.jsonl") in line
    assert ("line 3" in line) if cut == "last line cut" else ("2" in line and "3" in line)
    assert not (run / "metrics_test.json").exists() and not (tmp_path / "grid" / "results.json").exists()


@pytest.mark.parametrize("where", ["same", "inside a run", "inside the source"])
def test_export_refuses_a_destination_in_its_source(capsys, tmp_path, where):
    """Row 5b: `experiment export H H` crashed with SameFileError; a destination inside the source
    was written into it."""
    root = tmp_path / "grid"
    run = _fake_run(root, [_gen(0), _gen(1), _gen(2)])
    dest = {"same": root, "inside a run": run, "inside the source": root / "export"}[where]
    before = _snapshot(root)
    rc, err = _experiment(capsys, "export", str(root), str(dest))
    line = _one_error_line(err)
    assert rc == 2 and str(root) in line
    assert _snapshot(root) == before  # nothing written, overwritten or deleted


def test_a_run_cut_by_the_time_limit_stays_out_of_the_comparison():
    """A run that stopped early (fewer steps than its peers) entered the mean and the paired
    differences of ``aggregate`` as if it were complete; it is now left out and named."""
    def row(method, seed, f1, **extra):
        return {"run": E.run_name(method, seed), "method": method, "seed": seed, "test_f1_macro": f1, **extra}

    rows = [row("ls", 0, 0.10), row("ls", 1, 0.20), row("came", 0, 0.15),
            row("came", 1, 0.90, stopped_early=True, steps=3, steps_total=240)]
    agg = E.aggregate(rows, metrics=("test_f1_macro",))
    came = agg["methods"]["came"]
    assert came["seeds"] == [0] and came["test_f1_macro"]["mean"] == pytest.approx(0.15)
    assert came["test_f1_macro"]["paired_diff"]["per_seed"] == [pytest.approx(0.05)]
    assert agg["excluded"] == [{"run": E.run_name("came", 1), "method": "came", "seed": 1,
                                "reason": "stopped early after 3 of 240 steps"}]
    table = E.format_table({"aggregate": agg}, metrics=("test_f1_macro",))
    assert "left out: " + E.run_name("came", 1) in table
