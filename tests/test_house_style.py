"""House style that a linter does not check (issue 15): functions a reader can hold in their head,
and chapters that import modules under readable names."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80  # lines of code of one function, its docstring not counted
WAIVER = "# long function:"  # a comment right above the def that says why a function may be longer


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    n = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


def long_functions(path: Path) -> list[str]:
    """``function (n lines)`` for every function of ``path`` over the limit without a stated reason."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_LINES:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = "\n".join(lines[max(0, first - 4):first - 1])
            if WAIVER not in above:
                out.append(f"{node.name} ({_code_lines(node)} lines)")
    return out


def test_no_function_is_longer_than_the_limit_without_a_reason():
    offenders = [f"{p.relative_to(ROOT)}:{f}" for p in sorted((ROOT / "camegrad_mini").rglob("*.py"))
                 for f in long_functions(p)]
    assert offenders == [], f"over {MAX_LINES} lines of code, without a '{WAIVER}' comment: {offenders}"


def test_the_length_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES + 1))
    long = tmp_path / "m.py"
    long.write_text(f'def f():\n    """Doc."""\n{body}\n', encoding="utf-8")
    assert long_functions(long) == [f"f ({MAX_LINES + 2} lines)"]  # the def line and the body; no docstring
    long.write_text(f'{WAIVER} a reason\ndef f():\n{body}\n', encoding="utf-8")
    assert long_functions(long) == []


ALIAS = re.compile(r"^\s*(?:from\s+\S+\s+)?import\s+.*\bas\s+([A-Za-z])\b", re.M)


@pytest.mark.parametrize("path", sorted((ROOT / "chapters").glob("*.ipynb")), ids=lambda p: p.name)
def test_chapters_import_modules_under_readable_names(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert ALIAS.findall(code) == [], "one-letter module aliases: say what the module is"


def test_the_alias_check_can_fail():
    assert ALIAS.findall("from camegrad_mini import dilemma as D\nimport numpy as np") == ["D"]
