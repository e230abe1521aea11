"""Fault injection for ``python -m camegrad_mini.rrg.download``: one test per fault, each naming it.

Every server here is ``http.server`` on 127.0.0.1 in a daemon thread, shut down when its test ends
(and by a timer if a test hangs); nothing else is contacted. The archives are small real .tgz files
built in memory, served under the name of the Open-i PNG archive (no known size or checksum).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import random
import tarfile
import threading

from camegrad_mini.rrg import download as dl

PNG = "NLMCXR_png.tgz"


def _tgz(seed: int, members: int = 3, size: int = 64 * 1024) -> bytes:
    """A real gzip'd tar of random (so incompressible) members, about ``members * size`` bytes."""
    rnd = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(members):
            data = rnd.randbytes(size)
            info = tarfile.TarInfo(f"img/CXR{i}_IM-0000-1001.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@contextlib.contextmanager
def _serve(do_get, protocol: str = "HTTP/1.0"):
    """Yield the base URL of a local server whose GET handler is ``do_get(handler)``."""

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = protocol

        def do_GET(self):  # noqa: N802 (http.server's naming)
            do_get(self)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    guard = threading.Timer(60, srv.shutdown)        # a hung test must not leave a server behind
    guard.daemon = True
    guard.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        guard.cancel()
        srv.shutdown()
        srv.server_close()


def _full(payload: bytes):
    """A GET handler serving ``payload`` with Content-Length, honouring ``Range: bytes=N-``."""
    def do_get(h):
        start = int(h.headers["Range"].split("=")[1].rstrip("-")) if h.headers.get("Range") else 0
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(len(payload) - start))
        h.end_headers()
        h.wfile.write(payload[start:])
    return do_get


def _status(code: int):
    def do_get(h):
        h.send_error(code)
    return do_get


