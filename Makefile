# Everything a reader or maintainer runs. The two commands a new user needs are
#   make book   (build the site into _build/html)   and   make test   (unit tests + strict nbval).
# Both create .venv and install the pinned requirements on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: assets book book-student edition pdf test test-min lab refresh screenshot bench clean setup

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	@# METEOR (pycocoevalcap) runs a Java program; install a JRE when we can, else METEOR is skipped with a note.
	@command -v java >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null) ; } || \
	  echo "note: no Java found; METEOR will be skipped (the other metrics still run)"
	@touch $(STAMP)

# The site carries its own MathJax, require.js, widget manager and icon font (works offline):
# `assets` fetches them once from the npm registry into .cache/site-assets (git-ignored).
assets: $(STAMP)
	$(BIN)/python tools/vendor_assets.py fetch

book: assets
	$(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python tools/vendor_assets.py finalize _build/html

# The student build: the same sources with every solution left out (sphinx-exercise's
# hide_solutions), into _build/student/_build/html. `make book` is the instructor build.
book-student: assets
	@mkdir -p _build
	$(BIN)/python tools/student_config.py > _build/student_config.yml
	$(BIN)/jupyter-book build . -W -n --keep-going --config _build/student_config.yml --path-output _build/student
	$(BIN)/python tools/vendor_assets.py finalize _build/student/_build/html
	$(BIN)/python tools/student_config.py --verify _build/html _build/student/_build/html

# The reader edition, notebooks/chapters/*.ipynb: what Colab and JupyterLab open. The chapters' MyST
# (numbered references, exercise blocks, citations) rendered as plain Markdown; see tools/reader_edition.py.
edition: $(STAMP)
	$(BIN)/python tools/reader_edition.py

# The whole book as one PDF, _build/pdf/book.pdf: a single-page build in its own folder, printed by
# headless Chromium (no LaTeX needed); tools/build_pdf.py checks the math and the page count.
pdf: assets
	$(BIN)/jupyter-book build . --builder singlehtml --path-output _build/pdf
	$(BIN)/python tools/vendor_assets.py finalize _build/pdf/_build/singlehtml
	$(BIN)/python tools/build_pdf.py

# Lint (ruff, settings in pyproject.toml) and type-check the package (mypy) before the tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# The minimum versions pyproject.toml declares, pinned in requirements-min.txt, in a second venv
# (.venv-min): unit tests plus every chapter executed (outputs not compared). Needs PyPI on first use.
test-min:
	PYTHON=$(PYTHON) bash tools/min_versions.sh

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/chapters/

# Maintainers: re-execute chapters and store their outputs and widget state (nbclient).
# make refresh            -> every chapter;   make refresh NB=chapters/01_multitask_conflict.ipynb
# Refreshing an unchanged chapter leaves git status clean: cells tagged nbval-ignore-output (timings,
# machine-dependent numbers) keep their stored output while their source is unchanged;
# add TIMINGS=1 to store their fresh output too (e.g. after changing the code they run).
NB ?= chapters/*.ipynb
refresh: $(STAMP)
	$(BIN)/python tools/refresh_notebooks.py $(if $(TIMINGS),--timings) $(NB)
	$(BIN)/python tools/reader_edition.py

# Maintainers: open the built site in headless Chromium and save screenshots under _build/screenshots.
screenshot:
	$(BIN)/python tools/screenshot.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_optim.py

clean:
	rm -rf _build
