"""Download the official Open-i IU X-Ray archives, resumably and verified.

``python -m camegrad_mini.rrg.download --out data/iu_xray_raw`` fetches

* ``NLMCXR_reports.tgz`` (1.1 MB; 3,955 report XMLs), checked against its known size and sha256;
* ``NLMCXR_png.tgz`` (about 1.3 GB; 7,470 PNGs), checked against the server's Content-Length and
  read through to its end (Open-i publishes no checksum; pass ``--sha256-png`` if you have one).

Each file is streamed into ``<name>.part`` with a tqdm progress bar; an interrupted download
resumes from the bytes already there (HTTP ``Range``; a server that ignores it makes us start
over). Only a verified file is moved to its final name with ``os.replace``, so a half-written
archive never looks complete: a ``.tgz`` without a known sha256 must read to its end (a server
that sends no length and drops the connection otherwise looks like a clean end). The size and
sha256 of such a file are recorded in ``<name>.verified.json``; a later run checks the file it
finds against that record (or reads an unrecorded ``.tgz`` through) instead of trusting that it
exists, and a file that fails is left alone, with an error saying to remove it.
``file://`` URLs work the same way (the tests use a local mirror).
Then convert the archives: ``python -m camegrad_mini.rrg.prepare --layout openi --src ... --out ...``.

``python -m camegrad_mini.rrg.download --samples`` instead fetches the book's own small
``data_samples/iu_xray`` (real reports of all studies, 18 radiographs) from the repository at the
installed version's tag, for installs without a clone (Colab); ``load_iu_xray()`` finds it there.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

OPENI_BASE = "https://openi.nlm.nih.gov/imgs/collections/"
OPENI_FILES: dict[str, dict] = {
    "NLMCXR_reports.tgz": {"size": 1112632,
                           "sha256": "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"},
    "NLMCXR_png.tgz": {"size": None, "sha256": None},
}


# The shipped samples (data_samples/iu_xray), for machines that installed the package without the
# repository (e.g. Colab): fetched from the repository at the package's version tag by
# `fetch_samples` / `--samples`. Size and sha256 of each unchanged file; README.md is not checked.
SAMPLE_FILES: dict[str, tuple[int | None, str | None]] = {
    "annotation.json": (1008692, "56cdca10b3a0be7500da93dd7df5f99e6d6d4ef4d68ba318a75f22e59e422b13"),
    "NLMCXR_reports.tgz": (1112632, "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a"),
    "indiana_reports.csv": (1679461, "fd718e074451e93effedd868ca8995d2495e58e85878e08853f2dd35810f2149"),
    "indiana_projections.csv": (289397, "7af9c8a6b4f8ae695c654ecd4208edd193a37892a5607b7cb9e609dc997e6b7a"),
    "images/manifest.csv": (3689, "8764be2f77e864cef0f2816bf0085de08afedaef8f12c198526472513f770a57"),
    "images/CXR1000_IM-0003-1001.png": (2144707, "b73b5378101308a313a74401de84f3fa5a98cdf118e704ef816c5ba63844b60f"),
    "images/CXR1000_IM-0003-2001.png": (1972305, "f7de1c9597f337dc36ff9e517a5296126dafa6f921df25e2019a1f45db714ec0"),
    "images/CXR1000_IM-0003-3001.png": (2065603, "58483e3cbfc1b661e0d1c1c6576c2f96077aec073c2e056ae01bfb0794a038db"),
    "images/CXR1001_IM-0004-1001.png": (1952236, "ed045cc8eeacb4d6abdacb2e642b2f913d59d9adc189190ff6eec4d1390ae531"),
    "images/CXR1900_IM-0584-1001.png": (216444, "7d34a5708d9bc668d64c53b6f045dc11bfd0160113b9d4f5c166476fe753f2d8"),
    "images/CXR1900_IM-0584-2001.png": (184446, "373d4e830cab2adab8c51d5c645862f8e7f97d1b20f45628cf6541394aceacba"),
    "images/CXR2577_IM-1077-1001.png": (119755, "02f689b0f8dcdb5b5ef232810dcd86d6191fb1e5c2fb64178562803573a74757"),
    "images/CXR25_IM-1024-2001.png": (207374, "364efd3cb257c29d851bb939eb0320a3cc61fc8980bcea0ff9eedb7316bc5827"),
    "images/CXR2882_IM-1286-1001.png": (133634, "d50bf4059f11a389009f5d67dfa017c2c3a4129d0afedb283fdd86226418fe79"),
    "images/CXR2_IM-0652-1001.png": (195496, "b6d65a6b84c518096775c84f80327705acd2cc15b2437549359b8a1dc1f0accc"),
    "images/CXR2_IM-0652-2001.png": (157096, "a4f0783041e00993ac2e16a409f443df0750cd733c69ad460e7f32fa57333a3f"),
    "images/CXR303_IM-1404-1001.png": (195836, "5ed26ada8b3237f37e061a3bb36a87d99407fc93e595b4ce28970570e743d28e"),
    "images/CXR3_IM-1384-1001.png": (218845, "29ab7b1f15265446cf5a416fd4fc394393da7d02d20ab6bad1243bf56365d9ac"),
    "images/CXR54_IM-2145-1001.png": (162605, "db9f888c6b6930b06a697c452f8ba2b4d4b3e37292db8822b85bd007ceee4f9f"),
    "images/CXR54_IM-2145-1002.png": (196930, "0e841c9d085d607b269bac33d7f3469dbc50a58a40b9b75d71a664e14ed45e38"),
    "images/CXR7_IM-2263-1001.png": (213511, "d5a758965423ecd865f20adde4b768c3b98d3e23c43b1e37c7f36f14f9753542"),
    "images/CXR7_IM-2263-2001.png": (168807, "3488a44cdb88c3dc4e5040a1ee282f33b38243fd767919dbda3a1eb30a62e7f7"),
    "images/CXR861_IM-2382-1001.png": (210909, "bf9535b32e9db59a655629cdc5328a7c2c4ef658b51f5f2b004d5c5d3fe41045"),
    "README.md": (None, None),
}


class DownloadError(RuntimeError):
    """A download failed (offline, HTTP error, size or checksum mismatch); the message says what to do."""


@dataclass
class DownloadResult:
    path: Path
    bytes_downloaded: int
    resumed_from: int
    skipped: bool


# Written next to each finished file without a known checksum: what was downloaded (size, sha256, from where). Open-i
# publishes no checksum for the PNG archive, so this record is the only way a later run can tell
# the file it finds is still the one that was verified, rather than trusting that it exists.
RECORD_SUFFIX = ".verified.json"


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + RECORD_SUFFIX)


def _read_record(dest: Path) -> dict | None:
    try:
        record = json.loads(_record_path(dest).read_text())
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None  # no (readable) record: the file is checked as if it had none


def _write_record(dest: Path, size: int, sha256: str, url: str | None) -> None:
    record = _record_path(dest)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({"name": dest.name, "size": size, "sha256": sha256, "url": url}, indent=1) + "\n")
    os.replace(tmp, record)


def _is_tgz(name: str) -> bool:
    return name.endswith((".tgz", ".tar.gz"))


class _BadArchive(Exception):
    """A .tgz that does not read to its end; ``truncated`` when it merely ends early (resumable)."""

    def __init__(self, reason: str, truncated: bool):
        super().__init__(reason)
        self.reason, self.truncated = reason, truncated


class _HashingReader:
    """A file wrapper that hashes every byte read, so the archive check and the sha256 share one pass."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        block = self.f.read(n)
        self.h.update(block)
        return block

    def seek(self, n: int, /) -> int:
        # gzip's reader protocol names seek, but a forward read never calls it; a seek would skip hashing
        raise io.UnsupportedOperation("a hashing reader reads forward only")


