"""Readers for the three IU X-Ray layouts people have, and converters into R2Gen's layout.

Layout 1, **R2Gen** (zhjohnchan/R2Gen; the split most papers use: 2,069 / 296 / 590 studies)::

    annotation.json        {"train"|"val"|"test": [{id, report, image_path: [<id>/0.png, <id>/1.png], split}]}
    images/<id>/0.png, images/<id>/1.png

The same reader takes **MIMIC-CXR in R2Gen's layout** (``annotation.json`` entries with
``study_id``, ``subject_id`` and ``image_path: ["p10/p10000032/s50414267/<dicom id>.jpg"]``,
images below ``images/`` as MIMIC-CXR-JPG's ``files/`` holds them): :func:`entry_views`,
:func:`check_mimic_cxr_root`. It is credentialed data and never shipped.

Layout 2, **raw Open-i** (openi.nlm.nih.gov, the official archives)::

    NLMCXR_reports.tgz     ecgen-radiology/<uid>.xml: FINDINGS, IMPRESSION, MeSH, parentImage ids
    NLMCXR_png.tgz         CXR<uid>_IM-<nnnn>-<mmmm>.png  (or the same PNGs already extracted)

Layout 3, **tabular export** (the widely copied Kaggle-style CSVs)::

    indiana_reports.csv      uid, MeSH, Problems, image, indication, comparison, findings, impression
    indiana_projections.csv  uid, filename (<uid>_IM-<nnnn>-<mmmm>.dcm.png), projection (Frontal|Lateral)
    images_normalized/<filename>

``convert_openi`` and ``convert_tabular`` write layout 1. They keep R2Gen's selection (a
non-empty FINDINGS section and at least two images) and R2Gen's study ids (``CXR<uid>_IM-<nnnn>``,
the first image id without its last ``-<mmmm>``). The split is R2Gen's whenever a study's uid is
in an R2Gen ``annotation.json`` (by default the shipped one); other studies get a seeded
70/10/20 split (:func:`seeded_split`), recorded in ``prepare_info.json``. Image bytes are copied
unchanged (CC BY-NC-ND: no derivatives), view 0 is the first image of the report (Open-i order;
for the tabular export the frontal view), view 1 the second (the lateral one).

Bad input is collected in a :class:`Problems` report by id and kind; in strict mode the first
summary raises :class:`~camegrad_mini.rrg.paths.DataError`; a run that finds no valid study at all
raises it in any mode. Output folders are built in a temporary folder next to ``out``
(``.<out name>.prepare-<pid>.tmp``, holding a marker file) and moved into place with
``os.replace``, so a failed run leaves nothing half-written and a killed one leaves only that
folder, which the next run for the same ``out`` removes once its process is gone. Before reading
anything the converters refuse an ``out`` that could destroy data prepare did not write: one that
is or holds the source or the current folder, a file, or (with ``overwrite``) a folder without
prepare's ``prepare_info.json`` or with files prepare did not write.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tarfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import DOWNLOAD_CMD, MIMIC_SETUP, DataError, DataNotFoundError, data_samples_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPLITS = ("train", "val", "test")

PROBLEM_KINDS = {
    "malformed_xml": "malformed XML reports",
    "no_findings": "reports without a FINDINGS section (R2Gen leaves them out)",
    "too_few_images": "studies with fewer than two images (R2Gen leaves them out)",
    "no_images": "studies without image files",
    "missing_image": "annotation ids without an image file",
    "unreadable_image": "unreadable images",
    "bad_row": "malformed CSV rows",
    "bad_image_id": "image ids not of the form CXR<uid>_IM-<nnnn>-<mmmm>",
    "duplicate_uid": "reports whose uId an earlier XML file already has (the first is kept)",
    "duplicate_id": "studies whose id an earlier study already has (the first is kept)",
    "bad_entry": "annotation entries without an id or a list of image paths",
    "no_report": "annotation entries without a report",
}


class Problems:
    """Bad input found while reading, by kind and id; ``summary()`` gives counts and examples."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, ident: str) -> None:
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"kind must be one of {sorted(PROBLEM_KINDS)}, got {kind!r}")
        self.items[kind].append(ident)

    def count(self, kind: str | None = None) -> int:
        return sum(len(v) for k, v in self.items.items() if kind is None or k == kind)

    def __bool__(self) -> bool:
        return self.count() > 0

    def summary(self, max_ids: int = 5) -> str:
        if not self:
            return "no problems found"
        lines = []
        for kind, ids in self.items.items():
            shown = ", ".join(ids[:max_ids]) + (f", ... (+{len(ids) - max_ids})" if len(ids) > max_ids else "")
            lines.append(f"{len(ids)} {PROBLEM_KINDS[kind]}: {shown}")
        return "; ".join(lines)

    def check(self, strict: bool, kinds: Iterable[str] | None = None, context: str = "") -> None:
        """In strict mode raise ``DataError`` if any problem of ``kinds`` (default: all) was found."""
        kinds = set(kinds) if kinds is not None else set(self.items)
        bad = {k: v for k, v in self.items.items() if k in kinds and v}
        if strict and bad:
            sub = Problems()
            sub.items.update(bad)
            raise DataError(f"{context}: {sub.summary()} "
                            f"(strict mode; drop --strict, or pass strict=False, to skip them)")

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.items.items()}


