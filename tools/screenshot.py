"""Open the built site in headless Chromium, offline, the way a workshop room without internet sees it.

Usage: python tools/screenshot.py [--site _build/html] [--out _build/screenshots]

The site carries its own MathJax, require.js, widget manager and icon font (tools/vendor_assets.py,
run by `make book`). This script serves _build/html as built on 127.0.0.1 and opens every chapter
in Debian's Chromium with every other host blocked (--host-resolver-rules), so a page that still
needed a CDN fails here. A small probe script, added to the served copy of each chapter only when
the check asks for it, reports after the page has settled; per chapter the check asserts:
  * math: MathJax typeset it (mjx-container elements, no merror) and no raw TeX delimiters
    (\\( \\[ $$ $...$) are left in the text outside code;
  * widgets: every stored widget view (application/vnd.jupyter.widget-view+json) was rendered;
  * animations (matplotlib to_jshtml): the FontAwesome icon font loaded and every control button
    shows its icon, and clicking "Next frame" changes the frame;
  * no script, stylesheet, image or frame on the page points at another host; figures are present
    and the Colab launch button is on the page.
Then it saves a PNG per chapter. It exits non-zero if a check fails.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=20000",
    # Offline: no name resolves except the local server's, so any CDN request fails at once.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
PROBE_QUERY = "offline-probe"
# Helpers both browser probes use (this check and tools/build_pdf.py): wait, tell a local URL from
# a remote one, and find TeX that MathJax left untypeset outside code (``rawTex(extraSkip)``).
PROBE_HELPERS_JS = r"""
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const local = (u) => !u || /^(data:|blob:|about:|javascript:)/.test(u) ||
      new URL(u, location.href).host === location.host;
  function rawTex(extraSkip) {
    const bad = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const skip = "pre,code,script,style,textarea,mjx-container,.highlight,.cell_input" +
        (extraSkip ? "," + extraSkip : "");
    const re = /\\\(|\\\[|\$\$|(^|[^\\$\w])\$[^$\s](?:[^$\n]*?[^\\$\s])?\$(?![\w$])/;
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!el || el.closest(skip) || !re.test(n.data)) continue;
      bad.push(n.data.trim().slice(0, 80));
    }
    return bad;
  }
