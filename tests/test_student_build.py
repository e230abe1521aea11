"""tools/student_config.py: the student build's configuration, and the check that compares the two builds."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import student_config  # noqa: E402  (tools/ is not a package)

EXERCISE = '<div class="exercise admonition" id="ex-a"><p>Exercise 1.1</p></div>'
SOLUTION = '<div class="solution dropdown admonition" id="s-1"><section id="solution-content">x</section></div>'


def _site(root: Path, page: str) -> Path:
    (root / "chapters").mkdir(parents=True)
    (root / "chapters" / "01_x.html").write_text(page, encoding="utf-8")
    return root


def test_the_student_config_turns_the_extension_on_and_keeps_the_rest():
    config = student_config.student_config()
    assert config["sphinx"]["config"]["student_build"] is True
    assert "sphinx_exercise" in config["sphinx"]["extra_extensions"]
    for path in config["sphinx"]["local_extensions"].values():
        assert Path(path).is_absolute() and (Path(path) / "student_build.py").is_file()


def test_verify_accepts_a_student_site_without_solutions(tmp_path):
    instructor = _site(tmp_path / "i", EXERCISE + SOLUTION)
    student = _site(tmp_path / "s", EXERCISE)
    assert student_config.verify(instructor, student) == []


def test_verify_names_a_solution_left_in_the_student_site(tmp_path):
    instructor = _site(tmp_path / "i", EXERCISE + SOLUTION)
    student = _site(tmp_path / "s", EXERCISE + SOLUTION)
    assert student_config.verify(instructor, student) == ["01_x.html: the student build still shows a solution"]


def test_verify_names_lost_exercises_and_missing_solutions(tmp_path):
    instructor = _site(tmp_path / "i", EXERCISE)
    student = _site(tmp_path / "s", "")
    assert student_config.verify(instructor, student) == [
        "01_x.html: instructor build has 1 exercises but 0 solutions",
        "01_x.html: the student build lost exercises",
        "the instructor build shows no solutions at all"]