@dataclass
class OpenIReport:
    """One Open-i report: uid ``CXR<n>``, its sections, manual MeSH terms and image ids."""

    uid: str
    findings: str
    impression: str
    mesh_major: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)

    @property
    def study_id(self) -> str | None:
        return study_id_from_image_id(self.image_ids[0]) if self.image_ids else None


def study_id_from_image_id(image_id: str) -> str:
    """``CXR2_IM-0652-1001`` -> ``CXR2_IM-0652`` (R2Gen's study id)."""
    if "-" not in image_id:
        raise ValueError(f"image_id must look like CXR<uid>_IM-<nnnn>-<mmmm>, got {image_id!r}")
    return image_id.rsplit("-", 1)[0]


def uid_of(study_or_image_id: str) -> str:
    """``CXR2_IM-0652`` or ``CXR2_IM-0652-1001`` -> ``CXR2`` (the Open-i report uid)."""
    return study_or_image_id.split("_", 1)[0]


def parse_openi_xml(data: bytes) -> OpenIReport:
    """Parse one ``ecgen-radiology/<uid>.xml``; raises ``xml.etree.ElementTree.ParseError``."""
    root = ET.fromstring(data)
    uid_el = root.find("uId")
    uid = uid_el.get("id") if uid_el is not None else None
    if not uid:
        raise ET.ParseError("no <uId id=...> element")
    sections = {a.get("Label"): (a.text or "").strip() for a in root.iter("AbstractText")}
    mesh = root.find("MeSH")
    major = [m.text.strip() for m in mesh if m.tag == "major" and m.text] if mesh is not None else []
    images = [i for p in root.iter("parentImage") if (i := p.get("id"))]
    return OpenIReport(uid, sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""), major, images)


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The contents of a regular-file ``member`` (the callers check ``isfile()``)."""
    f = tar.extractfile(member)
    if f is None:
        raise tarfile.TarError(f"{member.name} has no contents to read")
    return f.read()


def _iter_report_files(path: Path, wanted: set[str] | None = None) -> Iterable[tuple[str, bytes]]:
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    if m.isfile() and m.name.endswith(".xml") and (wanted is None or Path(m.name).stem in wanted):
                        yield m.name, _member_bytes(tar, m)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path} is not a readable .tgz archive ({e}); fetch it again with "
                            f"`{DOWNLOAD_CMD}`") from e
    else:
        for f in sorted(path.rglob("*.xml")):
            yield str(f), f.read_bytes()


def read_openi_reports(path: str | os.PathLike, problems: Problems | None = None,
                       uids: set[str] | None = None) -> dict[str, OpenIReport]:
    """All reports of ``NLMCXR_reports.tgz`` (or an extracted ``ecgen-radiology/`` folder), by uid.

    Malformed XML files are recorded in ``problems`` (kind ``malformed_xml``, by file name) and
    skipped; so is a second file with a uId seen before (kind ``duplicate_uid``, naming both files:
    the first is kept). ``uids`` restricts parsing to those reports (the file name is ``<n>.xml``).
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"{path} does not exist; fetch the Open-i reports with `{DOWNLOAD_CMD}`")
    problems = problems if problems is not None else Problems()
    out: dict[str, OpenIReport] = {}
    first_file: dict[str, str] = {}
    wanted = {u[3:] if u.startswith("CXR") else u for u in uids} if uids is not None else None
    for name, data in _iter_report_files(path, wanted):
        stem = Path(name).stem
        if wanted is not None and stem not in wanted:
            continue
        try:
            rep = parse_openi_xml(data)
        except ET.ParseError:
            problems.add("malformed_xml", Path(name).name)
            continue
        if rep.uid in out:
            problems.add("duplicate_uid", f"{rep.uid} ({Path(name).name} repeats {first_file[rep.uid]})")
            continue
        out[rep.uid] = rep
        first_file[rep.uid] = Path(name).name
    return out