"""
PROBE_JS = r"""
(function () {
""" + PROBE_HELPERS_JS + r"""
  async function run() {
    const r = {};
    // 1. math
    for (let i = 0; i < 40 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) await sleep(100);
    r.mathjax = window.MathJax && MathJax.version ? MathJax.version : null;
    if (r.mathjax) { try { await MathJax.startup.promise; } catch (e) { r.mathjax_error = String(e); } }
    r.math = document.querySelectorAll("mjx-container").length;
    r.merror = document.querySelectorAll("mjx-merror").length;
    r.raw_tex = rawTex("#offline-probe");
    // 2. widgets: the html-manager puts a .widget-subarea before each view script
    const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
    const rendered = () => views.filter((v) => {
      const sub = v.previousElementSibling;
      return sub && sub.classList.contains("widget-subarea") &&
             sub.querySelector(".jupyter-widgets, [class*='widget-']") && sub.getBoundingClientRect().height > 0;
    }).length;
    for (let i = 0; i < 40 && rendered() < views.length; i++) await sleep(100);
    r.widget_views = views.length;
    r.widgets_rendered = rendered();
    // 3. animations (to_jshtml): icon font and the "Next frame" button
    await document.fonts.ready;
    const anims = [...document.querySelectorAll("div.animation")];
    r.animations = anims.length;
    // The icons are <i class="fa fa-..."> styled by font-awesome 4 (the <link> in the output); the
    // theme's own font-awesome script may swap them for inline SVGs. Either way each button must
    // show an icon, and the FontAwesome 4 font the stylesheet declares must load from this site.
    r.icon_font = null;
    if (anims.length) {
      try {
        r.icon_font = (await document.fonts.load('14px FontAwesome', "\uf051")).map((f) => f.status).join(",") ||
          "not declared";
      } catch (e) { r.icon_font = "error: " + e; }
    }
    r.anims = [];
    for (const a of anims) {
      const buttons = [...a.querySelectorAll(".anim-buttons button")];
      let svg = 0, font = 0;
      for (const b of buttons) {
        const s = b.querySelector("svg.svg-inline--fa path[d]"), i = b.querySelector("i.fa");
        if (s && s.getAttribute("d").length > 10 && s.closest("svg").getBoundingClientRect().width > 0) {
          svg++;
        } else if (i) {
          const st = getComputedStyle(i, "::before");
          if (/FontAwesome/.test(getComputedStyle(i).fontFamily) && st.content &&
              !/^(none|normal|"")$/.test(st.content) &&
              document.fonts.check("14px FontAwesome", st.content.replace(/"/g, "")) &&
              i.getBoundingClientRect().width > 0) font++;
        }
      }
      const img = a.querySelector("img"), slider = a.querySelector("input.anim-slider");
      const before = [img && img.src, slider && slider.value];
      const next = a.querySelector('button[title="Next frame"]');
      if (next) next.click();
      await sleep(300);
      const after = [img && img.src, slider && slider.value];
      r.anims.push({buttons: buttons.length, icons_svg: svg, icons_font: font,
                    frames: slider ? +slider.max + 1 : 0,
                    next_changes_frame: before[0] !== after[0] && before[1] !== after[1]});
    }
    // 4. nothing from another host
    const refs = [...document.querySelectorAll(
      "script[src],link[href][rel~=stylesheet],link[href][rel~=preload],img[src],iframe[src]")]
      .map((e) => e.getAttribute("src") || e.getAttribute("href"));
    const tried = performance.getEntriesByType("resource").map((e) => e.name);
    r.external = [...new Set([...refs, ...tried].filter((u) => !local(u)))];
    r.figures = document.querySelectorAll('img[src*="_images"], img[src^="data:image"]').length;
    r.colab = !!document.querySelector('a[href*="colab.research.google.com"][href*="/notebooks/chapters/"]');
    return r;
  }
  window.addEventListener("load", () => {
    run().catch((e) => ({probe_error: String(e && e.stack || e)})).then((r) => {
      const pre = document.createElement("pre");
      pre.id = "offline-probe"; pre.style.display = "none";
      pre.textContent = JSON.stringify(r);
      document.body.appendChild(pre);
    });
  });
})();
"""


class ProbeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a built site unchanged, except that a page asked for with ``?<probe_query>`` gets
    ``probe_js`` appended to its body. Shared by this check and tools/build_pdf.py (each sets its probe)."""
    probe_js = ""
    probe_query = PROBE_QUERY

    def log_message(self, *args):  # keep the check's output readable
        pass

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if query != self.probe_query or not path.endswith(".html"):
            return super().do_GET()
        body = Path(self.translate_path(path)).read_bytes().replace(
            b"</body>", b"<script>" + self.probe_js.encode() + b"</script></body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    """Serve the built site unchanged; a chapter asked for with ?offline-probe gets the probe."""
    class Handler(ProbeHandler):
        probe_js = PROBE_JS

    handler = functools.partial(Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("Chromium not found: install Debian's package with `apt-get install chromium`")
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def _stored_images(page: str) -> int:
    """Figures stored in the chapter behind ``page`` (``01_x.html`` -> ``chapters/01_x.ipynb``): image
    outputs without a LaTeX alternative (SymPy's PNGs are shown as math on the site)."""
    nb = ROOT / "chapters" / page.replace(".html", ".ipynb")
    if not nb.is_file():
        return 0
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    return sum(1 for c in cells for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}) and "text/latex" not in o.get("data", {}))


def check_page(url: str, png: Path, profile: Path) -> list[str]:
    dom = chromium(["--dump-dom", f"{url}?{PROBE_QUERY}"], profile).stdout
    m = re.search(r'<pre id="offline-probe"[^>]*>(.*?)</pre>', dom, re.S)
    name = url.rsplit("/", 1)[-1]
    if not m:
        print(f"{name}: PROBLEMS: the probe did not report (page did not finish loading)")
        return ["no probe result"]
    r = json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                   .replace("&amp;", "&"))
    if "probe_error" in r:
        print(f"{name}: PROBLEMS: probe error {r['probe_error']}")
        return [r["probe_error"]]
    problems = []
    if not r["mathjax"]:
        problems.append("MathJax did not load")
    if r["math"] == 0:
        problems.append("no typeset math (mjx-container)")
    if r["merror"]:
        problems.append(f"{r['merror']} MathJax errors")
    if r["raw_tex"]:
        problems.append(f"{len(r['raw_tex'])} raw TeX left, e.g. {r['raw_tex'][0]!r}")
    if r["widgets_rendered"] < r["widget_views"]:
        problems.append(f"{r['widget_views'] - r['widgets_rendered']} of {r['widget_views']} widget views not rendered")
    for i, a in enumerate(r["anims"], 1):
        if a["icons_svg"] + a["icons_font"] < a["buttons"] or a["buttons"] == 0:
            problems.append(f"animation {i}: {a['icons_svg'] + a['icons_font']} of {a['buttons']} buttons show an icon")
        if not a["next_changes_frame"]:
            problems.append(f"animation {i}: 'Next frame' did not change the frame")
    if r["animations"] and r["icon_font"] != "loaded":
        problems.append(f"FontAwesome 4 icon font did not load ({r['icon_font']})")
    if r["external"]:
        problems.append(f"loads from other hosts: {', '.join(r['external'][:4])}")
    if r["figures"] == 0 and _stored_images(name) > 0:  # a page of pure derivations has none to show
        problems.append(f"no figures (the notebook stores {_stored_images(name)} images)")
    if not r["colab"]:
        problems.append("no Colab launch button to the reader edition (notebooks/chapters/)")
    chromium(["--window-size=1280,2400", f"--screenshot={png}", url], profile)
    anims = "; ".join(f"{a['frames']} frames, icons {a['icons_svg'] + a['icons_font']}/{a['buttons']} "
                      f"(svg {a['icons_svg']}, font {a['icons_font']}), next-frame "
                      f"{'ok' if a['next_changes_frame'] else 'BROKEN'}" for a in r["anims"])
    print(f"{name}: MathJax {r['mathjax']}, {r['math']} math elements, raw TeX {len(r['raw_tex'])}; "
          f"widgets {r['widgets_rendered']}/{r['widget_views']}; {r['animations']} animations"
          f"{' (' + anims + ')' if anims else ''}; icon font {r['icon_font'] or '-'}; "
          f"{r['figures']} figures; external {len(r['external'])}"
          + (f"\n    PROBLEMS: {'; '.join(problems)}" if problems else "  ok"))
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
    print("offline check: every host but 127.0.0.1 is blocked")
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site.resolve()
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
