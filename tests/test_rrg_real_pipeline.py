"""Chapter 6's switch end to end with no network: a local Open-i mirror (file:// and an HTTP server on
127.0.0.1) -> download -> prepare -> image cache -> train -> evaluate -> table, and resume.

The mirror holds the real ``NLMCXR_reports.tgz`` and an Open-i-format ``NLMCXR_png.tgz`` with the
shipped radiographs plus drawn images under Open-i names for a few studies of every R2Gen split.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from camegrad_mini.rrg import experiment as E
from camegrad_mini.rrg import pipeline as P
from camegrad_mini.rrg.download import DownloadError
from camegrad_mini.rrg.layouts import load_r2gen_split, read_openi_reports
from camegrad_mini.rrg.results import RunFolder
from camegrad_mini.rrg.standin import render_standins
from camegrad_mini.rrg.train import EXIT_HOOK_ENV

SAMPLES = Path(__file__).parents[1] / "data_samples" / "iu_xray"
PER_SPLIT = {"train": 10, "val": 3, "test": 3}  # drawn studies, besides the shipped radiographs


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _chosen_views() -> list[str]:
    """The Open-i image ids of the first two views of a few R2Gen studies per split."""
    split, left, views = load_r2gen_split("auto"), dict(PER_SPLIT), []
    reports = read_openi_reports(SAMPLES / "NLMCXR_reports.tgz")
    for uid in sorted(reports, key=lambda u: int(u[3:])):
        rep = reports[uid]
        if rep.findings and len(rep.image_ids) >= 2 and left.get(split.get(uid), 0) > 0:
            left[split[uid]] -= 1
            views += rep.image_ids[:2]
    assert not any(left.values())
    return views


def build_mirror(dest: Path) -> Path:
    """``dest`` with the real reports archive and an Open-i-format PNG archive."""
    dest.mkdir(parents=True)
    shutil.copy(SAMPLES / "NLMCXR_reports.tgz", dest)
    shipped = {f.name[:-4]: f.read_bytes() for f in (SAMPLES / "images").glob("*.png")}
    drawn = [v for v in _chosen_views() if v not in shipped]
    pics = render_standins(np.zeros((len(drawn), 14), np.float32), drawn, image_size=48)
    files = {**shipped, **{v: _png(pics[i, 0]) for i, v in enumerate(drawn)}}
    with tarfile.open(dest / "NLMCXR_png.tgz", "w:gz", compresslevel=1) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{name}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return build_mirror(tmp_path_factory.mktemp("openi") / "mirror")


@contextlib.contextmanager
def serve(folder: Path, status: int | None = None):
    """An HTTP server on 127.0.0.1 serving ``folder`` (or answering every GET with ``status``)."""

    class H(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if status is not None:
                self.send_error(status)
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=str(folder)))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


def _mtimes(runs: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}


def test_real_images_from_a_file_mirror_end_to_end_and_resume(mirror, tmp_path):
    out = tmp_path / "out"
    kw = dict(plan="tiny", seeds=[0], progress=False, verbose=False)
    res = P.run_chapter6("real", out, base_url=mirror.as_uri(), **kw)
    assert res.results == out / "real_tiny" / "results" and res.trained == ["ls_s0", "came_s0"]
    assert (out / "data" / "iu_xray_raw" / "NLMCXR_png.tgz").is_file()
    ann = json.loads((out / "data" / "iu_xray" / "annotation.json").read_text())
    assert all(len(ann[s]) >= n for s, n in PER_SPLIT.items())
    assert list((out / "cache").glob("iu_real-*.u8.npy"))          # the image cache lives with the runs
    run = RunFolder(res.results)                                    # the committed run's format
    assert run.methods == ["ls", "came"] and run.seeds == [0]
    assert run.results["meta"]["images_are_standins"] is False and run.results["meta"]["plan"] == "tiny"
    assert all(not r["images_are_standins"] and r["steps"] == r["steps_total"] for r in run.runs)
    assert "test_BLEU_4" in run.runs[0] and "came" in res.table()
    assert any(ln.startswith("machine:") for ln in (res.results / "env.txt").read_text().splitlines())
    before = _mtimes(res.runs)
    again = P.run_chapter6("real", out, base_url="http://127.0.0.1:9/", **kw)
    assert again.trained == again.resumed == [] and again.skipped == ["ls_s0", "came_s0"]
    assert _mtimes(res.runs) == before                              # nothing retrained, nothing downloaded
    assert E.load_results(again.results)["meta"]["sessions"] == 1


def test_real_images_over_http_and_an_interrupted_run_resumes(mirror, tmp_path, monkeypatch):
    out = tmp_path / "out"
    kw = dict(plan="tiny", methods=["came"], seeds=[0], progress=False, verbose=False)
    with serve(mirror) as base:
        monkeypatch.setenv(EXIT_HOOK_ENV, "0")                       # killed after epoch 0's checkpoint
        with pytest.raises(RuntimeError, match="runs failed"):
            P.run_chapter6("real", out, base_url=base, jobs=2, **kw)
        monkeypatch.delenv(EXIT_HOOK_ENV)
    run = out / "real_tiny" / "runs" / "came_s0"
    first = (run / "metrics.csv").read_text()
    assert (run / "last.pt").is_file() and not (run / "summary.json").exists()
    res = P.run_chapter6("real", out, base_url="http://127.0.0.1:9/", jobs=2, **kw)  # data are there already
    assert res.resumed == ["came_s0"] and res.trained == []
    assert (run / "metrics.csv").read_text().startswith(first)      # epoch 0 was kept, not trained again
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == s["steps_total"] and not s["images_are_standins"]


def test_phantom_images_need_no_download_and_other_settings_are_refused(tmp_path):
    out = tmp_path / "out"
    kw = dict(plan="tiny", seeds=[0], progress=False, verbose=False)
    res = P.run_chapter6("phantom", out, **kw)
    run = RunFolder(res.results)
    assert run.results["meta"]["images_are_standins"] is True and run.methods == ["ls", "came"]
    assert not (out / "data").exists()
    with pytest.raises(ValueError, match="other settings"):        # a folder of other settings: refused
        P.run_chapter6("phantom", out, overrides={"lr": 1e-4}, **kw)
    with pytest.raises(ValueError, match="earlier call with other methods or seeds"):
        P.run_chapter6("phantom", out, **{**kw, "methods": ["came"]})
    assert _mtimes(res.runs).keys() == {"ls_s0", "came_s0"}


def test_download_errors_say_what_happened(mirror, tmp_path):
    kw = dict(plan="tiny", progress=False, verbose=False)
    for status, words in [(404, "not found at"), (500, "server error at")]:
        with serve(mirror, status) as base:
            with pytest.raises(DownloadError) as e:
                P.run_chapter6("real", tmp_path / f"o{status}", base_url=base, **kw)
        msg = str(e.value)
        assert words in msg and f"HTTP {status}" in msg and base in msg and "offline" not in msg
        assert "run_chapter6 again" in msg
    with pytest.raises(DownloadError, match="connection refused.*offline"):
        P.run_chapter6("real", tmp_path / "refused", base_url="http://127.0.0.1:9/", **kw)


def test_plan_choice_and_output_folder(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.choose_plan() == "cpu"
    with pytest.raises(RuntimeError, match="needs a GPU"):
        P.run_chapter6("real", tmp_path, verbose=False)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        P.run_chapter6("phantom", tmp_path, plan="t4", verbose=False)
    with pytest.raises(ValueError, match="phantom' or 'real"):
        P.run_chapter6("xray", tmp_path, verbose=False)
    monkeypatch.delenv(P.RUNS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert P.default_output_dir() == tmp_path / "camegrad_runs"
    drive = tmp_path / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    monkeypatch.setattr(P, "DRIVE", drive)
    monkeypatch.setitem(__import__("sys").modules, "google.colab", object())
    assert P.default_output_dir() == drive / "camegrad_mini"
    monkeypatch.setenv(P.RUNS_ENV, str(tmp_path / "elsewhere"))
    assert P.default_output_dir() == tmp_path / "elsewhere"


def test_progress_lines_one_deterministic_line_per_training(tmp_path, capsys):
    kw = dict(plan="tiny", seeds=[0], progress="lines", verbose=False)
    res = P.run_chapter6("phantom", tmp_path / "a", **kw)
    first = capsys.readouterr()
    summaries = {r["run"]: r for r in RunFolder(res.results).runs}
    epochs = summaries["ls_s0"]["epochs_completed"]
    assert first.out.splitlines() == [f"LS seed 0: {epochs} epochs (1 of 2)",
                                      f"CAME-Grad seed 0: {epochs} epochs (2 of 2)"]
    assert first.err == ""                                          # no tqdm bar, no timings
    P.run_chapter6("phantom", tmp_path / "b", **kw)                 # the same text on a second run
    assert capsys.readouterr().out == first.out
    P.run_chapter6("phantom", tmp_path / "a", **kw)                 # nothing trained: nothing printed
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="progress"):
        P.run_chapter6("phantom", tmp_path / "c", **{**kw, "progress": "bars"})


def test_progress_lines_say_when_a_run_was_cut_short():
    said = []
    report = P._line_reporter(3, said.append)
    report("came", 2, {"epochs_completed": 4, "best_epoch": 1, "stopped_early": True})
    report("pcgrad", 0, {"epochs_completed": 8, "best_epoch": 7})
    assert said == ["CAME-Grad seed 2: 4 epochs (cut short by the time limit) (1 of 3)",
                    "PCGrad seed 0: 8 epochs (2 of 3)"]