def seeded_split(ids: Iterable[str], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                 ) -> dict[str, str]:
    """Deterministic 70/10/20 split (R2Gen's random 7:1:2) for studies not in an R2Gen annotation:
    ids are sorted, permuted with ``numpy.random.default_rng(seed)`` and cut at the fractions."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(set(ids))
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    out = {}
    for rank, i in enumerate(perm):
        out[ids[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def _read_annotation(path: Path) -> dict:
    """An R2Gen ``annotation.json`` as a dict of split -> list, or a ``DataError`` naming the file."""
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); use R2Gen's annotation.json") from e
    if not isinstance(ann, dict) or not any(k in ann for k in SPLITS) or \
            not all(isinstance(ann.get(k, []), list) for k in SPLITS):
        raise DataError(f"{path} must be an object with lists under the keys {SPLITS}, like R2Gen's annotation.json")
    return ann


def load_r2gen_split(annotation: str | os.PathLike | None = "auto") -> dict[str, str]:
    """uid -> split from an R2Gen ``annotation.json`` ("auto": the shipped one; None: none)."""
    if annotation is None:
        return {}
    if annotation == "auto":
        try:
            annotation = data_samples_dir() / "annotation.json"
        except DataNotFoundError:
            return {}
    path = Path(annotation).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"annotation={str(path)!r} is not a file; pass R2Gen's annotation.json, `auto` for the "
            f"shipped one, or `none` for a seeded 70/10/20 split")
    ann = _read_annotation(path)
    out = {}
    for split in SPLITS:
        for i, e in enumerate(ann.get(split, [])):
            if not isinstance(e, dict) or not isinstance(e.get("id"), str):
                raise DataError(f"{path}: entry {i} of {split!r} has no id; use R2Gen's annotation.json")
            out[uid_of(e["id"])] = split
    return out


def _entry_problem(e: object, where: str) -> tuple[str, str] | None:
    """Why an annotation entry cannot be used, as (problem kind, ident), or None. The id becomes a
    folder name and the image paths are read below ``images/``, so neither may leave its folder."""
    if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not e["id"]:
        return "bad_entry", f"{where} (no id)"
    sid = e["id"]
    if sid in (".", "..") or "/" in sid or "\\" in sid:
        return "bad_entry", f"{sid!r} (the id is not a folder name)"
    paths = e.get("image_path")
    if not isinstance(paths, list) or not paths:
        return "bad_entry", f"{sid} (no image_path list)"
    if not all(isinstance(p, str) and p and not Path(p).is_absolute() and ".." not in Path(p).parts
               for p in paths):
        return "bad_entry", f"{sid} (image_path must name files below images/)"
    if not isinstance(e.get("report"), str) or not e["report"].strip():
        return "no_report", sid
    return None


def read_r2gen(root: str | os.PathLike, problems: Problems | None = None,
               check_images: bool = True) -> dict[str, list[dict]]:
    """Layout 1: ``annotation.json`` by split. Entries without an id or image paths (kind
    ``bad_entry``), without a report (``no_report``), repeating an earlier id (``duplicate_id``)
    or, when ``check_images``, with missing image files (``missing_image``) are dropped and
    recorded by id."""
    root = Path(root)
    ann_path = root / "annotation.json"
    if not ann_path.is_file():
        raise DataNotFoundError(
            f"{ann_path} not found. Prepare an R2Gen-layout folder with "
            f"`python -m camegrad_mini.rrg.prepare --layout openi --src <raw> --out {root}` "
            f"(raw archives: `{DOWNLOAD_CMD}`).")
    ann = _read_annotation(ann_path)
    problems = problems if problems is not None else Problems()
    out: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for split in SPLITS:
        keep = []
        for i, e in enumerate(ann.get(split, [])):
            bad = _entry_problem(e, f"{split}[{i}]")
            if bad:
                problems.add(*bad)
                continue
            if e["id"] in seen:
                problems.add("duplicate_id", e["id"])
                continue
            seen.add(e["id"])
            if check_images and not all((root / "images" / p).is_file() for p in e["image_path"]):
                problems.add("missing_image", e["id"])
                continue
            keep.append(e)
        out[split] = keep
    return out


# MIMIC-CXR in R2Gen's layout (credentialed, never shipped): annotation.json entries
# {id, study_id, subject_id, report, image_path: ["p10/p10000032/s50414267/<dicom id>.jpg"], split},
# images below images/ exactly as MIMIC-CXR-JPG's files/ folder holds them
MIMIC_IMAGE_PATH = re.compile(r"^p\d{2}/p\d+/s\d+/[^/]+\.(jpe?g|png)$", re.IGNORECASE)


def is_mimic_entry(e: dict) -> bool:
    """Whether an annotation entry is MIMIC-CXR's: subject and study ids, or every image path of
    the form ``pXX/pXXXXXXXX/sXXXXXXXX/<file>.jpg``."""
    paths = e.get("image_path")
    if "subject_id" in e and "study_id" in e:
        return True
    return isinstance(paths, list) and bool(paths) and all(isinstance(q, str) and MIMIC_IMAGE_PATH.match(q)
                                                           for q in paths)


def entry_views(root: str | os.PathLike, e: dict) -> list[Path] | None:
    """The two view files of an R2Gen annotation entry (below ``root/images``), or None when one
    is missing. An IU X-Ray study needs two images. A MIMIC-CXR entry of R2Gen's annotation is
    one image (R2Gen's MIMIC reader is single-image): it then fills both views."""
    names = list(e["image_path"][:2])
    if len(names) == 1 and is_mimic_entry(e):
        names = names * 2
    paths = [Path(root) / "images" / n for n in names]
    return paths if len(paths) == 2 and all(q.is_file() for q in paths) else None


def check_mimic_cxr_root(root: str | os.PathLike | None) -> Path:
    """A MIMIC-CXR folder in R2Gen's layout (``annotation.json`` and ``images/``), or an error
    that says how a credentialed reader makes one."""
    if root is None:
        raise DataNotFoundError(f"MIMIC-CXR is not shipped (credentialed data): pass its folder. {MIMIC_SETUP}")
    root = Path(root).expanduser()
    missing = [n for n in ("annotation.json", "images") if not (root / n).exists()]
    if missing:
        raise DataNotFoundError(f"{root} has no {' and no '.join(missing)}, so it is not a MIMIC-CXR folder in "
                                f"R2Gen's layout. {MIMIC_SETUP}")
    ann = _read_annotation(root / "annotation.json")
    entries = [e for split in SPLITS for e in ann.get(split, [])[:20] if isinstance(e, dict)]
    if not entries or not all(is_mimic_entry(e) for e in entries):
        raise DataError(f"{root / 'annotation.json'} does not look like R2Gen's MIMIC-CXR annotation (its entries "
                        f"need subject_id and study_id, or image paths like p10/p10000032/s50414267/<id>.jpg); "
                        f"for IU X-Ray drop --dataset mimic_cxr")
    return root


def is_readable_png(data: bytes) -> bool:
    """PNG signature check, plus a full decode check when Pillow is installed."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    try:
        from PIL import Image
    except ImportError:  # the GPU machine may lack Pillow; the signature check must do
        return True
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # Pillow raises many types for truncated or corrupt files
        return False


# --------------------------------------------------------------------------------------------
# writing layout 1 atomically
# --------------------------------------------------------------------------------------------
TEMP_MARKER = ".prepare-temp"             # in every temporary folder prepare makes: who made it
# what a folder prepare wrote holds; --overwrite replaces nothing else
PREPARED_NAMES = {"annotation.json", "prepare_info.json", "images"}


@dataclass
class PrepareResult:
    out: Path
    counts: dict[str, int]
    problems: Problems
    split_source: dict[str, int]

    def summary(self) -> str:
        c = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        src = ", ".join(f"{v} from {k}" for k, v in self.split_source.items())
        return f"wrote {self.out}: {c} studies (split: {src}); skipped: {self.problems.summary()}"


def _check_out(src: Path, out: str | os.PathLike, overwrite: bool) -> Path:
    """The resolved ``out``, once it cannot destroy anything prepare did not write. Checked before
    any reading, so a doomed run fails in a second rather than after validating every image."""
    given = str(out)
    out, src = Path(out).expanduser().resolve(), Path(src).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise DataError(f"out={given!r} is the current folder (or holds it); name a new folder, e.g. data/iu_xray")
    if out == src or out in src.parents:
        how = "is the --src folder" if out == src else f"holds --src {str(src)!r}"
        raise DataError(f"out={given!r} {how}; write to a new folder outside the source, "
                        f"e.g. {src.parent / (src.name + '_r2gen')}")
    if overwrite and src in out.parents:
        raise DataError(f"out={given!r} lies inside --src {str(src)!r}, and --overwrite would delete part of "
                        f"the source; write to a new folder outside it")
    _check_replaceable(out, given, overwrite)
    return out


def _check_replaceable(out: Path, given: str, overwrite: bool) -> None:
    """``out`` may be written: it is absent or an empty folder, or, with ``overwrite``, a folder
    prepare wrote to which nobody added files since."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={given!r} is a file, not a folder; choose a new folder name for --out")
    parent = next(p for p in out.parents if p.exists())
    if not parent.is_dir():
        raise FileExistsError(f"{parent} is a file, so out={given!r} cannot be created; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"out={given!r} exists and is not empty; pass --overwrite to replace it "
                              f"(only a folder written by prepare is replaced)")
    names = {p.name for p in out.iterdir()}
    if "prepare_info.json" not in names:
        raise FileExistsError(f"out={given!r} was not written by prepare (it has no prepare_info.json), so "
                              f"--overwrite will not replace it; choose a new --out")
    foreign = sorted(names - PREPARED_NAMES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3})" if len(foreign) > 3 else "")
        raise FileExistsError(f"out={given!r} holds files prepare did not write ({shown}); move them "
                              f"elsewhere and run again, or choose a new --out")


