"""Chapter 6's switch: train on phantom or real images into a folder that survives, and resume.

    from camegrad_mini.rrg.pipeline import run_chapter6
    res = run_chapter6(images="real")      # or images="phantom"
    run = res.folder()                     # a RunFolder, like the committed results/iu_xray_cpu/
    print(res.table())

One call does every step, and skips a step whose result is already there, so calling it again
(after a disconnected Colab runtime, say) continues instead of starting over:

1. ``images="real"``: download the Open-i archives (``NLMCXR_png.tgz``, about 1.3 GB, and
   ``NLMCXR_reports.tgz``) into ``OUT/data/iu_xray_raw`` with a progress bar (an interrupted
   download resumes; :mod:`~camegrad_mini.rrg.download`) and convert them into R2Gen's layout in
   ``OUT/data/iu_xray`` (:func:`~camegrad_mini.rrg.layouts.convert_openi`). ``images="phantom"``
   downloads nothing: the shipped ``data_samples`` (the real reports, drawn images).
2. decode every image once into the memory-mappable cache in ``OUT/cache`` (:mod:`~camegrad_mini.rrg.cache`).
3. train each (method, seed) into ``OUT/<images>_<plan>/runs/<method>_s<seed>/``
   (:func:`~camegrad_mini.rrg.experiment.run_pairs`): a run whose ``summary.json`` has the same
   settings is skipped, an interrupted one continues exactly from its last checkpoint.
4. score the saved generations and export the small files with ``results.json`` into
   ``OUT/<images>_<plan>/results/``: the format of ``results/iu_xray_cpu/``
   (:class:`~camegrad_mini.rrg.results.RunFolder`, :func:`~camegrad_mini.rrg.experiment.format_table`).

``OUT`` is :func:`default_output_dir`: ``MyDrive/camegrad_mini`` when Google Drive is mounted in
Colab, else ``./camegrad_runs`` in the current folder (``$CAMEGRAD_MINI_RUNS`` overrides both).

A *plan* (:data:`PLANS`) is a preset of ``train.CONFIGS`` with
overrides, methods and seeds, sized for a machine; ``plan="auto"`` picks ``"cpu"`` without a
GPU, ``"a100"`` on a GPU with bfloat16 and at least 30 GB (A100, H100), else ``"t4"``. The time
estimates, with their arithmetic, are in ``results/gpu_estimate.md`` (``tools/estimate_gpu_time.py``).
On a GPU the runs go as separate processes, as many at a time as there are CPU cores (at most
one per run): each process launches its own kernels, so runs do not wait for each other's launches.

``progress`` says how a call shows it is alive: ``True`` draws tqdm bars (download, image cache,
the training steps), ``False`` shows nothing, and ``"lines"`` prints one line per finished
training and nothing else, with no timings (``LS seed 0: 8 epochs (1 of 6)``): text
that a rerun reproduces, so a notebook whose outputs are compared (strict nbval) can show it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .download import OPENI_BASE, DownloadError, download_openi
from .paths import CACHE_ENV

__all__ = ["Plan", "PLANS", "Chapter6Run", "run_chapter6", "run_settings", "default_output_dir", "choose_plan",
           "prepare_real_images", "RUNS_ENV"]

#: Environment variable naming the output folder (overrides :func:`default_output_dir`'s choice).
RUNS_ENV = "CAMEGRAD_MINI_RUNS"
#: Where Colab mounts Google Drive (``drive.mount('/content/drive')``).
DRIVE = Path("/content/drive/MyDrive")
_MOUNT = "from google.colab import drive; drive.mount('/content/drive')"
#: How the progress lines name the methods.
_NAMES = {"ls": "LS", "came": "CAME-Grad", "pcgrad": "PCGrad", "cagrad": "CAGrad", "mgda": "MGDA"}


@dataclass(frozen=True)
class Plan:
    """What to train: a preset of ``train.CONFIGS`` with overrides, the methods and seeds, and
    whether it needs a CUDA GPU. ``about`` says what it is for (see ``results/gpu_estimate.md``)."""

    config: str
    overrides: Mapping[str, Any]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    gpu: bool
    about: str


#: The plans by name; estimates of their GPU time in ``results/gpu_estimate.md``.
PLANS: dict[str, Plan] = {
    "tiny": Plan("tiny", {"device": "cpu", "num_threads": 1}, ("ls", "came"), (0, 1), False,
                 "the unit tests: a few studies, seconds on a CPU"),
    "cpu": Plan("cpu_reduced", {"device": "cpu", "num_threads": 1}, ("ls", "came"), (0, 1, 2), False,
                "what chapter 6 runs on a CPU: 192 training studies at 32 px, seconds per run"),
    # The T4 plan is the committed CPU run's configuration, the one this book has seen learn (its
    # reports beat the always-normal floors on the phantom set); on a T4 it takes minutes.
    "t4": Plan("cpu_full", {"device": "cuda"}, ("ls", "came"), (0, 1, 2), True,
               "a Colab T4 (16 GB): every study, the committed CPU run's configuration (cpu_full: the "
               "small model at 64 px with diagnosis prompts, 26 epochs); LS and CAME-Grad x 3 seeds"),
    "a100": Plan("gpu_full", {"device": "cuda", "image_size": 224, "epochs": 30},
                 ("ls", "came", "pcgrad", "cagrad"), (0, 1, 2, 3, 4), True,
                 "an A100 or H100: every study at 224 px (R2Gen's size), the 7 M-parameter model with "
                 "cpu_full's recipe, 30 epochs (not yet run on a GPU); four methods x 5 seeds"),
}


@dataclass
class Chapter6Run:
    """What :func:`run_chapter6` did and where the results are."""

    results: Path  # exported small files + results.json (RunFolder reads it)
    runs: Path  # the training folders, with checkpoints
    images: str
    plan: str
    trained: list[str]  # runs started from scratch by this call
    resumed: list[str]  # runs continued from a checkpoint by this call
    skipped: list[str]  # runs already finished before this call

    def folder(self) -> Any:
        """The results as a :class:`~camegrad_mini.rrg.results.RunFolder`."""
        from .results import RunFolder

        return RunFolder(self.results)

    def table(self, metrics: Sequence[str] = ("test_f1_macro", "test_f1_example", "test_BLEU_4",
                                              "conflict_share")) -> str:
        from .experiment import format_table

        return format_table(self.folder().results, metrics)


def default_output_dir() -> Path:
    """``$CAMEGRAD_MINI_RUNS``; else ``MyDrive/camegrad_mini`` when Google Drive is mounted in
    Colab (it survives a disconnected runtime); else ``camegrad_runs`` in the current folder."""
    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env).expanduser()
    if "google.colab" in sys.modules and DRIVE.is_dir():
        return DRIVE / "camegrad_mini"
    return Path.cwd() / "camegrad_runs"


def choose_plan(plan: str = "auto") -> str:
    """The plan's name: ``plan`` itself, or for ``"auto"`` one that fits this machine's GPU."""
    if plan != "auto":
        if plan not in PLANS:
            raise ValueError(f"plan={plan!r} is not one of {['auto', *PLANS]}")
        return plan
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    props = torch.cuda.get_device_properties(0)
    return "a100" if props.major >= 8 and props.total_memory >= 30 * 2**30 else "t4"


def _check_machine(images: str, plan: str, asked: str) -> None:
    import torch

    gpu_help = "in Colab: Runtime -> Change runtime type -> T4 GPU, then run the cell again"
    if PLANS[plan].gpu and not torch.cuda.is_available():
        raise RuntimeError(f"plan={plan!r} trains on a CUDA GPU and torch sees none ({gpu_help}); "
                           "or pass plan='cpu' for the small CPU configuration")
    if images == "real" and asked == "auto" and not PLANS[plan].gpu:
        raise RuntimeError("images='real' trains on all 2,955 studies of IU X-Ray and needs a GPU, and torch "
                           f"sees none ({gpu_help}). To try the real-image path on this CPU anyway, in the small "
                           "configuration, pass plan='cpu' (it still downloads the 1.3 GB archive)")


def _precision(plan: str) -> dict[str, Any]:
    """A T4 has no bfloat16 units: torch would emulate bf16 autocast, slower than float32. Where
    train.py selects fp16 itself (a config field ``amp``) that is left to it; otherwise the T4
    plan trains in float32."""
    from . import train as T

    fields = {f.name for f in dataclasses.fields(T.TrainConfig)}
    return {"bf16": False} if plan == "t4" and "amp" not in fields else {}


def run_settings(images: str, plan: str = "auto", out: str | os.PathLike | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The TrainConfig overrides every run of :func:`run_chapter6` gets (method and seed aside),
    so that a notebook can load the very dataset the runs train on:
    ``train.get_config(PLANS[plan].config, **run_settings(...))``.

    ``"phantom"`` is the shipped data as every other page uses it (``images="auto"``: drawn images
    for all but the few studies whose real radiographs are shipped); ``"real"`` the prepared Open-i
    download in ``OUT/data/iu_xray``."""
    name = choose_plan(plan)
    base = Path(out).expanduser() if out is not None else default_output_dir()
    data = {"images": "real", "data_root": str((base / "data" / "iu_xray").resolve())} if images == "real" \
        else {"images": "auto", "data_root": None}
    return {**PLANS[name].overrides, **_precision(name), **data, **dict(overrides or {})}


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def prepare_real_images(data_dir: str | os.PathLike, base_url: str = OPENI_BASE, progress: bool = True,
                        say: Callable[[str], None] = print) -> Path:
    """``data_dir/iu_xray`` in R2Gen's layout, from the Open-i archives downloaded into
    ``data_dir/iu_xray_raw`` (both steps skipped when their result is there)."""
    from .layouts import convert_openi

    data_dir = Path(data_dir)
    raw, root = data_dir / "iu_xray_raw", data_dir / "iu_xray"
    if (root / "prepare_info.json").is_file() and (root / "annotation.json").is_file():
        return root
    say(f"downloading the Open-i archives into {raw} (about 1.3 GB; an interrupted download resumes)")
    try:
        download_openi(raw, base_url=base_url, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"{e} (calling run_chapter6 again resumes; by hand: "
                            f"python -m camegrad_mini.rrg.download --out {raw})") from e
    say(f"converting them into R2Gen's layout in {root} (a few minutes)")
    res = convert_openi(raw, root)
    say(res.summary())
    return root


@contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """Image caches in ``folder`` for this call and the trainings it starts (they inherit it)."""
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old


def _load(config: str, settings: dict[str, Any], progress: bool) -> Any:
    """The dataset exactly as ``train.load_dataset`` loads it (same cache key), with a progress bar."""
    from . import train as T
    from .dataset import load_iu_xray

    cfg = T.get_config(config, **settings)
    return load_iu_xray(root=cfg.data_root, images=cfg.images, image_size=cfg.image_size, seed=cfg.data_seed,
                        progress=progress)


# ----------------------------------------------------------------------------------------------
# Runs: which are finished, training the rest
# ----------------------------------------------------------------------------------------------

def _run_state(run: Path, want: dict[str, Any]) -> str:
    """``"new"``, ``"finished"`` or ``"partial"``; an error for a run of other settings."""
    from . import train as T

    if not (run / "config.json").is_file():
        return "partial" if (run / "last.pt").exists() else "new"
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    free: Collection[str] = getattr(T, "_RESUMABLE_CHANGES", set())
    diff = sorted(k for k in want if k not in free and saved.get(k) != want[k])
    if diff:
        raise ValueError(f"{run} holds a run with other settings (fields {diff}); nothing was changed: pass "
                         "another out= folder (or move that folder away) to train these settings")
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "partial"
    return "partial" if summary.get("stopped_early") else "finished"


