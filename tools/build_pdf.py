"""Print the whole book to one PDF with headless Chromium: `make pdf` -> _build/pdf/book.pdf.

Usage: python tools/build_pdf.py [--site _build/pdf/_build/singlehtml] [--out _build/pdf/book.pdf]

`make pdf` first builds the book as a single HTML page (`jupyter-book build . --builder singlehtml
--path-output _build/pdf`, its own folder, so it never touches _build/html) and runs
`tools/vendor_assets.py finalize` on it, as `make book` does for the site. This script then
  1. writes a print copy of that page, print.html, next to it: a title page (title and author from
     _config.yml, the package version), links to the page itself made in-page links, and
     book/_static/print.css (hides navigation, sidebars and launch buttons; figures at their own
     size or the text width, never split across pages; each chapter on a new page; page numbers),
     applied on screen too in this copy, so print.html shows what is printed. The web site never
     loads that stylesheet, so its screen view is unchanged. Equations wider than the text are
     zoomed to fit (else Chromium would shrink every page to the widest);
  2. serves the folder on 127.0.0.1 and prints print.html with Debian's Chromium
     (`--print-to-pdf`), offline: every other host is blocked (the flags of tools/screenshot.py);
  3. checks, and exits non-zero if a check fails: a probe script added to the served copy waits
     until MathJax has typeset the page and every image has loaded, then reports the printed page's
     DOM to the local server (typeset math, no MathJax errors, no raw TeX left outside code, no
     broken image, no cell output left folded, nothing fetched from another host, nothing wider than the
     page); the PDF must exist and have at least
     --min-pages pages and at least two more pages than the book has documents.

Why this route: there is no LaTeX on these machines (so no `--builder pdflatex`), and Jupyter
Book's own `--builder pdfhtml` needs pyppeteer, which downloads a Chromium build of its own from
the network; the Chromium we already use for `make screenshot` prints the same single page.
The page is printed only after the probe has reported: Chromium's --virtual-time-budget lets the
page run until it is idle for that much virtual time, and a probe that did not report in time
fails the build instead of leaving untypeset math in the PDF.
"""
from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshot import CHROMIUM_FLAGS, PROBE_HELPERS_JS, ProbeHandler  # noqa: E402  (shared with `make screenshot`)

PRINT_CSS = ROOT / "book" / "_static" / "print.css"
# Equations wider than the text (MathJax 3 does not break lines) would make Chromium shrink
# every page to fit the widest one. The print copy applies the print stylesheet on screen too, in a
# window as wide as the printable width of an A4 page, so the screen layout is the print layout; each
# such equation is zoomed down to fit there, once MathJax has typeset (the probe calls
# window.pdfFit) and again at beforeprint, which reports what it did to the local server.
WINDOW = "--window-size=688,1200"  # A4 (210 mm) less 2 x 14 mm margins = 182 mm = 688 CSS px
FIT_JS = r"""
(function () {
  function fit() {
    const r = {print: matchMedia("print").matches, width: document.documentElement.clientWidth, zoomed: []};
    for (const c of document.querySelectorAll("mjx-container")) {
      c.style.zoom = "";
      const m = c.querySelector("mjx-math"), box = c.getAttribute("display") ? c.parentElement :
          c.closest("p,li,td,th,dd,dt,figcaption,div");
      if (!m || !box) continue;
      const avail = box.getBoundingClientRect().width, w = m.getBoundingClientRect().width;
      if (avail > 0 && w > avail) {
        c.style.zoom = (Math.floor(97 * avail / w) / 100).toFixed(2);
        r.zoomed.push(+c.style.zoom);
      }
    }
    return r;
  }
  window.pdfFit = fit;
  window.addEventListener("beforeprint", () => {
    const r = fit();
    navigator.sendBeacon("__FIT_PATH__", JSON.stringify(r));
  });
})();
"""
FIT_PATH = "/__pdf_fit"
PROBE_QUERY = "pdf-probe"
PROBE_PATH = "/__pdf_probe"
# Outputs that the site folds away (cells tagged hide-output: "Show code cell output") are part of
# the text on paper: the print copy opens them (print.css hides their toggle). Hidden inputs stay
# folded: the book prints what a cell shows, not the plotting code behind it.
OPEN_OUTPUTS_JS = (
    'document.addEventListener("DOMContentLoaded", () => '
    'document.querySelectorAll("details.hide.below-input").forEach(d => { d.open = true; }));'
)
PROBE_JS = r"""
(function () {
""" + PROBE_HELPERS_JS + r"""
  async function run() {
    const r = {};
    for (let i = 0; i < 100 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) await sleep(100);
    r.mathjax = window.MathJax && MathJax.version ? MathJax.version : null;
    if (r.mathjax) { try { await MathJax.startup.promise; } catch (e) { r.mathjax_error = String(e); } }
    const imgs = [...document.images];
    for (const img of imgs) if (img.loading === "lazy") img.loading = "eager";
    await Promise.all(imgs.map((img) => img.complete ? null : new Promise((res) => {
      img.addEventListener("load", res, {once: true}); img.addEventListener("error", res, {once: true}); })));
    await document.fonts.ready;
    r.images = imgs.length;
    r.broken = imgs.filter((img) => !img.naturalWidth).map((img) => (img.getAttribute("src") || "").slice(0, 80));
    r.math = document.querySelectorAll("mjx-container").length;
    r.merror = document.querySelectorAll("mjx-merror").length;
    r.raw_tex = rawTex();
    r.documents = document.querySelectorAll('span[id^="document-"]').length;
    r.title_page = !!document.querySelector(".pdf-title-page");
    r.folded_outputs = document.querySelectorAll("details.hide.below-input:not([open])").length;
    const refs = [...document.querySelectorAll("script[src],link[href][rel~=stylesheet],img[src],iframe[src]")]
      .map((e) => e.getAttribute("src") || e.getAttribute("href"));
    const tried = performance.getEntriesByType("resource").map((e) => e.name);
    r.external = [...new Set([...refs, ...tried].filter((u) => !local(u)))];
    r.fit = window.pdfFit ? window.pdfFit().zoomed : null;
    r.overflow = [...document.querySelectorAll(".bd-article *")].filter((e) => !e.closest("mjx-assistive-mml") &&
      e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
      .map((e) => {
        const where = (x) => `${x.tagName.toLowerCase()}.${String(x.className).split(" ")[0]}`;
        const m = e.closest("mjx-container");
        const math = m ? `math (${m.getAttribute("display") ? "display" : "inline"}) in ${where(m.parentElement)}` +
          ` near "${(e.closest("p,td,li,div") || e).textContent.slice(0, 50)}"` : "";
        return math + `${where(e)} in ${where(e.parentElement)}`;
      });
    r.ready_ms = Math.round(performance.now());
    return r;
  }
  window.addEventListener("load", () => {
    run().catch((e) => ({probe_error: String(e && e.stack || e)})).then((r) =>
      fetch("__PROBE_PATH__", {method: "POST", body: JSON.stringify(r)}));
  });
})();
""".replace("__PROBE_PATH__", PROBE_PATH)