def _temp_dir(out: Path, pid: int) -> Path:
    return out.parent / f".{out.name}.prepare-{pid}.tmp"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":   # os.kill(pid, 0) would terminate the process there: assume alive, clean nothing
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def _remove_stale_temps(out: Path) -> None:
    """Remove the temporary folders of killed prepare runs for ``out``: only folders named like
    ours whose marker names that pid on this host, and whose process is gone (our own pid is
    reused, so a folder with it is stale too). A folder someone else made, or one of a run still
    going, stays. A run killed between moving the old output aside and the new one in left the
    old output in its ``old/``: it is moved back."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.prepare-(\d+)\.tmp")
    for d in out.parent.iterdir():
        m = pattern.fullmatch(d.name)
        if not m or d.is_symlink() or not d.is_dir():
            continue
        pid = int(m[1])
        try:
            marker = json.loads((d / TEMP_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(marker, dict) or marker.get("pid") != pid or marker.get("host") != socket.gethostname():
            continue
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if (d / "old").is_dir() and not out.exists():
            os.replace(d / "old", out)
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh temporary folder next to ``out`` (so ``os.replace`` into place is atomic), removed
    afterwards. Creating it first also tells at once when ``out``'s folder is not writable."""
    tmp = _temp_dir(out, os.getpid())
    made = False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out)
        tmp.mkdir()
        made = True
        (tmp / TEMP_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                   "out": str(out)}), encoding="utf-8")
    except OSError as e:
        if made:
            shutil.rmtree(tmp, ignore_errors=True)
        failed = Path(e.filename) if e.filename else tmp
        where = failed if failed == out.parent else failed.parent
        raise DataError(f"cannot write to {where} ({e.strerror or e}); choose an --out in a folder you can "
                        f"write to") from e
    try:
        yield tmp
    finally:
        # an old output that could not be moved back stays, for the next run to restore
        if not ((tmp / "old").is_dir() and not out.exists()):
            shutil.rmtree(tmp, ignore_errors=True)


