#!/usr/bin/env bash
# Assemble an offline bundle for a workshop room without internet:
#   site/          the built book, instructor build (_build/html; run `make book` first)
#   site-student/  the student build without solutions, when `make book-student` has been run
#   wheels/        every wheel needed to install the book's exact environment (pip download -r
#                  requirements.txt) plus camegrad_mini's own wheel (pip wheel --no-deps .)
#   chapters/      the notebooks to run and edit: the reader edition (notebooks/chapters/, plain
#                  Markdown that JupyterLab renders), not the MyST sources
#   data_samples/  the shipped IU X-Ray samples (chapter 6 finds them from chapters/)
#   results/       the committed results chapter 6 reads (CAMEGRAD_RESULTS points there)
#   requirements.txt, README.txt (the install commands), SHA256SUMS
#
# Usage: bash tools/offline_bundle.sh [TARGET]        (default: _build/offline_bundle)
#   EXTRA_PIP_DOWNLOAD_ARGS="--platform win_amd64 --python-version 3.11 --only-binary=:all:" bash tools/offline_bundle.sh
#   fetches wheels for another platform (default: this machine's platform and Python).
#
# Safety: the bundle is assembled in a fresh temporary folder beside TARGET and moved into place at
# the end. An existing TARGET is replaced only if it is this script's own previous output, unchanged:
# it holds the marker file .camegrad_offline_bundle, whose list of files matches exactly what is there.
# Anything else at TARGET (another folder, a file, a bundle someone added files to) is refused and left
# as it is. The script deletes nothing else.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${1:-_build/offline_bundle}"
MARKER=".camegrad_offline_bundle"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

die() { echo "offline_bundle: $*" >&2; exit 1; }

[ -f _build/html/index.html ] || die "_build/html/index.html is missing: run \`make book\` first."
[ -f requirements.txt ] && [ -f pyproject.toml ] || die "run from the book's repository."

# --- where the bundle goes, and whether an existing TARGET may be replaced -------------------------
mkdir -p "$(dirname "$TARGET")"
TARGET_ABS="$(cd "$(dirname "$TARGET")" && pwd)/$(basename "$TARGET")"
case "$TARGET_ABS" in
  /|"$ROOT"|"$HOME"|"$ROOT"/_build|"$ROOT"/chapters|"$ROOT"/notebooks|"$ROOT"/data_samples|"$ROOT"/results)
    die "refusing to use $TARGET_ABS as the bundle folder: choose a new folder." ;;
esac
list_files() { (cd "$1" && find . -mindepth 1 ! -type d ! -name "$MARKER" | LC_ALL=C sort); }
REPLACE_OLD=0
if [ -e "$TARGET_ABS" ] || [ -L "$TARGET_ABS" ]; then
  [ -d "$TARGET_ABS" ] && [ ! -L "$TARGET_ABS" ] || die "$TARGET_ABS exists and is not a folder: left as it is."
  [ -f "$TARGET_ABS/$MARKER" ] || die "$TARGET_ABS exists and is not a bundle this script made (no $MARKER): left as it is; choose another TARGET."
  if ! diff -q <(list_files "$TARGET_ABS") <(grep -v '^#' "$TARGET_ABS/$MARKER") >/dev/null; then
    die "$TARGET_ABS is an earlier bundle, but its files differ from the list in $MARKER (added, removed or renamed): left as it is; move it away or choose another TARGET."
  fi
  REPLACE_OLD=1
fi

TMP="$(mktemp -d "$(dirname "$TARGET_ABS")/.offline_bundle.tmp.XXXXXX")"
# only the folder made above; an `if` so that the trap itself returns 0 (a false `[ ]` would become
# the exit status of a successful run)
cleanup() { if [ -n "${TMP:-}" ] && [ -d "$TMP" ]; then rm -rf -- "$TMP"; fi; }
trap cleanup EXIT

START=$(date +%s)
echo "assembling in $TMP"