def _run(capsys, out, base, only="images"):
    rc = dl.main(["--out", str(out), "--base-url", base, "--only", only, "--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_truncated_download_without_content_length_is_not_kept_as_final(tmp_path, capsys):
    """Fault 1a: a server with no Content-Length drops mid-body; the truncated archive got its final name, exit 0."""
    payload = _tgz(0)
    half = len(payload) // 2

    def drop_mid_body(h):            # HTTP/1.0, no length: closing the socket looks like a clean end
        h.send_response(200)
        h.end_headers()
        h.wfile.write(payload[:half])

    out = tmp_path / "raw"
    with _serve(drop_mid_body) as base:
        rc, _, err = _run(capsys, out, base)
    line = _one_error_line(err)
    assert rc == 1 and "truncated" in line and "again" in line and "resume" in line
    assert not (out / PNG).exists()
    assert (out / (PNG + ".part")).read_bytes() == payload[:half]       # kept for resuming

    with _serve(_full(payload)) as base:                                 # the next run resumes
        rc, stdout, err = _run(capsys, out, base)
    assert rc == 0 and f"resumed at {half}" in stdout, err
    assert (out / PNG).read_bytes() == payload and not (out / (PNG + ".part")).exists()
    record = json.loads((out / (PNG + dl.RECORD_SUFFIX)).read_text())
    assert record["size"] == len(payload) and record["sha256"] == hashlib.sha256(payload).hexdigest()

    rc, stdout, _ = _run(capsys, out, (tmp_path / "nowhere").as_uri())  # verified from the record
    assert rc == 0 and "already present and verified" in stdout


def test_truncated_archive_already_under_final_name_is_not_trusted(tmp_path, capsys):
    """Fault 1b: a truncated NLMCXR_png.tgz already under its final name was reported 'already present and verified'."""
    payload = _tgz(0)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / PNG).write_bytes(payload)
    out = tmp_path / "raw"
    out.mkdir()
    (out / PNG).write_bytes(payload[: len(payload) // 2])               # e.g. left by an older version
    rc, stdout, err = _run(capsys, out, mirror.as_uri())
    line = _one_error_line(err)
    assert rc == 1 and "already present" not in stdout
    assert str(out / PNG) in line and "truncated" in line and "remove" in line
    assert (out / PNG).read_bytes() == payload[: len(payload) // 2]     # not ours to delete: untouched


def test_verified_archive_replaced_afterwards_is_detected(tmp_path, capsys):
    """Fault 1c: nothing recorded what was downloaded, so another NLMCXR_png.tgz in its place passed as verified."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / PNG).write_bytes(_tgz(0))
    out = tmp_path / "raw"
    assert _run(capsys, out, mirror.as_uri())[0] == 0
    other = _tgz(1)                                   # a valid archive, but not the one downloaded
    (out / PNG).write_bytes(other)
    rc, stdout, err = _run(capsys, out, mirror.as_uri())
    line = _one_error_line(err)
    assert rc == 1 and "already present" not in stdout
    assert f"recorded in {PNG}{dl.RECORD_SUFFIX}" in line and "remove" in line
    assert (out / PNG).read_bytes() == other


def test_chunked_transfer_drop_is_a_clear_resumable_error(tmp_path, capsys):
    """Fault 2: a chunked transfer that drops (http.client.IncompleteRead) escaped as a raw traceback."""
    payload = (dl.Path(__file__).parents[2] / "data_samples" / "iu_xray" / "NLMCXR_reports.tgz").read_bytes()
    sent = 300_000

    def chunked_then_drop(h):
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, sent, 50_000):
            block = payload[i:i + 50_000]
            h.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        h.wfile.write(b"1000\r\n" + payload[sent:sent + 10])             # a chunk cut short
        h.wfile.flush()
        h.close_connection = True

    out = tmp_path / "raw"
    with _serve(chunked_then_drop, protocol="HTTP/1.1") as base:
        rc, _, err = _run(capsys, out, base, only="reports")
    line = _one_error_line(err)
    assert rc == 1 and "interrupted" in line and "resume" in line
    part = out / "NLMCXR_reports.tgz.part"
    assert 0 < part.stat().st_size <= sent and payload.startswith(part.read_bytes())
    kept = part.stat().st_size

    with _serve(_full(payload)) as base:
        rc, stdout, err = _run(capsys, out, base, only="reports")
    assert rc == 0 and f"resumed at {kept}" in stdout, err
    assert (out / "NLMCXR_reports.tgz").read_bytes() == payload


def test_http_404_is_not_reported_as_offline(tmp_path, capsys):
    """Fault 3a: an HTTP 404 from the server was reported as 'Are you offline?'."""
    with _serve(_status(404)) as base:
        rc, _, err = _run(capsys, tmp_path / "raw", base)
    line = _one_error_line(err)
    assert rc == 1 and "offline" not in line
    assert "not found" in line and "HTTP 404" in line and base + PNG in line


def test_http_500_is_not_reported_as_offline(tmp_path, capsys):
    """Fault 3b: an HTTP 500 from the server was reported as 'Are you offline?'."""
    with _serve(_status(500)) as base:
        rc, _, err = _run(capsys, tmp_path / "raw", base)
    line = _one_error_line(err)
    assert rc == 1 and "offline" not in line
    assert "server error" in line and "HTTP 500" in line and base + PNG in line


def test_refused_port_is_reported_as_unreachable_without_an_http_status(tmp_path, capsys):
    """Only a host that cannot be reached is 'offline': nothing listens on port 9 of 127.0.0.1."""
    rc, _, err = _run(capsys, tmp_path / "raw", "http://127.0.0.1:9/")
    line = _one_error_line(err)
    assert rc == 1 and "connection refused" in line and "offline" in line and "HTTP" not in line
    assert "http://127.0.0.1:9/" + PNG in line and not (tmp_path / "raw" / PNG).exists()


def test_unresolvable_host_is_reported_as_offline(tmp_path, capsys, monkeypatch):
    """A DNS failure (simulated: no network here) names the host that does not resolve."""
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    rc, _, err = _run(capsys, tmp_path / "raw", "https://openi.example.invalid/imgs/")
    line = _one_error_line(err)
    assert rc == 1 and "openi.example.invalid does not resolve" in line and "offline" in line


def test_http_error_after_a_partial_download_keeps_the_part(tmp_path, capsys):
    """A 503 while resuming says so and keeps the bytes already received for the next run."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / (PNG + ".part")).write_bytes(b"x" * 1000)
    with _serve(_status(503)) as base:
        rc, _, err = _run(capsys, tmp_path / "raw", base)
    line = _one_error_line(err)
    assert rc == 1 and "HTTP 503" in line and "offline" not in line and "next run resumes it" in line
    assert (tmp_path / "raw" / (PNG + ".part")).stat().st_size == 1000