def _require_studies(studies: list, src: Path, problems: Problems) -> None:
    if not studies:
        why = problems.summary() if problems else "it holds no study"
        raise DataError(f"no valid study found in {src}: {why}")


def _write_r2gen(tmp: Path, out: Path, studies: list[tuple[str, str, str, list[Callable[[], bytes]]]],
                 info: dict, overwrite: bool) -> None:
    """Write layout 1 from ``(study_id, report, split, [view byte getters])`` into ``tmp/new``
    and move it to ``out`` (the previous ``out``, checked again now, goes to ``tmp/old``)."""
    new = tmp / "new"
    ann: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for sid, report, split, getters in studies:
        d = new / "images" / sid
        d.mkdir(parents=True)
        paths = []
        for n, get in enumerate(getters):
            (d / f"{n}.png").write_bytes(get())
            paths.append(f"{sid}/{n}.png")
        ann[split].append({"id": sid, "report": report, "image_path": paths, "split": split})
    (new / "annotation.json").write_text(json.dumps(ann), encoding="utf-8")
    (new / "prepare_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    _check_replaceable(out, str(out), overwrite)   # someone may have written there since the start
    if out.is_dir() and any(out.iterdir()):
        os.replace(out, tmp / "old")
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(tmp / "old", out)
            raise
    else:
        os.replace(new, out)                     # onto nothing, or onto an empty folder


def _assign_splits(uids: list[str], r2gen: dict[str, str], seed: int) -> tuple[dict[str, str], dict[str, int]]:
    known = {u: r2gen[u] for u in uids if u in r2gen}
    rest = seeded_split([u for u in uids if u not in r2gen], seed=seed)
    source = {"R2Gen annotation.json": len(known), f"seeded 70/10/20 split (seed {seed})": len(rest)}
    return {**known, **rest}, {k: v for k, v in source.items() if v}


def _png_index(src: Path, wanted: set[str], staging: Path) -> dict[str, Path]:
    """Image id -> file, for the ``wanted`` ids. From ``NLMCXR_png.tgz`` the wanted members are
    extracted in one sequential pass into ``staging`` (random access into a gzip stream would
    decompress it again for every image); otherwise PNG files anywhere below ``src`` are used."""
    tgz = src / "NLMCXR_png.tgz"
    if tgz.is_file():
        staging.mkdir(parents=True, exist_ok=True)
        index = {}
        try:
            with tarfile.open(tgz, "r:*") as tar:
                for m in tar:
                    stem = Path(m.name).name[:-4]
                    if m.isfile() and m.name.endswith(".png") and stem in wanted:
                        dest = staging / Path(m.name).name
                        dest.write_bytes(_member_bytes(tar, m))
                        index[stem] = dest
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{tgz} is not a readable .tgz archive ({e}); fetch it again with "
                            f"`python -m camegrad_mini.rrg.download --out {src}`") from e
        return index
    return {f.name[:-4]: f for f in src.rglob("*.png") if f.name[:-4] in wanted}