def _states(config: str, pairs: list[tuple[str, int]], runs: Path, settings: dict[str, Any]) -> dict[str, list]:
    from . import train as T
    from .experiment import run_name

    out: dict[str, list] = {"new": [], "partial": [], "finished": []}
    for m, s in pairs:
        want = json.loads(json.dumps(T.get_config(config, method=m, seed=s, **settings).to_dict()))
        out[_run_state(runs / run_name(m, s), want)].append((m, s))
    return out


def _jobs(jobs: int | str, plan: str, n: int) -> int:
    if jobs != "auto":
        return int(jobs)
    return max(1, min(n, os.cpu_count() or 1)) if PLANS[plan].gpu else 1


def _steps_per_run(config: str, settings: dict[str, Any], ds: Any) -> int:
    from . import train as T

    cfg = T.get_config(config, **settings)
    n = len(ds.splits["train"]) if cfg.n_train is None else min(cfg.n_train, len(ds.splits["train"]))
    return cfg.epochs * (n // cfg.batch_size if n >= cfg.batch_size else 1)


@contextmanager
def _step_bar(folders: list[Path], total: int, enabled: bool) -> Iterator[None]:
    """One progress bar over the steps of runs training in other processes (their steps.csv rows)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    def done() -> int:
        n = 0
        for f in folders:
            try:
                n += max(0, sum(1 for _ in open(f / "steps.csv", encoding="utf-8")) - 1)
            except OSError:
                pass
        return n

    bar, stop = tqdm(total=total, initial=done(), unit="step", desc="training"), threading.Event()

    def watch() -> None:
        while not stop.wait(2.0):
            bar.n = min(done(), total)
            bar.refresh()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.n = min(done(), total)
        bar.close()


def _line_reporter(n: int, say: Callable[[str], None] = print) -> Callable[[str, int, dict[str, Any]], None]:
    """``progress="lines"``: one line per finished training, deterministic (no timings)."""
    done = [0]

    def report(method: str, seed: int, summary: dict[str, Any]) -> None:
        done[0] += 1
        # No trained result (best epoch, scores) on the line: the chapter's nbval comparison of this
        # output must not depend on floating point that can differ across CPUs.
        cut = " (cut short by the time limit)" if summary.get("stopped_early") else ""
        say(f"{_NAMES.get(method, method)} seed {seed}: {summary.get('epochs_completed')} epochs{cut} "
            f"({done[0]} of {n})")
        sys.stdout.flush()

    return report


def _train(config: str, todo: list[tuple[str, int]], runs: Path, settings: dict[str, Any], jobs: int, ds: Any,
           progress: bool | str) -> None:
    from .experiment import run_name, run_pairs

    bars = progress is True
    report = _line_reporter(len(todo)) if progress == "lines" else None
    if jobs == 1:
        run_pairs(config, todo, runs, {**settings, "progress": bars}, jobs=1, dataset=ds, report=report)
        return
    total = len(todo) * _steps_per_run(config, settings, ds)
    with _step_bar([runs / run_name(m, s) for m, s in todo], total, bars):
        run_pairs(config, todo, runs, {**settings, "progress": False}, jobs=jobs, report=report)


# ----------------------------------------------------------------------------------------------
# Scoring, export, records
# ----------------------------------------------------------------------------------------------

def _env_lines(images: str, plan: str, config: str, pairs: list[tuple[str, int]], jobs: int) -> str:
    import numpy
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem = float("nan")
    methods = " ".join(dict.fromkeys(m for m, _ in pairs))
    seeds = " ".join(str(s) for s in dict.fromkeys(s for _, s in pairs))
    lines = [f"date_utc: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S')}",
             f"script: camegrad_mini.rrg.pipeline.run_chapter6  images: {images}  plan: {plan}  config: {config}  "
             f"methods: {methods}  seeds: {seeds}  jobs: {jobs}",
             f"machine: {os.cpu_count()} cores, {mem:.0f} GiB, {platform.processor() or platform.machine()}",
             f"python {platform.python_version()} torch {torch.__version__} numpy {numpy.__version__} "
             f"cuda {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB")
    return "\n".join(lines) + "\n"


def _log_session(exp: Path, trained: list[str], wall: float, jobs: int) -> dict[str, Any]:
    """Append this call's training to ``exp/sessions.json``; return the whole record."""
    from .runfiles import atomic_write_text

    path = exp / "sessions.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = {"sessions": []}
    if trained:
        rec["sessions"].append({"date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                                "runs": trained, "jobs": jobs, "wall_time_s": round(wall, 1)})
        exp.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(rec, indent=1))
    return rec


def _meta(images: str, plan: str, settings: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``results.json``'s meta: what was run, and the wall time of every call that trained."""
    return {"script": "camegrad_mini.rrg.pipeline.run_chapter6", "images": images, "plan": plan,
            "config": PLANS[plan].config, "overrides": {k: v for k, v in settings.items() if k != "data_root"},
            "jobs": max((x.get("jobs", 1) for x in record["sessions"]), default=1),
            "sessions": len(record["sessions"]),
            "wall_time_s": round(sum(x["wall_time_s"] for x in record["sessions"]), 1)}


def _export(exp: Path, names: list[str], meta: dict[str, Any]) -> Path:
    from . import experiment as E

    runs, results = exp / "runs", exp / "results"
    stale = sorted(p.parent.name for p in results.glob("*/summary.json") if p.parent.name not in names)
    if stale:
        raise ValueError(f"{results} also holds runs {stale} from an earlier call with other methods or seeds; "
                         "nothing was changed: ask for those too, or move that folder away and call again")
    E.posthoc(runs, text=True, meteor=False, runs=names)
    E.export(runs, results, meta, runs=names)
    if (runs / "env.txt").is_file():
        (results / "env.txt").write_text((runs / "env.txt").read_text(encoding="utf-8"), encoding="utf-8")
    return results


# ----------------------------------------------------------------------------------------------
# The switch
# ----------------------------------------------------------------------------------------------

def run_chapter6(images: str = "phantom", out: str | os.PathLike | None = None, *, plan: str = "auto",
                 methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                 overrides: Mapping[str, Any] | None = None, jobs: int | str = "auto",
                 base_url: str = OPENI_BASE, progress: bool | str = True, verbose: bool = True) -> Chapter6Run:
    """Train and score chapter 6's comparison on ``images`` ("phantom" or "real"); module docstring.

    ``out``: the persistent folder (default :func:`default_output_dir`). ``plan``: a key of
    :data:`PLANS` or "auto"; ``methods``, ``seeds`` and ``overrides`` (TrainConfig fields) change
    the plan's. ``jobs``: trainings at a time ("auto": one per CPU core on a GPU, 1 on a CPU).
    ``base_url``: where the Open-i archives are (a mirror, ``file://`` too). ``progress``: True
    (tqdm bars), False (none) or "lines" (one deterministic line per finished training; the
    download, if any, still shows its bar); module docstring. ``verbose``: say what is done
    (plan, folders), apart from the progress. Raises on any failed step (the message says what
    to do); never returns a partial result.
    """
    if not (isinstance(progress, bool) or progress == "lines"):
        raise ValueError(f"progress={progress!r} must be True, False or 'lines'")
    say = print if verbose else (lambda _msg: None)
    if images not in ("phantom", "real"):
        raise ValueError(f"images={images!r} must be 'phantom' or 'real'")
    name = choose_plan(plan)
    _check_machine(images, name, plan)
    p = PLANS[name]
    base = Path(out).expanduser() if out is not None else default_output_dir()
    if "google.colab" in sys.modules and not str(base.resolve()).startswith(str(DRIVE)):
        say(f"note: {base} is on the Colab runtime's disk and is lost when it disconnects; to keep the runs, "
            f"mount Google Drive first ({_MOUNT}) and call again")
    exp = base / f"{images}_{name}"
    settings = run_settings(images, name, base, overrides)
    pairs = [(m, int(s)) for m in (methods or p.methods) for s in (seeds or p.seeds)]
    from .experiment import run_name

    state = _states(p.config, pairs, exp / "runs", settings)
    todo = state["new"] + state["partial"]
    n_jobs = _jobs(jobs, name, len(todo))
    say(f"plan {name!r} ({p.about}); {len(pairs)} runs in {exp}: {len(state['finished'])} finished, "
        f"{len(state['partial'])} to resume, {len(state['new'])} to train")
    t0 = time.perf_counter()
    with _cache_in(base / "cache"):
        if todo:
            if images == "real":
                prepare_real_images(base / "data", base_url, progress is not False, say)
            ds = _load(p.config, settings, progress is True)
            say(ds.describe())
            (exp / "runs").mkdir(parents=True, exist_ok=True)
            (exp / "runs" / "env.txt").write_text(_env_lines(images, name, p.config, pairs, n_jobs), encoding="utf-8")
            _train(p.config, todo, exp / "runs", settings, n_jobs, ds, progress)
        rec = _log_session(exp, [run_name(m, s) for m, s in todo], time.perf_counter() - t0, n_jobs)
        results = _export(exp, [run_name(m, s) for m, s in pairs], _meta(images, name, settings, rec))
    say(f"results in {results}")
    return Chapter6Run(results, exp / "runs", images, name, [run_name(*x) for x in state["new"]],
                       [run_name(*x) for x in state["partial"]], [run_name(*x) for x in state["finished"]])
