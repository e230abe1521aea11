"""Downloader against a local file:// mirror built from data_samples (never from /work/shared)."""
from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from camegrad_mini.rrg import download as dl

SAMPLES = Path(__file__).parents[1] / "data_samples" / "iu_xray"


@pytest.fixture()
def mirror(tmp_path):
    m = tmp_path / "mirror"
    m.mkdir()
    shutil.copy(SAMPLES / "NLMCXR_reports.tgz", m)
    # a real (tiny) .tgz: the downloader reads an archive without a known checksum to its end
    with tarfile.open(m / "NLMCXR_png.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("CXR1_IM-0001-1001.png")
        info.size = len(fake := b"fake image " * 1000)
        tar.addfile(info, io.BytesIO(fake))
    return m


def test_shipped_reports_archive_is_the_official_file():
    assert hashlib.sha256((SAMPLES / "NLMCXR_reports.tgz").read_bytes()).hexdigest() == \
        dl.OPENI_FILES["NLMCXR_reports.tgz"]["sha256"]


def test_download_from_mirror_verifies_and_places_atomically(mirror, tmp_path):
    out = tmp_path / "raw"
    res = dl.download_openi(out, base_url=mirror.as_uri(), progress=False)
    assert [r.path.name for r in res] == ["NLMCXR_reports.tgz", "NLMCXR_png.tgz"]
    assert (out / "NLMCXR_reports.tgz").read_bytes() == (SAMPLES / "NLMCXR_reports.tgz").read_bytes()
    assert not list(out.glob("*.part"))
    again = dl.download_openi(out, base_url=mirror.as_uri(), progress=False, which=("NLMCXR_reports.tgz",))
    assert again[0].skipped


def test_resume_of_a_partial_download(mirror, tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    full = (SAMPLES / "NLMCXR_reports.tgz").read_bytes()
    (out / "NLMCXR_reports.tgz.part").write_bytes(full[:400_000])
    res = dl.download_openi(out, base_url=mirror.as_uri(), progress=False, which=("NLMCXR_reports.tgz",))[0]
    assert res.resumed_from == 400_000 and res.bytes_downloaded == len(full) - 400_000
    assert (out / "NLMCXR_reports.tgz").read_bytes() == full


def test_checksum_mismatch_deletes_and_raises(mirror, tmp_path):
    (mirror / "NLMCXR_reports.tgz").write_bytes(b"x" * dl.OPENI_FILES["NLMCXR_reports.tgz"]["size"])
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.download_openi(tmp_path / "raw", base_url=mirror.as_uri(), progress=False, which=("NLMCXR_reports.tgz",))
    assert not any((tmp_path / "raw").iterdir())            # neither final nor partial file left


def test_size_mismatch_and_offline_error(tmp_path, mirror):
    with pytest.raises(dl.DownloadError, match="expected"):
        dl.download_file((mirror / "NLMCXR_png.tgz").as_uri(), tmp_path / "x.tgz", size=5, progress=False)
    # nothing listens on port 9 (discard) of localhost: the same path as being offline
    with pytest.raises(dl.DownloadError, match="offline"):
        dl.download_file("http://127.0.0.1:9/NLMCXR_reports.tgz", tmp_path / "y.tgz", progress=False, timeout=5)
    assert not (tmp_path / "y.tgz").exists()


def test_cli_reports_errors_without_traceback(tmp_path, capsys, mirror):
    assert dl.main(["--out", str(tmp_path / "r"), "--base-url", mirror.as_uri(), "--only", "reports",
                    "--no-progress"]) == 0
    assert "prepare --layout openi" in capsys.readouterr().out
    assert dl.main(["--out", str(tmp_path / "r2"), "--base-url", "http://127.0.0.1:9/", "--no-progress"]) == 1
    assert "offline" in capsys.readouterr().err


def _serve(payload: bytes, honour_range: bool):
    """A local HTTP server for one payload that honours ``Range: bytes=N-`` (or ignores it)."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            start = 0
            rng = self.headers.get("Range")
            if rng and honour_range:
                start = int(rng.split("=")[1].rstrip("-"))
                self.send_response(206)
            else:
                self.send_response(200)
            body = payload[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("honour_range", [True, False])
def test_http_resume_with_and_without_range_support(tmp_path, honour_range):
    payload = (SAMPLES / "NLMCXR_reports.tgz").read_bytes()
    srv = _serve(payload, honour_range)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/NLMCXR_reports.tgz"
        (tmp_path / "f.tgz.part").write_bytes(payload[:1000])
        meta = dl.OPENI_FILES["NLMCXR_reports.tgz"]
        res = dl.download_file(url, tmp_path / "f.tgz", sha256=meta["sha256"], size=meta["size"], progress=False)
    finally:
        srv.shutdown()
        srv.server_close()
    assert (tmp_path / "f.tgz").read_bytes() == payload
    assert res.resumed_from == (1000 if honour_range else 0)     # a server ignoring Range: start over


def test_sample_manifest_matches_shipped_files_and_fetch_from_mirror(tmp_path, monkeypatch):
    shipped = {str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.is_file()}
    assert shipped == set(dl.SAMPLE_FILES)                      # nothing shipped without a checksum
    for rel, (size, sha) in dl.SAMPLE_FILES.items():
        if sha is not None:
            data = (SAMPLES / rel).read_bytes()
            assert len(data) == size and hashlib.sha256(data).hexdigest() == sha, rel
    assert dl.samples_base_url().endswith("/data_samples/iu_xray/") and "/raw/v" in dl.samples_base_url()
    # a "repository" mirror with only the small files: fetching must verify and place them
    monkeypatch.setattr(dl, "SAMPLE_FILES", {k: v for k, v in dl.SAMPLE_FILES.items()
                                             if k in ("annotation.json", "NLMCXR_reports.tgz", "README.md")})
    monkeypatch.setenv("CAMEGRAD_MINI_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    where = dl.fetch_samples(base_url=SAMPLES.as_uri(), progress=False)
    assert (where / "annotation.json").read_bytes() == (SAMPLES / "annotation.json").read_bytes()
    assert where == tmp_path / "cache" / "data_samples" / "iu_xray"


def test_missing_file_in_a_file_mirror_names_the_url(tmp_path):
    url = (tmp_path / "NLMCXR_png.tgz").as_uri()
    with pytest.raises(dl.DownloadError, match=r"NLMCXR_png.tgz not found at file://.*check --base-url") as e:
        dl.download_file(url, tmp_path / "out" / "x.tgz", progress=False)
    assert "offline" not in str(e.value)
