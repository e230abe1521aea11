"""The student build's configuration, and a check that the two builds differ only by the solutions.

Usage (``make book-student``):
    python tools/student_config.py > _build/student_config.yml
    python tools/student_config.py --verify _build/html _build/student/_build/html

One source, two builds: the instructor build (``make book``) shows every solution as a dropdown; the
student build (``student_build: true``, see book/_ext/student_build.py) leaves every solution out,
gated ones with their code cells. ``--verify`` checks, per chapter page, that the student page has
the instructor page's exercises and none of its solutions.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXERCISE = re.compile(r'class="exercise[^"]*admonition"')
SOLUTION = re.compile(r'class="solution[^"]*admonition"')


def student_config(root: Path = ROOT) -> dict:
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["sphinx"]["config"]["student_build"] = True
    config["title"] = config["title"] + " (student edition)"
    # Jupyter Book resolves local extensions against the config file's folder (here _build/)
    for name, path in config["sphinx"].get("local_extensions", {}).items():
        config["sphinx"]["local_extensions"][name] = str((root / path).resolve())
    return config


def verify(instructor: Path, student: Path) -> list[str]:
    """Problems found comparing the two builds' chapter pages (empty when all is well)."""
    problems = []
    pages = sorted((instructor / "chapters").glob("*.html"))
    if not pages:
        return [f"no chapter pages under {instructor}"]
    total = 0
    for page in pages:
        ours, theirs = page.read_text(encoding="utf-8"), (student / "chapters" / page.name).read_text(encoding="utf-8")
        n_ex, n_sol = len(EXERCISE.findall(ours)), len(SOLUTION.findall(ours))
        total += n_sol
        if n_sol != n_ex:
            problems.append(f"{page.name}: instructor build has {n_ex} exercises but {n_sol} solutions")
        if len(EXERCISE.findall(theirs)) != n_ex:
            problems.append(f"{page.name}: the student build lost exercises")
        if SOLUTION.search(theirs) or "solution-content" in theirs:
            problems.append(f"{page.name}: the student build still shows a solution")
    if total == 0:
        problems.append("the instructor build shows no solutions at all")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", nargs=2, type=Path, metavar=("INSTRUCTOR_HTML", "STUDENT_HTML"))
    args = parser.parse_args(argv)
    if args.verify:
        problems = verify(*args.verify)
        for p in problems:
            print("student build:", p, file=sys.stderr)
        if not problems:
            print("student build ok: every chapter keeps its exercises and shows no solution")
        return 1 if problems else 0
    yaml.safe_dump(student_config(), sys.stdout, sort_keys=False, allow_unicode=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