# --- the site, the notebooks, the data, the results --------------------------------------------------
cp -a _build/html "$TMP/site"
if [ -f _build/student/_build/html/index.html ]; then cp -a _build/student/_build/html "$TMP/site-student"; fi
mkdir "$TMP/chapters"
cp -a notebooks/chapters/*.ipynb "$TMP/chapters/"  # the reader edition
cp -a data_samples "$TMP/data_samples"
cp -a results "$TMP/results"
cp requirements.txt "$TMP/requirements.txt"

# --- wheels: the pinned requirements, then the package's own wheel ---------------------------------
mkdir "$TMP/wheels"
echo "pip download -r requirements.txt ..."
# shellcheck disable=SC2086
"$PY" -m pip download -q -r requirements.txt -d "$TMP/wheels" ${EXTRA_PIP_DOWNLOAD_ARGS:-}
# Build tools, in case a requirement came as a source archive (it then builds offline from these).
# shellcheck disable=SC2086
"$PY" -m pip download -q "setuptools>=64" wheel -d "$TMP/wheels" ${EXTRA_PIP_DOWNLOAD_ARGS:-}
# The project's wheel, built from a clean copy of the package so that the working tree is not touched.
SRC="$TMP/.src"
mkdir "$SRC"
cp -a pyproject.toml README.md LICENSE "$SRC/"
cp -a camegrad_mini "$SRC/camegrad_mini"
find "$SRC" -name __pycache__ -type d -prune -exec rm -rf {} +
echo "pip wheel --no-deps . ..."
"$PY" -m pip wheel -q --no-deps "$SRC" -w "$TMP/wheels"
rm -rf -- "$SRC"
VERSION="$("$PY" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open("camegrad_mini/__init__.py").read()).group(1))')"
PYV="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
PLAT="$("$PY" -c 'import platform; print(platform.system(), platform.machine())')"
SDISTS="$(cd "$TMP/wheels" && ls | grep -v '\.whl$' || true)"

# --- README.txt --------------------------------------------------------------------------------------
cat > "$TMP/README.txt" <<EOF
CAME-Grad book: offline bundle (camegrad_mini $VERSION), made $(date -u +%Y-%m-%d) by tools/offline_bundle.sh

The wheels are for $PLAT with Python $PYV (the machine that made the bundle), unless
EXTRA_PIP_DOWNLOAD_ARGS said otherwise. Nothing below needs a network.
${SDISTS:+Source archives among the wheels (built offline with the setuptools/wheel included): $SDISTS}

1. Read the book: open site/index.html in a browser (MathJax, widgets and icons are bundled),
   or serve it:   python3 -m http.server --directory site 8000   and open http://127.0.0.1:8000
   (site/ shows the solutions; site-student/, when present, is the same book without them)

2. Install the book's environment (Python $PYV), from this folder:

   python3 -m venv .venv
   .venv/bin/pip install --no-index --find-links wheels -r requirements.txt
   .venv/bin/pip install --no-index --find-links wheels --no-deps camegrad_mini==$VERSION

   (Windows: .venv\\Scripts\\pip instead of .venv/bin/pip.) If pip still tries the network, a pip
   configuration file adds an index: prefix the commands with PIP_CONFIG_FILE=/dev/null.

3. Run the chapters:

   export CAMEGRAD_RESULTS="\$PWD/results"     # chapter 6 reads the committed CPU run from here
   .venv/bin/jupyter lab chapters/

   or one chapter without a browser:
   .venv/bin/jupyter nbconvert --to notebook --execute --output-dir /tmp chapters/01_multitask_conflict.ipynb

   Chapter 6 finds data_samples/ because it runs from chapters/ beside it. Its real radiographs
   (IMAGES = "real") need a download of 1.3 GB and a GPU: not in this room. METEOR (one of chapter
   6's text metrics) needs Java; without it that one metric is skipped with a note.
EOF

# --- checksums, the marker (the list of every file this script wrote), then into place -------------
(cd "$TMP" && find . -type f ! -name SHA256SUMS ! -name "$MARKER" -print0 | LC_ALL=C sort -z | xargs -0 sha256sum > SHA256SUMS)
{ echo "# written by tools/offline_bundle.sh: the files below are this script's output; it replaces this folder only while they are exactly what is here"
  list_files "$TMP"; } > "$TMP/$MARKER"
if [ "$REPLACE_OLD" = 1 ]; then
  # Checked again now (the build took a while): TARGET holds exactly the files its marker lists.
  diff -q <(list_files "$TARGET_ABS") <(grep -v '^#' "$TARGET_ABS/$MARKER") >/dev/null || \
    die "$TARGET_ABS changed while the bundle was built: left as it is; the new bundle was not kept."
  rm -rf -- "$TARGET_ABS"
fi
mv "$TMP" "$TARGET_ABS"
TMP=""

END=$(date +%s)
echo "bundle: $TARGET_ABS ($((END - START)) s)"
for d in . site wheels data_samples results chapters; do du -sh "$TARGET_ABS/$d"; done
echo "largest wheels:"; (cd "$TARGET_ABS/wheels" && ls -S | sed -n 1,5p | xargs du -h)  # sed reads all of ls: no SIGPIPE under pipefail