def book_meta() -> tuple[str, str, str]:
    import yaml  # jupyter-book depends on PyYAML

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    try:
        from camegrad_mini import __version__ as version
    except ImportError:
        version = ""
    return str(cfg.get("title", "")), str(cfg.get("author", "")), version


def write_print_copy(site: Path) -> tuple[Path, int]:
    """site/print.html: the single page with a title page and the print stylesheet."""
    index = (site / "index.html").read_text(encoding="utf-8")
    m = re.search(r'url=([^"\s]+\.html)', index)
    if not m:
        sys.exit(f"build_pdf: {site / 'index.html'} does not redirect to the book's page; "
                 "is this a singlehtml build?")
    page_rel = m.group(1)
    text = (site / page_rel).read_text(encoding="utf-8")
    # The singlehtml page lives at book/preface.html but every URL in it is written relative to
    # the site root (Sphinx computes them for the root), so the print copy sits at the root.
    text = text.replace(f'href="{page_rel}#', 'href="#').replace(f'href="{page_rel}"', 'href="#"')
    text = text.replace('"../_static/', '"_static/')  # vendor_assets finalize counted the book/ folder
    # On screen too (print.html only, never the site): what this page shows is what gets printed.
    css = PRINT_CSS.read_text(encoding="utf-8").replace("@media print {", "@media print, screen {", 1)
    (site / "_static" / "pdf-print.css").write_text(css, encoding="utf-8")
    text = text.replace("</head>", '<link rel="stylesheet" href="_static/pdf-print.css">\n'
                        f'<script>{FIT_JS.replace("__FIT_PATH__", FIT_PATH)}</script>\n'
                        f'<script>{OPEN_OUTPUTS_JS}</script>\n</head>', 1)
    title, author, version = book_meta()
    title_page = (
        '<section class="pdf-title-page" style="display:none">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(author)}</p>"
        + (f"<p>camegrad_mini {html.escape(version)}</p>" if version else "")
        + f"<p>{time.strftime('%Y-%m-%d')}</p>"
        '<p class="pdf-note">Printed from the book\'s web site. Interactive figures appear in the '
        "static form stored with each chapter; the notebooks run in Jupyter or Colab.</p></section>\n")
    # sphinx-book-theme's print-only block (page title, then its table of contents) opens the
    # article; the title page goes before it.
    anchor = '<div id="jb-print-docs-body"'
    if anchor not in text:
        anchor = '<article class="bd-article">'
    if anchor not in text:
        sys.exit("build_pdf: cannot find where the article starts in the single page (theme changed?)")
    text = text.replace(anchor, title_page + anchor, 1)
    out = site / "print.html"
    out.write_text(text, encoding="utf-8")
    return out, text.count('<span id="document-')


