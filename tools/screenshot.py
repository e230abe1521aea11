"""Open the built site in headless Chromium the way a reader sees it, check it, and screenshot it.

Usage: python tools/screenshot.py [--site _build/html] [--out _build/screenshots]

The site loads MathJax and the ipywidgets manager from public CDNs. This machine (and CI) has no
route to those CDNs, so the script fetches the same versions from the npm registry (`npm pack`,
cached in .cache/site-vendor), serves a copy of the site on 127.0.0.1 with the CDN addresses
pointed at those files, and opens every chapter in Debian's Chromium. For each chapter it checks
that MathJax typeset the math (mjx-container elements), that figures are present, and that the
Colab launch button is on the page, then saves a PNG. It exits non-zero if a check fails.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / ".cache" / "site-vendor"
# npm package -> folder name under _vendor; versions match what the built pages request.
PACKAGES = {
    "mathjax@3.2.2": "mathjax",
    "@jupyter-widgets/html-manager@1.0.6": "html-manager",
    "requirejs@2.3.7": "requirejs",
}
REWRITES = [
    (re.compile(r"https://cdn\.jsdelivr\.net/npm/mathjax@3/"), "/_vendor/mathjax/"),
    (re.compile(r"https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[0-9.]+/require(\.min)?\.js"),
     "/_vendor/requirejs/require.js"),
    (re.compile(r"https://cdn\.jsdelivr\.net/npm/@jupyter-widgets/html-manager@[^/]+/"), "/_vendor/html-manager/"),
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=15000",
]


def vendor() -> Path:
    """Fetch the pinned front-end packages once (npm registry) and unpack them."""
    for spec, name in PACKAGES.items():
        dest = VENDOR / name
        if dest.exists():
            continue
        if not shutil.which("npm"):
            sys.exit("npm is needed to fetch MathJax and the widget manager for the offline check")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, check=True, capture_output=True)
            (tgz,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tgz) as tf:
                tf.extractall(tmp, filter="data")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "package"), dest)
    return VENDOR


def prepare_site(site: Path, workdir: Path) -> Path:
    copy = workdir / "html"
    shutil.copytree(site, copy)
    shutil.copytree(vendor(), copy / "_vendor")
    for page in copy.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for pattern, local in REWRITES:
            text = pattern.sub(local, text)
        # Subresource-integrity hashes name the CDN's exact bytes (e.g. a minified require.js);
        # the local copies differ byte-wise, so drop the hashes on the rewritten tags.
        text = re.sub(r'integrity="[^"]*"(?=[^>]*src="/_vendor/)', "", text)
        page.write_text(text, encoding="utf-8")
    return copy


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the check's output readable
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("Chromium not found: install Debian's package with `apt-get install chromium`")
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def check_page(url: str, png: Path, profile: Path) -> list[str]:
    dom = chromium(["--dump-dom", url], profile).stdout
    problems = []
    n_math = dom.count("<mjx-container")
    n_img = len(re.findall(r"<img[^>]+src=\"[^\"]*(_images|data:image)", dom))
    n_anim = dom.count('class="animation"')
    if n_math == 0:
        problems.append("no typeset math (MathJax did not run)")
    if n_img == 0:
        problems.append("no figures")
    n_widget_views = dom.count("application/vnd.jupyter.widget-view+json")
    if n_widget_views and dom.count("widget-slider") + dom.count("widget-dropdown") == 0:
        problems.append(f"{n_widget_views} widget views but no widget rendered")
    if "colab.research.google.com" not in dom:
        problems.append("no Colab launch button")
    chromium(["--window-size=1280,2400", f"--screenshot={png}", url], profile)
    print(f"{url.rsplit('/', 1)[-1]}: {n_math} math elements, {n_img} figures, {n_anim} animations"
          + (f"  PROBLEMS: {'; '.join(problems)}" if problems else "  ok"))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, default=ROOT / "_build" / "html")
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    args = ap.parse_args()
    if not (args.site / "index.html").exists():
        sys.exit(f"{args.site} has no index.html: build the book first with `make book`")
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        site = prepare_site(args.site, Path(tmp))
        server, port = serve(site)
        try:
            for page in sorted((site / "chapters").glob("*.html")):
                url = f"http://127.0.0.1:{port}/chapters/{page.name}"
                failures += bool(check_page(url, args.out / f"{page.stem}.png", Path(tmp) / "profile"))
        finally:
            server.shutdown()
    print(f"screenshots in {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