def _digest(path: Path, *, archive: bool = False) -> str:
    """sha256 of ``path``. With ``archive``, also read it as a .tgz to the end (tar members and the
    gzip trailer's CRC and length) in the same streaming pass, raising :class:`_BadArchive`: a
    download cut short without an error (no Content-Length) is a valid-looking gzip prefix."""
    with path.open("rb") as f:
        reader = _HashingReader(f)
        if archive:
            try:
                with gzip.GzipFile(fileobj=reader) as gz:
                    with tarfile.open(fileobj=gz, mode="r|") as tar:
                        for member in tar:
                            data = tar.extractfile(member)
                            while data is not None and data.read(1 << 20):
                                pass
                    while gz.read(1 << 20):  # past tar's end marker, up to the gzip trailer
                        pass
            except EOFError as e:  # the gzip stream stops before its end marker
                raise _BadArchive("the gzip stream ends before its end marker", truncated=True) from e
            except (tarfile.TarError, OSError, zlib.error) as e:  # not gzip, bad CRC, not a tar
                raise _BadArchive(f"not a valid .tgz: {e}", truncated=False) from e
        while reader.read(1 << 20):
            pass
    return reader.h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    """Return ``(stream, total_size or None, offset actually honoured)``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(url2pathname(parsed.path))
        if not path.is_file():
            raise DownloadError(f"{path.name} not found at {url} (no such file in the mirror); check --base-url")
        try:
            f = path.open("rb")
        except OSError as e:
            raise DownloadError(f"{url}: cannot read the mirror's file ({e})") from e
        size = path.stat().st_size
        f.seek(min(offset, size))
        return f, size, min(offset, size)
    req = urllib.request.Request(url, headers={"User-Agent": "camegrad_mini"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    resp = urllib.request.urlopen(req, timeout=timeout)
    length = resp.headers.get("Content-Length")
    if offset and resp.status == 206:
        total = offset + int(length) if length else None
        return resp, total, offset
    return resp, (int(length) if length else None), 0  # server ignored Range: start over


def _open_error(url: str, e: Exception, timeout: float) -> str:
    """What went wrong opening ``url``, in words: only an unreachable host means "offline"; an
    HTTP status means the host answered, so the user needs the status and URL, not their wifi."""
    host = urlparse(url).netloc or "the mirror"
    if isinstance(e, urllib.error.HTTPError):
        if e.code == 404:
            return f"{Path(urlparse(url).path).name or 'file'} not found at {url} (HTTP 404); check --base-url"
        if e.code >= 500:
            return f"server error at {url} (HTTP {e.code} {e.reason}); the server has a problem, try again later"
        return f"{url} was refused by the server (HTTP {e.code} {e.reason})"
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, ssl.SSLError):
        return f"no secure connection to {host} ({reason}); check the system's certificates and proxy settings"
    if isinstance(e, urllib.error.URLError) and isinstance(reason, OSError):  # DNS, refused, connect timeout
        return _unreachable(host, url, reason)
    if isinstance(reason, TimeoutError):
        return f"{host} did not answer within {timeout:g} s ({url}); try again later"
    if isinstance(e, urllib.error.URLError):
        return f"could not open {url} ({reason})"
    return f"the connection to {host} broke before {url} started ({type(e).__name__}: {e}); try again"


def _unreachable(host: str, url: str, reason: OSError) -> str:
    """The host never answered: the one case where being offline is the likely cause."""
    if isinstance(reason, socket.gaierror):
        why = f"the name {urlparse(url).hostname} does not resolve ({reason.strerror or reason})"
    elif isinstance(reason, ConnectionRefusedError):
        why = "connection refused: nothing answers at that address"
    else:
        why = str(reason)
    return (f"cannot reach {host} to fetch {url}: {why}. Are you offline? This needs internet access to {host} "
            "(or a --base-url that answers)")


def _refuse(dest: Path, why: str) -> DownloadError:
    """An existing file that fails verification: we cannot vouch for it, so it is never replaced silently."""
    return DownloadError(f"{dest} is already there but {why}; it was left untouched: remove it (or move it "
                         "away) and run the same command again to download it afresh")


def _verified_existing(dest: Path, *, sha256: str | None, size: int | None) -> bool:
    """True when ``dest`` is there and verified, False when it is absent; raise when it fails."""
    if not dest.is_file():
        return False
    record = _read_record(dest)
    origin = "expected" if sha256 is not None else f"recorded in {_record_path(dest).name}"
    if sha256 is None and record is not None:
        sha256, size = record.get("sha256"), size if size is not None else record.get("size")
    n = dest.stat().st_size
    if size is not None and n != size:
        raise _refuse(dest, f"has {n} bytes, not the {size} {origin}")
    if sha256 is None:
        if not _is_tgz(dest.name):
            return True  # nothing to check it against (e.g. the samples' README.md)
        try:  # unrecorded (e.g. from an older version): a .tgz that reads to its end is complete
            digest = _digest(dest, archive=True)
        except _BadArchive as e:
            raise _refuse(dest, f"is {'truncated' if e.truncated else 'damaged'} ({e.reason})") from e
        try:
            _write_record(dest, n, digest, None)
        except OSError:
            pass  # a read-only data folder: verified now, just not remembered
        return True
    digest = _digest(dest)
    if digest != sha256:
        raise _refuse(dest, f"its sha256 {digest} differs from the {sha256} {origin}")
    return True


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
                  progress: bool = True, timeout: float = 30.0, chunk: int = 1 << 16) -> DownloadResult:
    """Fetch ``url`` into ``dest`` (module docstring). Raises :class:`DownloadError`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if _verified_existing(dest, sha256=sha256, size=size):
        return DownloadResult(dest, 0, 0, True)
    offset = part.stat().st_size if part.is_file() else 0
    try:
        stream, total, offset = _open(url, offset, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if isinstance(e, urllib.error.HTTPError) and e.code == 416 and offset:
            part.unlink(missing_ok=True)  # our partial file is longer than the remote one: restart
            return download_file(url, dest, sha256=sha256, size=size, progress=progress, timeout=timeout, chunk=chunk)
        kept = f"the partial file {part} is kept and the next run resumes it" if offset else "nothing was written"
        raise DownloadError(f"{_open_error(url, e, timeout)}; {kept}.") from e
    if size is not None and total is not None and total != size:
        stream.close()
        raise DownloadError(f"{url} reports {total} bytes but {size} were expected; not downloading")
    got = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name)
    try:
        with stream, part.open("ab" if offset else "wb") as out:
            while True:
                block = stream.read(chunk)
                if not block:
                    break
                out.write(block)
                got += len(block)
                if bar is not None:
                    bar.update(len(block))
    # IncompleteRead (a chunked transfer that drops) is an HTTPException, not an OSError
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        why = "the connection closed mid-transfer" if isinstance(e, http.client.IncompleteRead) else f"{e}"
        raise DownloadError(f"the download of {url} was interrupted ({why}); {part} keeps the "
                            f"{part.stat().st_size} bytes received: run the same command again to resume") from e
    finally:
        if bar is not None:
            bar.close()
    n = part.stat().st_size
    expected = size if size is not None else total
    if expected is not None and n != expected:
        raise DownloadError(f"{part} has {n} bytes, expected {expected}; run the command again to resume")
    try:  # a known checksum settles it; otherwise a .tgz must read to its end
        digest = _digest(part, archive=sha256 is None and _is_tgz(dest.name))
    except _BadArchive as e:
        if e.truncated:
            raise DownloadError(f"the download of {url} is truncated ({e.reason}; the connection probably "
                                f"dropped); {part} keeps the {n} bytes received: run the same command "
                                "again to resume") from e
        part.unlink()
        raise DownloadError(f"{url} did not deliver a valid archive ({e.reason}); the bad download was "
                            "deleted: check --base-url and run the command again") from e
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {dest.name}: sha256 {digest} != expected {sha256}; "
                            "the corrupt file was deleted, run the command again")
    os.replace(part, dest)
    if sha256 is None:  # a known checksum already identifies the file; otherwise remember this one's
        _write_record(dest, n, digest, url)
    return DownloadResult(dest, got, offset, False)