def serve(directory: Path, results: list) -> http.server.ThreadingHTTPServer:
    class Handler(ProbeHandler):
        probe_js, probe_query = PROBE_JS, PROBE_QUERY

        def do_POST(self):
            if self.path not in (PROBE_PATH, FIT_PATH):
                self.send_error(404)
                return
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            results.append({self.path: json.loads(data)})
            self.send_response(204)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pdf_pages(data: bytes) -> int:
    """Pages of a PDF as Chromium (Skia) writes it: the root page tree's /Count."""
    counts = [int(c) for c in re.findall(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", data)]
    counts += [int(c) for c in re.findall(rb"/Count\s+(\d+)[^>]*?/Type\s*/Pages\b", data)]
    leaves = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    return max(counts + [leaves])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, default=ROOT / "_build" / "pdf" / "_build" / "singlehtml")
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "book.pdf")
    ap.add_argument("--min-pages", type=int, default=40)
    ap.add_argument("--budget-ms", type=int, default=120_000,
                    help="Chromium --virtual-time-budget: virtual time the page gets before printing")
    ap.add_argument("--timeout", type=int, default=900, help="seconds before Chromium is stopped")
    args = ap.parse_args()
    t0 = time.monotonic()
    site = args.site.resolve()
    if not (site / "index.html").exists():
        sys.exit(f"build_pdf: {site} has no index.html: run `make pdf` (it builds the single page first)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("build_pdf: Chromium not found: install Debian's package with `apt-get install chromium`")
    page, documents = write_print_copy(site)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    results: list = []
    server = serve(site, results)
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    try:
        with tempfile.TemporaryDirectory() as profile:
            url = f"http://127.0.0.1:{server.server_address[1]}/{page.name}?{PROBE_QUERY}"
            cmd = [exe, *flags, f"--user-data-dir={profile}", WINDOW, f"--virtual-time-budget={args.budget_ms}",
                   "--no-pdf-header-footer", "--generate-pdf-document-outline",
                   f"--print-to-pdf={out}", url]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    finally:
        server.shutdown()
    problems = []
    r = next((x[PROBE_PATH] for x in results if PROBE_PATH in x), None)
    fitted = next((x[FIT_PATH] for x in results if FIT_PATH in x), None)
    print(f"build_pdf: print layout fit: {fitted}")
    if r is None:
        problems.append(f"the probe did not report before Chromium printed (raise --budget-ms "
                        f"{args.budget_ms}?); Chromium exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    elif "probe_error" in r:
        problems.append(f"probe error: {r['probe_error']}")
    else:
        if not r["mathjax"]:
            problems.append("MathJax did not load")
        if r.get("mathjax_error"):
            problems.append(f"MathJax failed: {r['mathjax_error']}")
        if r["math"] == 0:
            problems.append("no typeset math (no mjx-container)")
        if r["merror"]:
            problems.append(f"{r['merror']} MathJax errors (mjx-merror)")
        if r["raw_tex"]:
            problems.append(f"{len(r['raw_tex'])} pieces of raw TeX left, e.g. {r['raw_tex'][0]!r}")
        if r["images"] == 0:
            problems.append("no images on the page")
        if r["broken"]:
            problems.append(f"{len(r['broken'])} images did not load, e.g. {r['broken'][0]}")
        if r.get("folded_outputs"):
            problems.append(f"{r['folded_outputs']} cell outputs are still folded away (hide-output), so not printed")
        if r["external"]:
            problems.append(f"loads from other hosts: {', '.join(r['external'][:4])}")
        if r["overflow"]:
            problems.append(f"{len(r['overflow'])} elements are wider than the page, so Chromium shrinks "
                            f"every page: {', '.join(sorted(set(r['overflow']))[:6])}")
        if not r["title_page"]:
            problems.append("no title page")
    pages = 0
    if not out.exists() or out.stat().st_size == 0:
        problems.append(f"Chromium wrote no PDF (exit {proc.returncode}: {proc.stderr.strip()[-400:]})")
    else:
        data = out.read_bytes()
        pages = pdf_pages(data) if data.startswith(b"%PDF-") else 0
        need = max(args.min_pages, documents + 2)
        if pages < need:
            problems.append(f"{pages} pages, expected at least {need} "
                            f"({documents} documents, each on its own pages, plus title and contents)")
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    if r and "probe_error" not in r:
        print(f"build_pdf: MathJax {r['mathjax']}, {r['math']} math elements, {r['merror']} errors, "
              f"raw TeX {len(r['raw_tex'])}; {r['images']} images ({len(r['broken'])} broken); "
              f"{r['documents']} documents; equations zoomed to fit: {r['fit']}; "
              f"ready after {r['ready_ms'] / 1000:.1f} s of page time")
    if problems:
        print(f"build_pdf: FAILED ({rel})", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"build_pdf: wrote {rel}: {pages} pages, {out.stat().st_size / 1e6:.1f} MB, "
          f"in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
