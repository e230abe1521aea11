#!/usr/bin/env bash
# make test-min: prove the minimum versions that pyproject.toml declares.
# A second virtual environment, .venv-min, gets exactly requirements-min.txt (the declared minimums,
# torch==2.13.0 and the test tools) and the package with --no-deps; then the unit tests run and
# every chapter is executed with nbval-lax (errors fail, outputs are not compared: the stored
# outputs come from requirements.txt's versions, and `make test` compares them strictly).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV_MIN:-.venv-min}
BIN=$VENV/bin
STAMP=$VENV/.installed
start=$(date +%s)

# 1. Every ">=" floor in pyproject.toml is pinned with "==" in requirements-min.txt, so the floors
#    declared are the versions tested (a raised floor without a new pin fails here).
$PYTHON - <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = {}
for line in open("requirements-min.txt", encoding="utf-8"):
    line = line.split("#")[0].strip()
    if line:
        name, _, ver = line.partition("==")
        if not ver:
            sys.exit(f"requirements-min.txt: {line!r} is not an exact pin")
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = ver.strip()
bad = []
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=\s*([^,;\s]+))?\s*", dep)
    if not m:
        bad.append(f"{dep!r}: only 'name' or 'name>=X' is understood here")
        continue
    name, floor = re.sub(r"[-_.]+", "-", m.group(1).lower()), m.group(2)
    if name not in pins:
        bad.append(f"{name} is a dependency but requirements-min.txt does not pin it")
    elif floor is not None and pins[name] != floor:
        bad.append(f"{name}: pyproject.toml declares >={floor}, requirements-min.txt pins =={pins[name]}")
if bad:
    sys.exit("declared minimums and requirements-min.txt disagree:\n  " + "\n  ".join(bad))
print(f"== minimums: {len(deps)} dependencies of pyproject.toml match requirements-min.txt")
PY

# 2. The environment, rebuilt whenever requirements-min.txt or pyproject.toml changes.
if [ ! -f "$STAMP" ] || [ requirements-min.txt -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  rm -rf "$VENV"
  $PYTHON -m venv "$VENV"
  # (grep drops pip's notes about local index folders that lack a package; errors still show)
  "$BIN/pip" install -q -r requirements-min.txt 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  "$BIN/pip" install -q --no-deps -e . 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  "$BIN/pip" check   # the package's declared requirements hold in this environment
  touch "$STAMP"
fi
"$BIN/python" -c "
import importlib.metadata as m
print('== .venv-min:', ', '.join(f'{p} {m.version(p)}' for p in
      ['numpy', 'scipy', 'matplotlib', 'sympy', 'ipywidgets', 'pillow', 'tqdm', 'pycocoevalcap', 'torch']))"
echo "== set-up took $(( $(date +%s) - start )) s"

# 3. Unit tests and every chapter. -o addopts= drops the strict --nbval options of pyproject.toml.
"$BIN/python" -m pytest -o addopts= -p no:cacheprovider -q -r fEs \
  --nbval-lax --nbval-current-env --nbval-cell-timeout=300 tests chapters
echo "== make test-min took $(( $(date +%s) - start )) s"