def download_openi(out: str | os.PathLike, *, base_url: str = OPENI_BASE, which: tuple[str, ...] = tuple(OPENI_FILES),
                   progress: bool = True, sha256_png: str | None = None) -> list[DownloadResult]:
    """Download the Open-i archives named in ``which`` into ``out``."""
    unknown = set(which) - set(OPENI_FILES)
    if unknown:
        raise ValueError(f"which must name files of {sorted(OPENI_FILES)}, got {sorted(unknown)}")
    results = []
    for name in which:
        meta = dict(OPENI_FILES[name])
        if name == "NLMCXR_png.tgz" and sha256_png:
            meta["sha256"] = sha256_png
        results.append(download_file(base_url.rstrip("/") + "/" + name, Path(out) / name,
                                     sha256=meta["sha256"], size=meta["size"], progress=progress))
    return results


def samples_base_url() -> str:
    """Raw-file URL of ``data_samples/iu_xray`` at this package version's tag."""
    from .. import __version__
    from .paths import REPOSITORY_URL

    return f"{REPOSITORY_URL}/raw/v{__version__}/data_samples/iu_xray/"


def fetch_samples(dest: str | os.PathLike | None = None, *, base_url: str | None = None,
                  progress: bool = True) -> Path:
    """Download the shipped samples (about 15 MB) into ``dest`` (default: the cache folder, where
    ``data_samples_dir()`` looks last) and return the folder. Each file is verified."""
    from .paths import cache_dir

    dest = Path(dest) if dest is not None else cache_dir() / "data_samples" / "iu_xray"
    base = (base_url or samples_base_url()).rstrip("/") + "/"
    for rel, (size, sha) in SAMPLE_FILES.items():
        download_file(base + rel, dest / rel, sha256=sha, size=size, progress=progress)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m camegrad_mini.rrg.download", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="folder for the archives (e.g. data/iu_xray_raw)")
    ap.add_argument("--samples", action="store_true",
                    help="instead, fetch the book's small data_samples/iu_xray (for installs without the repository)")
    ap.add_argument("--only", choices=["reports", "images"], help="fetch just one of the two archives")
    ap.add_argument("--base-url", default=OPENI_BASE, help="mirror base URL (https:// or file://)")
    ap.add_argument("--sha256-png", default=None, help="expected sha256 of NLMCXR_png.tgz, if known")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.samples:
        try:
            where = fetch_samples(a.out, base_url=None if a.base_url == OPENI_BASE else a.base_url,
                                  progress=not a.no_progress)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"samples in {where}")
        return 0
    if a.out is None:
        ap.error("--out is required (the folder for the Open-i archives)")
    which = {"reports": ("NLMCXR_reports.tgz",), "images": ("NLMCXR_png.tgz",), None: tuple(OPENI_FILES)}[a.only]
    try:
        for r in download_openi(a.out, base_url=a.base_url, which=which, progress=not a.no_progress,
                                sha256_png=a.sha256_png):
            resumed = f" (resumed at {r.resumed_from})" if r.resumed_from else ""
            state = "already present and verified" if r.skipped else f"downloaded {r.bytes_downloaded} bytes{resumed}"
            print(f"{r.path}: {state}")
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"next: python -m camegrad_mini.rrg.prepare --layout openi --src {a.out} --out <folder>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
