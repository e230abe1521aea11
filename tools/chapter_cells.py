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
    return (
        "# In Colab only: install the companion package at the version this chapter was written for.\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        f'    %pip install -q "camegrad_mini @ git+{repository_url()}@v{package_version()}"'
    )
