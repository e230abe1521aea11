"""The reader edition (notebooks/chapters/, written by tools/reader_edition.py): in sync with the
chapters, free of raw MyST markup, the same code and outputs, and numbered as the built site is."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import reader_edition as edition  # noqa: E402  (tools/ is not a package)

BOOK = edition.read_book()
RAW_MYST = [re.compile(p, re.M) for p in (r"\{[\w:-]+\}`", r"^:::", r"^\([\w-]+\)=\s*$", r"^```\{")]


def _edition(doc: str) -> nbformat.NotebookNode:
    return nbformat.read(edition.edition_path(doc), as_version=4)


def test_every_numbered_chapter_has_an_edition_and_nothing_else():
    expected = {edition.edition_path(doc) for doc in BOOK.docs}
    present = set((ROOT / edition.EDITION_DIR).rglob("*.ipynb"))
    assert present == expected


@pytest.mark.parametrize("doc", BOOK.docs)
class TestEdition:
    def test_is_in_sync_with_the_chapter(self, doc):
        fresh = nbformat.writes(edition.render_notebook(doc, BOOK)) + "\n"
        assert edition.edition_path(doc).read_text(encoding="utf-8") == fresh, \
            f"{doc}: the reader edition is out of date; run `make edition`"

    def test_has_no_raw_myst_markup(self, doc):
        for k, cell in enumerate(_edition(doc).cells):
            if cell.cell_type == "markdown":
                for pattern in RAW_MYST:
                    assert not pattern.search(cell.source), (doc, k, pattern.pattern)

    def test_code_cells_and_outputs_are_the_chapter_s(self, doc):
        source = nbformat.read(ROOT / f"{doc}.ipynb", as_version=4)
        ours = [c for c in _edition(doc).cells if c.cell_type == "code"]
        theirs = [c for c in source.cells if c.cell_type == "code"]
        assert [(c.source, c.outputs) for c in ours] == [(c.source, c.outputs) for c in theirs]
        assert ours[0].metadata.get("tags") == ["remove-cell"] and "google.colab" in ours[0].source

    def test_numbers_match_the_built_site(self, doc):
        html_path = ROOT / "_build" / "html" / f"{doc}.html"
        if not html_path.exists() or html_path.stat().st_mtime < (ROOT / f"{doc}.ipynb").stat().st_mtime:
            pytest.skip("no fresh build of this chapter: run `make book` first (CI does)")
        html = html_path.read_text(encoding="utf-8")
        headings = [n.rstrip(".") for n in re.findall(r'<h[1-6]><span class="section-number">([\d.]+)\s*</span>', html)]
        assert headings == BOOK.heading_numbers[doc]
        for label, target in BOOK.targets.items():
            if target.doc != doc or target.kind == "section":
                continue  # sections are checked through the headings above
            anchor = f'id="equation-{label}"' if target.kind == "equation" else f'id="{label}"'
            assert anchor in html, (doc, label)
            start = html.index(anchor)
            window = re.sub(r"<[^>]+>", "", html[start:start + 4000])
            name = {"equation": r"\(", "figure": "Fig. "}.get(target.kind, target.kind.title() + " ")
            assert re.search(name + re.escape(target.number) + r"\b", window), (doc, label, target)


# ------------------------------------------------------------------------------------------------
# The renderer itself, on a two-chapter book built in a temporary folder
# ------------------------------------------------------------------------------------------------

def _md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)


def _code(text: str, **metadata) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(text)
    cell.metadata.update(metadata)
    return cell


@pytest.fixture
def tiny_book(tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/preface\nparts:\n  - caption: C\n    numbered: true\n    chapters:\n"
        "      - file: chapters/one\n        sections:\n          - file: chapters/one_b\n"
        "      - file: chapters/two\n  - caption: Back\n    chapters:\n      - file: book/glossary\n")
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://example.org/o/r\n  branch: main\n")
    (tmp_path / "book" / "references.bib").write_text(
        "@article{a1,\n  author = {Sener, Ozan and Koltun, Vladlen},\n  year = {2018}\n}\n"
        "@article{a2,\n  author = {{\\c{S}}im{\\c{s}}ekli, Umut and Sagun, Levent and "
        "G{\\\"u}rb{\\\"u}zbalaban, Mert},\n"
        "  year = {2019}\n}\n")
    (tmp_path / "book" / "preface.md").write_text("# Preface\n")
    (tmp_path / "book" / "glossary.md").write_text("# Glossary\n")
    one = nbformat.v4.new_notebook()
    one.cells = [
        _md("# First\n\n(sec-one-a)=\n## Alpha\n\n$$\nx = 1\n$$ (eq-x)\n\nSee {eq}`eq-x`, {numref}`§%s <sec-two-b>` "
            "and {doc}`the glossary <../book/glossary>`; {term}`LS <Linear scalarization>` {cite}`a1,a2`."),
        _code("plot()", mystnb={"figure": {"caption": "A plot of {eq}`eq-x`.", "name": "fig-one-plot"}}),
        _md("## Exercises\n\n:::{exercise} Warm-up\n:label: ex-one-warm\n\nDo {numref}`fig-one-plot` again.\n:::\n\n"
            ":::{solution} ex-one-warm\n:class: dropdown\n\nDone.\n:::\n\n"
            ":::{exercise}\n:label: ex-one-code\n\nRun it.\n:::"),
        _md(":::{solution-start} ex-one-code\n:class: dropdown\n:::\n\nThe code:"),
        _code("run()"),
        _md(":::{solution-end}\n:::\n\n:::{prf:proposition} Easy\n:label: prop-one\n\nTrue.\n:::\n\n"
            ":::{prf:proof}\nObvious.\n:::"),
        _code("after()", tags=["hide-input"]),
    ]
    one_b = nbformat.v4.new_notebook()
    one_b.cells = [_md("# Appendix\n\n## Part\n\n:::{admonition} Note\n:class: tip\nMind {prf:ref}`prop-one`.\n:::")]
    two = nbformat.v4.new_notebook()
    two.cells = [_md("# Second\n\n## A\n\n(sec-two-b)=\n## B\n\n```python\n# not a heading\n```\n\n"
                     "Back to {doc}`chapter one <one>` and {numref}`ex-one-code`.")]
    for name, nb in (("one", one), ("one_b", one_b), ("two", two)):
        nbformat.write(nb, tmp_path / "chapters" / f"{name}.ipynb")
    return tmp_path


def test_numbering_follows_sphinx(tiny_book):
    book = edition.read_book(tiny_book)
    assert book.docs == ["chapters/one", "chapters/one_b", "chapters/two"]
    assert book.heading_numbers == {"chapters/one": ["1", "1.1", "1.2"], "chapters/one_b": ["1.3", "1.3.1"],
                                    "chapters/two": ["2", "2.1", "2.2"]}
    numbers = {label: (t.kind, t.number) for label, t in book.targets.items()}
    assert numbers == {"sec-one-a": ("section", "1.1"), "eq-x": ("equation", "1.1"), "fig-one-plot": ("figure", "1.1"),
                       "ex-one-warm": ("exercise", "1.1"), "ex-one-code": ("exercise", "1.2"),
                       "prop-one": ("proposition", "1.1"), "sec-two-b": ("section", "2.2")}
    assert book.citations == {"a1": "Sener and Koltun, 2018", "a2": "Şimşekli et al., 2019"}


def test_rendering_leaves_plain_markdown(tiny_book):
    book = edition.read_book(tiny_book)
    one = edition.render_notebook("chapters/one", book, tiny_book)
    text = [c.source for c in one.cells]
    assert text[0].startswith("# 1. First\n\n## 1.1 Alpha\n\n$$\nx = 1\n\\tag{1.1}\n$$")
    assert ("See (1.1), §2.2 and [the glossary](https://example.org/o/r/blob/main/book/glossary.md); LS "
            "[Sener and Koltun, 2018; Şimşekli et al., 2019].") in text[0]
    assert text[2] == "*Figure 1.1.* A plot of (1.1)."
    assert "**Exercise 1.1 (Warm-up).** Do Fig. 1.1 again." in text[3]
    assert "<summary><b>Solution to Exercise 1.1</b>" in text[3] and "Done." in text[3]
    assert "**Exercise 1.2.** Run it." in text[3]
    assert text[4].startswith("<details>") and "The code:" in text[4]
    assert one.cells[5].metadata["jupyter"] == {"source_hidden": True, "outputs_hidden": True}
    assert text[6] == "**Proposition 1.1 (Easy).** True.\n\n*Proof.* Obvious. $\\square$"
    assert one.cells[7].metadata["jupyter"] == {"source_hidden": True}  # hide-input, not a solution
    assert one.cells[8].source == ("## References\n\n* [Sener and Koltun, 2018] Ozan Sener, Vladlen Koltun (2018).\n"
                                   "* [Şimşekli et al., 2019] Umut Şimşekli, Levent Sagun, Mert Gürbüzbalaban (2019).")
    appendix = edition.render_notebook("chapters/one_b", book, tiny_book)
    assert appendix.cells[0].source == "# 1.3 Appendix\n\n## 1.3.1 Part\n\n> **Note**\n>\n> Mind Proposition 1.1."
    two = edition.render_notebook("chapters/two", book, tiny_book)
    assert not any(c.source.startswith("## References") for c in two.cells)  # cites nothing
    assert "```python\n# not a heading\n```" in two.cells[0].source
    assert "[chapter one](one.ipynb) and Exercise 1.2." in two.cells[0].source


@pytest.mark.parametrize("bad, message", [
    ("See {ref}`sec-one-a`.", "no plain rendering"),
    ("See {numref}`sec-nowhere`.", "unknown label"),
    ("See {cite}`nobody`.", "unknown citation"),
    (":::{figure} x.png\n:::", "no plain rendering"),
    (":::{admonition} Open\nnever closed", "not closed"),
])
def test_markup_it_cannot_render_is_an_error(tiny_book, bad, message):
    path = tiny_book / "chapters" / "two.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(_md(bad))
    nbformat.write(nb, path)
    with pytest.raises(edition.EditionError, match=message):
        edition.render_notebook("chapters/two", edition.read_book(tiny_book), tiny_book)


def test_a_label_defined_twice_is_an_error(tiny_book):
    path = tiny_book / "chapters" / "two.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(_md("(sec-one-a)=\n## Again"))
    nbformat.write(nb, path)
    with pytest.raises(edition.EditionError, match="defined twice"):
        edition.read_book(tiny_book)


def test_latex_it_cannot_render_in_the_bibliography_is_an_error(tiny_book):
    bib = tiny_book / "book" / "references.bib"
    bib.write_text(bib.read_text() + "@article{a3,\n  author = {M{\\=u}ller, Anna},\n  year = {2020}\n}\n")
    with pytest.raises(edition.EditionError, match="LATEX_ACCENTS"):
        edition.read_book(tiny_book)