def _study_id(image_id: str, problems: Problems, ident: str | None = None) -> str | None:
    """R2Gen's study id of a study's first image, or None with a ``bad_image_id`` problem (by
    ``ident``, default the image id): one odd id skips its study, not the whole conversion."""
    try:
        return study_id_from_image_id(image_id)
    except ValueError:
        problems.add("bad_image_id", ident or image_id)
        return None


def convert_openi(src: str | os.PathLike, out: str | os.PathLike, *, annotation: str | os.PathLike | None = "auto",
                  seed: int = 0, strict: bool = False, overwrite: bool = False) -> PrepareResult:
    """Layout 2 -> layout 1 (module docstring). ``src`` holds ``NLMCXR_reports.tgz`` (or
    ``ecgen-radiology/``) and ``NLMCXR_png.tgz`` (or extracted PNGs anywhere below it)."""
    src = Path(src)
    reports_path = src / "NLMCXR_reports.tgz"
    if not reports_path.is_file():
        reports_path = src / "ecgen-radiology"
    if not src.is_dir() or not reports_path.exists():
        raise DataNotFoundError(
            f"src={str(src)!r} has no NLMCXR_reports.tgz (or ecgen-radiology/); fetch the Open-i "
            f"archives with `python -m camegrad_mini.rrg.download --out {src}`")
    out_path = _check_out(src, out, overwrite)
    r2gen = load_r2gen_split(annotation)
    with _staging(out_path) as tmp:
        problems = Problems()
        reports = read_openi_reports(reports_path, problems)
        wanted = {i for r in reports.values() for i in r.image_ids[:2]}
        index = _png_index(src, wanted, tmp / "png-staging")
        if not index:
            raise DataNotFoundError(
                f"no PNG images (NLMCXR_png.tgz or *.png) under {src}; fetch them with "
                f"`python -m camegrad_mini.rrg.download --out {src}`")
        selected = []
        first_uid: dict[str, str] = {}
        for uid in sorted(reports, key=lambda u: int(u[3:]) if u[3:].isdigit() else 0):
            rep = reports[uid]
            if not rep.findings:
                problems.add("no_findings", uid)
                continue
            if len(rep.image_ids) < 2:
                problems.add("too_few_images", uid)
                continue
            views = rep.image_ids[:2]
            sid = _study_id(views[0], problems)
            if sid is None:
                continue
            if sid in first_uid:     # two reports naming the same images would write one folder twice
                problems.add("duplicate_id", f"{sid} ({uid} repeats {first_uid[sid]})")
                continue
            first_uid[sid] = uid
            if not all(v in index for v in views):
                problems.add("no_images", sid)
                continue
            bad = [v for v in views if not is_readable_png(index[v].read_bytes())]
            if bad:
                for v in bad:
                    problems.add("unreadable_image", v)
                continue
            selected.append((uid, sid, rep, [index[v] for v in views]))
        problems.check(strict, kinds=("malformed_xml", "duplicate_uid", "bad_image_id", "duplicate_id",
                                      "no_images", "unreadable_image"), context=f"converting {src}")
        _require_studies(selected, src, problems)
        splits, source = _assign_splits([u for u, *_ in selected], r2gen, seed)
        studies = [(sid, rep.findings, splits[uid], [f.read_bytes for f in files])
                   for uid, sid, rep, files in selected]
        info = {"layout": "openi", "seed": seed, "split_source": source, "skipped": problems.to_dict()}
        _write_r2gen(tmp, out_path, studies, info, overwrite)
    counts = {s: sum(1 for st in studies if st[2] == s) for s in SPLITS}
    return PrepareResult(Path(out), counts, problems, source)


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a UTF-8 CSV export, or a ``DataError`` naming the file (wrong encoding or columns)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} lacks the columns {', '.join(missing)} (expected {', '.join(columns)}); "
                                f"use the indiana_*.csv files of the tabular export unchanged")
            return list(reader)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be decoded); "
                        f"save it as UTF-8 and run again") from e
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV file ({e}); use the tabular export unchanged") from e


