"""Front-end assets the built site carries so that it works with no network (issue 13).

Usage: python tools/vendor_assets.py fetch              (before `jupyter-book build`; `make book` runs it)
       python tools/vendor_assets.py finalize [SITE]    (after the build; `make book` runs it)

`fetch` downloads the pinned npm packages below once (`npm pack`, from the npm registry) into
.cache/site-assets/pkgs/ (git-ignored, reused when present) and stages the files the pages need,
with each package's licence, in .cache/site-assets/static/vendor/. _config.yml lists
.cache/site-assets/static in `html_static_path`, so Sphinx copies them to _build/html/_static/vendor/,
and points `mathjax_path` and `nb_ipywidgets_js` (myst-nb: require.js, the widget manager) at them.

`finalize` handles what no Sphinx setting reaches: matplotlib's `to_jshtml` animations embed a
<link> to font-awesome 4.4.0 on maxcdn inside the stored cell outputs. It rewrites that exact URL to
the relative local copy in every page, then checks that no <script src> / <link href> in the site
still points at another host; it exits non-zero if one does (or if the local assets are missing).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "site-assets"
STATIC = CACHE / "static"          # listed in _config.yml -> html_static_path
VENDOR = STATIC / "vendor"         # -> _build/html/_static/vendor/

# npm spec -> (folder under vendor/, files or folders to keep, relative to the package root).
# Versions are the ones the pages would otherwise load from CDNs: the theme's MathJax 3
# (cdn.jsdelivr.net/npm/mathjax@3 -> 3.2.2, the last 3.x), myst-nb's require.js 2.3.4 and
# @jupyter-widgets/html-manager 1.0.6, matplotlib's to_jshtml font-awesome 4.4.0.
PACKAGES = {
    "mathjax@3.2.2": ("mathjax", [
        "LICENSE", "package.json", "es5/tex-mml-chtml.js", "es5/startup.js", "es5/core.js",
        "es5/loader.js", "es5/input", "es5/output", "es5/a11y", "es5/sre", "es5/ui", "es5/adaptors"]),
    "requirejs@2.3.4": ("requirejs", ["require.js", "package.json", "README.md"]),
    "@jupyter-widgets/html-manager@1.0.6": ("html-manager", ["LICENSE", "package.json", "dist"]),
    "font-awesome@4.4.0": ("font-awesome", ["css", "fonts", "package.json", "README.md"]),
}
# Exact URLs left in cell outputs (not reachable from Sphinx config) -> path under _static/vendor/.
OUTPUT_URLS = {
    "https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css":
        "font-awesome/css/font-awesome.min.css",
}
# Files the pages load; finalize fails if one is missing from the built site.
REQUIRED = ["mathjax/es5/tex-mml-chtml.js", "requirejs/require.js",
            "html-manager/dist/embed-amd.js", "font-awesome/css/font-awesome.min.css",
            "font-awesome/fonts/fontawesome-webfont.woff2"]


def _pkg_dir(spec: str) -> Path:
    return CACHE / "pkgs" / spec.replace("/", "__")


def _npm_pack(spec: str) -> Path:
    dest = _pkg_dir(spec)
    if (dest / "package.json").exists():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(f"vendor_assets: npm is needed once to fetch {spec} from the npm registry "
                 f"(install Node.js, or copy a filled {CACHE.relative_to(ROOT)} from another machine)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", "--silent", spec], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "package"), dest)
    print(f"vendor_assets: fetched {spec}")
    return dest


def fetch() -> None:
    stamp = VENDOR / "PACKAGES.json"
    if stamp.exists() and json.loads(stamp.read_text()) == list(PACKAGES) and all(
            (VENDOR / f).exists() for f in REQUIRED):
        return  # staged for these exact versions already
    if VENDOR.exists():
        shutil.rmtree(VENDOR)
    notices = ["Third-party front-end files served with this site (fetched from the npm registry).", ""]
    for spec, (name, keep) in PACKAGES.items():
        src, dst = _npm_pack(spec), VENDOR / name
        for rel in keep:
            s, d = src / rel, dst / rel
            d.parent.mkdir(parents=True, exist_ok=True)
            if s.is_dir():
                shutil.copytree(s, d, ignore=shutil.ignore_patterns("*.map"))
            else:
                shutil.copy2(s, d)
        meta = json.loads((src / "package.json").read_text())
        notices.append(f"{meta['name']} {meta['version']}  licence: {meta.get('license')}  "
                       f"({meta.get('homepage') or meta.get('repository')})  -> _static/vendor/{name}/")
    notices += ["", "MathJax: Apache-2.0 (mathjax/LICENSE). @jupyter-widgets/html-manager: BSD-3-Clause "
                "(html-manager/LICENSE; bundled third-party notices in html-manager/dist/*.LICENSE.txt).",
                "require.js: MIT (requirejs/README.md). Font Awesome 4: font files SIL OFL 1.1, CSS MIT "
                "(font-awesome/README.md)."]
    (VENDOR / "LICENSES.txt").write_text("\n".join(notices) + "\n")
    stamp.write_text(json.dumps(list(PACKAGES)))
    print(f"vendor_assets: staged {len(PACKAGES)} packages in {VENDOR.relative_to(ROOT)}")


EXTERNAL = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*[\"']((?:https?:)?//[^\"']+)", re.I)


def finalize(site: Path) -> int:
    problems = [f"missing _static/vendor/{f} (is .cache/site-assets/static in html_static_path?)"
                for f in REQUIRED if not (site / "_static" / "vendor" / f).exists()]
    rewritten = 0
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        rel = os.path.relpath(site / "_static" / "vendor", page.parent).replace(os.sep, "/")
        new = text
        for url, local in OUTPUT_URLS.items():
            new = new.replace(url, f"{rel}/{local}")
        if new != text:
            page.write_text(new, encoding="utf-8")
            rewritten += 1
        for url in EXTERNAL.findall(new):
            problems.append(f"{page.relative_to(site)}: still loads {url}")
    print(f"vendor_assets: pointed {rewritten} pages at local font-awesome; "
          f"{'OK, no page loads a script or stylesheet from another host' if not problems else 'FAILED'}")
    for p in problems:
        print("  " + p, file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"fetch", "finalize"}:
        sys.exit(__doc__.split("\n\n")[1])
    if argv[0] == "fetch":
        fetch()
        return 0
    return finalize(Path(argv[1]) if len(argv) > 1 else ROOT / "_build" / "html")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
