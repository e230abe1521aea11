"""The cells every chapter starts with, generated from the one place the repository is named.

Chapter authors call `colab_cell_source()` when creating a notebook; the hygiene test compares
each chapter's first code cell with it, so the install line never drifts from `_config.yml` or
from the package version.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repository_url() -> str:
    import yaml

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return cfg["repository"]["url"].rstrip("/")


def package_version() -> str:
    text = (ROOT / "camegrad_mini" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def colab_cell_source() -> str:
    """The first code cell of every chapter. Outside Colab it prints nothing and does nothing (strict
    nbval compares its empty output). In Colab it installs the package with pip and checks that
    the right version imports; when either fails it raises, which stops "Run all" at this cell
    with pip's own words and what to do instead (a clone and an editable install)."""
    return (
        "# In Colab only: install the companion package at the version this chapter was written for.\n"
        "# If that fails, this cell stops the notebook and says what to do. Elsewhere it does nothing.\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        "    import importlib\n"
        "    import subprocess\n"
        f'    REPO, VERSION = "{repository_url()}", "{package_version()}"\n'
        '    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
        '                          f"camegrad_mini @ git+{REPO}@v{VERSION}"], capture_output=True, text=True)\n'
        "    importlib.invalidate_caches()\n"
        "    try:\n"
        "        import camegrad_mini\n"
        "        installed = camegrad_mini.__version__\n"
        "    except ImportError as e:\n"
        '        installed = f"none ({e})"\n'
        "    if pip.returncode != 0 or installed != VERSION:\n"
        "        raise RuntimeError(\n"
        '            f"Could not install camegrad_mini {VERSION} from {REPO} (pip exit code {pip.returncode}, "\n'
        '            f"version that imports: {installed}). This chapter needs it, so it stops here.\\n"\n'
        '            f"pip said:\\n{(pip.stdout + pip.stderr).strip()[-3000:]}\\n\\n"\n'
        '            "What to do: check that this runtime is online and run this cell again; if camegrad_mini "\n'
        '            "was imported before, use Runtime > Restart session, then Run all. Or run the chapter "\n'
        '            "on your own machine, from a clone of the repository:\\n"\n'
        '            f"    git clone {REPO}\\n"\n'
        "            f\"    cd {REPO.rsplit('/', 1)[-1]}\\n\"\n"
        '            "    pip install -e . jupyterlab\\n"\n'
        '            "    jupyter lab chapters/\\n"\n'
        '            "and open this chapter there (`make lab` does the same with the book\'s exact versions).")'
    )


def write_first_cells() -> list[Path]:
    """Rewrite the first cell of every chapter from :func:`colab_cell_source` (after a version bump
    or a change of repository); returns the chapters that changed. Outputs stay as they are: the
    cell prints nothing outside Colab."""
    import nbformat

    changed = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        if first.cell_type != "code" or "google.colab" not in first.source:
            raise SystemExit(f"{path.name}: the first cell is not the Colab install cell; fix it by hand")
        if first.source != colab_cell_source():
            first.source = colab_cell_source()
            nbformat.write(nb, path)
            changed.append(path)
    return changed


if __name__ == "__main__":  # python tools/chapter_cells.py: after bumping camegrad_mini.__version__
    for p in write_first_cells():
        print("updated", p.relative_to(ROOT))