def convert_tabular(src: str | os.PathLike, out: str | os.PathLike, *, annotation: str | os.PathLike | None = "auto",
                    seed: int = 0, strict: bool = False, overwrite: bool = False) -> PrepareResult:
    """Layout 3 -> layout 1. Study ids are rebuilt as ``CXR<uid>_IM-<nnnn>`` from the file names;
    view 0 is the first frontal image, view 1 the first lateral one (else the next image)."""
    src = Path(src)
    rep_csv, proj_csv, img_dir = src / "indiana_reports.csv", src / "indiana_projections.csv", src / "images_normalized"
    missing = [p.name for p in (rep_csv, proj_csv, img_dir) if not p.exists()]
    if missing:
        raise DataNotFoundError(
            f"src={str(src)!r} lacks {', '.join(missing)} (the tabular export). Use "
            f"`python -m camegrad_mini.rrg.download --out <raw>` and `--layout openi` instead if you "
            f"do not have the CSV export.")
    out_path = _check_out(src, out, overwrite)
    r2gen = load_r2gen_split(annotation)
    problems = Problems()
    findings: dict[str, str] = {}
    for row in _read_csv(rep_csv, ("uid", "findings")):
        try:
            findings[f"CXR{int(row['uid'])}"] = (row.get("findings") or "").strip()
        except (KeyError, ValueError, TypeError):
            problems.add("bad_row", f"indiana_reports.csv:{row.get('uid')!r}")
    views: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in _read_csv(proj_csv, ("uid", "filename", "projection")):
        try:
            uid = f"CXR{int(row['uid'])}"
            rank = 0 if row["projection"].strip().lower() == "frontal" else 1
            filename = row["filename"].strip()
            if not filename:
                raise ValueError("no file name")
            views[uid].append((rank, filename))
        except (KeyError, ValueError, TypeError, AttributeError):
            problems.add("bad_row", f"indiana_projections.csv:{row.get('uid')!r}")
    with _staging(out_path) as tmp:
        selected = []
        first_uid: dict[str, str] = {}
        for uid in sorted(findings, key=lambda u: int(u[3:])):
            if not findings[uid]:
                problems.add("no_findings", uid)
                continue
            files = sorted(views.get(uid, []))
            if len(files) < 2:
                problems.add("too_few_images", uid)
                continue
            frontal = [f for r, f in files if r == 0]
            lateral = [f for r, f in files if r == 1]
            chosen = [frontal[0], lateral[0]] if frontal and lateral else [f for _, f in files[:2]]
            sid = _study_id("CXR" + chosen[0].split(".")[0], problems, ident=chosen[0])
            if sid is None:
                continue
            if sid in first_uid:
                problems.add("duplicate_id", f"{sid} ({uid} repeats {first_uid[sid]})")
                continue
            first_uid[sid] = uid
            paths = [img_dir / c for c in chosen]
            if not all(p.is_file() for p in paths):
                problems.add("no_images", sid)
                continue
            bad = [c for c, p in zip(chosen, paths, strict=True) if not is_readable_png(p.read_bytes())]
            if bad:
                for c in bad:
                    problems.add("unreadable_image", c)
                continue
            selected.append((uid, sid, findings[uid], paths))
        problems.check(strict, kinds=("bad_row", "bad_image_id", "duplicate_id", "no_images", "unreadable_image"),
                       context=f"converting {src}")
        _require_studies(selected, src, problems)
        splits, source = _assign_splits([u for u, *_ in selected], r2gen, seed)
        studies = [(sid, rep, splits[uid], [p.read_bytes for p in paths]) for uid, sid, rep, paths in selected]
        info = {"layout": "tabular", "seed": seed, "split_source": source, "skipped": problems.to_dict()}
        _write_r2gen(tmp, out_path, studies, info, overwrite)
    counts = {s: sum(1 for st in studies if st[2] == s) for s in SPLITS}
    return PrepareResult(Path(out), counts, problems, source)


def copy_r2gen(src: str | os.PathLike, out: str | os.PathLike, *, strict: bool = False,
               overwrite: bool = False) -> PrepareResult:
    """Layout 1 -> layout 1: validate an R2Gen folder (entries without id, image paths or report,
    repeated ids, missing or unreadable images: reported by id) and write a clean copy with only
    the complete studies."""
    src = Path(src)
    problems = Problems()
    ann = read_r2gen(src, problems)
    out_path = _check_out(src, out, overwrite)
    with _staging(out_path) as tmp:
        studies = []
        for split in SPLITS:
            for e in ann[split]:
                paths = [src / "images" / p for p in e["image_path"]]
                if not all(is_readable_png(p.read_bytes()) for p in paths):
                    problems.add("unreadable_image", e["id"])
                    continue
                studies.append((e["id"], e["report"], split, [p.read_bytes for p in paths]))
        problems.check(strict, context=f"checking {src}")
        _require_studies(studies, src, problems)
        split_source = {"R2Gen annotation.json": len(studies)}
        info = {"layout": "r2gen", "split_source": split_source, "skipped": problems.to_dict()}
        _write_r2gen(tmp, out_path, studies, info, overwrite)
    counts = {s: sum(1 for st in studies if st[2] == s) for s in SPLITS}
    return PrepareResult(Path(out), counts, problems, split_source)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
