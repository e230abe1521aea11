"""Write the reader edition of the chapters, ``notebooks/chapters/*.ipynb``: the notebooks that Colab
and JupyterLab open.

Usage: python tools/reader_edition.py            (re)write the edition (``make edition``)
       python tools/reader_edition.py --check    exit 1 if the committed edition is out of date

Why two editions of one text: the chapters in ``chapters/`` are the book's source. They use MyST
markup that the site turns into numbered, checked cross-references, sphinx-exercise blocks and
citations, and that Colab and JupyterLab would show as raw text (``{numref}`...```, ``:::{exercise}``).
This tool renders that markup into plain Markdown that reads everywhere: the same code cells with the
same outputs, the same prose, and the numbers Sphinx gives (sections "4.6", equations "(4.1)",
figures, exercises, propositions), computed here the way Sphinx computes them from ``_toc.yml``
(``tests/test_reader_edition.py`` compares them with a built site). Solutions become collapsed
``<details>`` blocks, and a solution's code cells are collapsed in JupyterLab. Citations read
"[Li et al., 2017]" as on the site, and each notebook ends with the list of the works it cites.

Never edit the edition by hand; edit ``chapters/`` and run ``make edition`` (``make refresh`` does it).
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
EDITION_DIR = "notebooks"  # the edition of chapters/X.ipynb is notebooks/chapters/X.ipynb

# Sphinx's default numref formats, and sphinx-exercise's / sphinx-proof's.
NUMREF_FORMAT = {"section": "Section %s", "figure": "Fig. %s", "exercise": "Exercise %s"}
PROOF_NAMES = {"proposition": "Proposition", "theorem": "Theorem", "lemma": "Lemma",
               "corollary": "Corollary", "definition": "Definition"}

ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<content>[^`]+)`")
LABEL_LINE = re.compile(r"^\((?P<label>[\w-]+)\)=\s*$")
HEADING = re.compile(r"^(?P<hashes>#{1,6}) (?P<title>.*)$")
DIRECTIVE_OPEN = re.compile(r"^:::\{(?P<name>[\w:-]+)\}\s*(?P<arg>.*)$")
OPTION = re.compile(r"^:(?P<key>[\w-]+):\s*(?P<value>.*)$")
EQ_LABEL = re.compile(r"\$\$\s*\((?P<label>[\w-]+)\)")
FENCE = re.compile(r"^(```|~~~)")


class EditionError(ValueError):
    """The chapters use markup the edition cannot render (or a label that does not exist)."""


@dataclass
class Target:
    kind: str  # section, equation, figure, exercise, or a proof type (proposition, ...)
    number: str
    title: str = ""
    doc: str = ""  # the document that defines it


@dataclass
class Book:
    """Everything the rendering needs from the whole book: numbers, titles, citations, repository."""
    docs: list[str]  # numbered documents in reading order, e.g. "chapters/01_multitask_conflict"
    targets: dict[str, Target] = field(default_factory=dict)
    heading_numbers: dict[str, list[str]] = field(default_factory=dict)  # per doc, per heading in order
    titles: dict[str, str] = field(default_factory=dict)  # doc -> title of its first heading
    citations: dict[str, str] = field(default_factory=dict)  # bib key -> "Li et al., 2017"
    references: dict[str, str] = field(default_factory=dict)  # bib key -> the full entry, one line
    repo_url: str = ""
    branch: str = "main"


# --------------------------------------------------------------------------------------------
# Reading the sources
# --------------------------------------------------------------------------------------------

def numbered_docs(toc: dict) -> list[tuple[str, str | None]]:
    """(doc, parent chapter or None) for each document of the numbered parts, in reading order."""
    out: list[tuple[str, str | None]] = []
    for part in toc.get("parts", []):
        if not part.get("numbered"):
            continue
        for chapter in part["chapters"]:
            out.append((chapter["file"], None))
            out.extend((section["file"], chapter["file"]) for section in chapter.get("sections", []))
    return out


def markdown_lines(source: str):
    """Yield (line, in_code) for a markdown source, tracking fenced code blocks."""
    fenced = False
    for line in source.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            yield line, True
            continue
        yield line, fenced


def _strip_roles(text: str) -> str:
    return ROLE.sub(lambda m: m.group("content").split(" <")[0], text).strip()


def read_citations(bib_path: Path) -> dict[str, str]:
    """Author-year labels as sphinxcontrib-bibtex's author_year style writes them."""
    return _read_bib(bib_path)[0]


def _read_bib(bib_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, full entries) per bib key; the full entry is what a notebook's reference list shows."""
    text = bib_path.read_text(encoding="utf-8")
    out, full = {}, {}
    for entry in re.finditer(r"@\w+\{(?P<key>[^,\s]+),(?P<body>.*?)\n\}", text, re.S):
        body = entry.group("body")
        authors = _bib_field(body, "author") or _bib_field(body, "editor") or ""
        year = _bib_field(body, "year") or "n.d."
        lasts = [_last_name(a) for a in re.split(r"\s+and\s+", authors) if a.strip()]
        if len(lasts) >= 3:
            who = f"{lasts[0]} et al."
        elif len(lasts) == 2:
            who = f"{lasts[0]} and {lasts[1]}"
        else:
            who = lasts[0] if lasts else "Anon."
        out[entry.group("key")] = f"{who}, {year}"
        full[entry.group("key")] = _full_entry(body, authors, year)
    return out, full


def _full_entry(body: str, authors: str, year: str) -> str:
    names = [_first_last(a) for a in re.split(r"\s+and\s+", authors) if a.strip()]
    venue = _bib_field(body, "booktitle") or _bib_field(body, "journal") or _bib_field(body, "publisher") or ""
    link = _bib_field(body, "doi")
    href = f"https://doi.org/{link}" if link else _bib_field(body, "url")
    if not href and (eprint := _bib_field(body, "eprint")):
        href = f"https://arxiv.org/abs/{eprint}"
    title = _detex(_bib_field(body, "title") or "")
    parts = [", ".join(names) + f" ({year}).", f"*{title}*." if title else "", _detex(venue) + "." if venue else ""]
    text = " ".join(p for p in parts if p)
    return f"{text} <{href}>" if href else text


def _first_last(author: str) -> str:
    author = _detex(author.strip())
    if "," in author:
        last, first = (x.strip() for x in author.split(",", 1))
        return f"{first} {last}"
    return author


def _detex(text: str) -> str:
    """Plain text of a bib field: the accents in LATEX_ACCENTS, "--" as a dash, braces dropped."""
    out = text
    for tex, char in LATEX_ACCENTS.items():
        out = out.replace("{" + tex + "}", char).replace(tex, char)
    if "\\" in out:
        raise EditionError(f"cannot render the LaTeX in {text!r}: add it to LATEX_ACCENTS")
    return " ".join(out.replace("--", "–").replace("{", "").replace("}", "").split())


def _bib_field(body: str, name: str) -> str | None:
    m = re.search(rf"\b{name}\s*=\s*", body)
    if not m:
        return None
    i = m.end()
    if body[i] != "{":  # bare value such as year = 2017
        return re.match(r"[^,\n]*", body[i:]).group(0).strip()  # type: ignore[union-attr]
    depth, j = 0, i
    while True:
        depth += {"{": 1, "}": -1}.get(body[j], 0)
        if depth == 0:
            return body[i + 1:j]
        j += 1


LATEX_ACCENTS = {r"\'e": "é", r"\'E": "É", r'\"u': "ü", r'\"a': "ä", r'\"o': "ö", r"\c{S}": "Ş",
                 r"\c{s}": "ş", r"\k{e}": "ę", r"\l": "ł", r"\L": "Ł", r"\'a": "á", r"\`e": "è"}


def _last_name(author: str) -> str:
    author = author.strip()
    return _detex(author.split(",")[0] if "," in author else author.split()[-1])


def read_book(root: Path = ROOT) -> Book:
    """Number every section, equation, figure, exercise and proposition as Sphinx does."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    config = yaml.safe_load((root / "_config.yml").read_text())
    repo = config.get("repository", {})
    citations, references = _read_bib(root / "book" / "references.bib")
    book = Book(docs=[], repo_url=repo.get("url", "").rstrip("/"), branch=repo.get("branch", "main"),
                citations=citations, references=references)
    chapter_no = 0
    sections_in: dict[str, int] = {}  # chapter doc -> how many level-2 numbers it has used
    counters: dict[tuple[str, str], int] = {}  # (kind, chapter number) -> last number
    for doc, parent in numbered_docs(toc):
        book.docs.append(doc)
        if parent is None:
            chapter_no += 1
            prefix: list[int] = [chapter_no]
        else:  # a sub-document is numbered after its chapter's own sections
            sections_in[parent] += 1
            prefix = [chapter_no, sections_in[parent]]
        nb = nbformat.read(root / f"{doc}.ipynb", as_version=4)
        level2 = _number_doc(book, doc, nb, prefix, str(chapter_no), counters)
        if parent is None:
            sections_in[doc] = level2
    for doc in _other_docs(toc):  # titles of unnumbered pages, for {doc} links
        path = root / f"{doc}.md"
        if path.exists():
            first = next((m.group("title") for line in path.read_text().split("\n")
                          if (m := HEADING.match(line))), doc)
            book.titles[doc] = _strip_roles(first)
    return book


def _other_docs(toc: dict) -> list[str]:
    docs = [toc["root"]]
    for part in toc.get("parts", []):
        if not part.get("numbered"):
            docs.extend(chapter["file"] for chapter in part["chapters"])
    return docs


def _next(counters: dict[tuple[str, str], int], kind: str, chapter: str) -> str:
    counters[kind, chapter] = counters.get((kind, chapter), 0) + 1
    return f"{chapter}.{counters[kind, chapter]}"


def _number_doc(book: Book, doc: str, nb, prefix: list[int], chapter: str,
                counters: dict[tuple[str, str], int]) -> int:
    """Number one document's headings and enumerables; return how many level-2 numbers it used."""
    depth0 = len(prefix)  # the document title's depth: 1 for a chapter, 2 for a sub-document
    current = list(prefix)
    numbers: list[str] = []
    pending_label = None
    for cell in nb.cells:
        if cell.cell_type == "code":
            fig = cell.metadata.get("mystnb", {}).get("figure", {})
            if fig.get("name"):
                number = _next(counters, "figure", chapter)
                _add(book, fig["name"], Target("figure", number, fig.get("caption", "")), doc)
            continue
        if cell.cell_type != "markdown":
            continue
        for line, in_code in markdown_lines(cell.source):
            if in_code:
                continue
            if m := LABEL_LINE.match(line):
                pending_label = m.group("label")
            elif m := HEADING.match(line):
                level = len(m.group("hashes"))  # 1 = the document's title
                depth = depth0 + level - 1
                if level == 1:
                    current = list(prefix)
                    book.titles[doc] = _strip_roles(m.group("title"))
                else:
                    current = (current + [0] * depth)[:depth]
                    current[-1] += 1
                number = ".".join(map(str, current))
                numbers.append(number)
                if pending_label:
                    _add(book, pending_label, Target("section", number, _strip_roles(m.group("title"))), doc)
                    pending_label = None
            elif m := DIRECTIVE_OPEN.match(line):
                _number_directive(book, doc, cell.source, line, m, chapter, counters)
            for eq in EQ_LABEL.finditer(line):
                _add(book, eq.group("label"), Target("equation", _next(counters, "equation", chapter)), doc)
    book.heading_numbers[doc] = numbers
    level2 = [n for n in numbers if n.count(".") == depth0]
    return len(level2)


def _number_directive(book: Book, doc: str, source: str, line: str, m: re.Match, chapter: str,
                      counters: dict[tuple[str, str], int]) -> None:
    name = m.group("name")
    kind = "exercise" if name == "exercise" else name[4:] if name.startswith("prf:") else None
    if kind is None or kind == "proof":
        return
    options = _options_after(source, line)
    if "label" not in options:
        raise EditionError(f"a {name} directive without :label: ({m.group('arg')!r}); the edition needs one")
    _add(book, options["label"], Target(kind, _next(counters, kind, chapter), m.group("arg").strip()), doc)


def _options_after(source: str, line: str) -> dict[str, str]:
    lines = source.split("\n")
    i = lines.index(line) + 1
    options = {}
    while i < len(lines) and (o := OPTION.match(lines[i])):
        options[o.group("key")] = o.group("value").strip()
        i += 1
    return options


def _add(book: Book, label: str, target: Target, doc: str) -> None:
    target.doc = doc
    if label in book.targets:
        raise EditionError(f"the label {label!r} is defined twice")
    book.targets[label] = target


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def render_roles(text: str, book: Book, doc: str) -> str:
    return ROLE.sub(lambda m: _render_role(m.group("role"), m.group("content"), book, doc), text)


def _split_target(content: str) -> tuple[str | None, str]:
    m = re.match(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", content, re.S)
    return (m.group("text"), m.group("target")) if m else (None, content.strip())


def _target(book: Book, label: str, doc: str) -> Target:
    if label not in book.targets:
        raise EditionError(f"{doc}: unknown label {label!r}")
    return book.targets[label]


def _render_role(role: str, content: str, book: Book, doc: str) -> str:
    text, target = _split_target(content)
    if role == "cite":
        keys = [k.strip() for k in target.split(",")]
        missing = [k for k in keys if k not in book.citations]
        if missing:
            raise EditionError(f"{doc}: unknown citation key(s) {missing}")
        return "[" + "; ".join(book.citations[k] for k in keys) + "]"
    if role == "eq":
        return f"({_target(book, target, doc).number})"
    if role == "numref":
        t = _target(book, target, doc)
        fmt = text or NUMREF_FORMAT.get(t.kind) or f"{PROOF_NAMES.get(t.kind, t.kind.title())} %s"
        return fmt.replace("%s", t.number).replace("{number}", t.number).replace("{name}", t.title)
    if role == "prf:ref":
        t = _target(book, target, doc)
        return text or f"{PROOF_NAMES.get(t.kind, t.kind.title())} {t.number}"
    if role == "term":
        return text or target
    if role == "doc":
        return _render_doc_link(text, target, book, doc)
    raise EditionError(f"{doc}: the role {{{role}}} has no plain rendering; use one of cite, eq, numref, "
                       "prf:ref, term, doc")


def _render_doc_link(text: str | None, target: str, book: Book, doc: str) -> str:
    resolved = os.path.normpath(os.path.join(os.path.dirname(doc), target)).replace(os.sep, "/")
    if resolved in book.docs:  # another chapter: its edition sits in the same folder layout
        href = os.path.relpath(resolved, os.path.dirname(doc)).replace(os.sep, "/") + ".ipynb"
    elif resolved in book.titles:  # a book page: its source on the repository (read online)
        href = f"{book.repo_url}/blob/{book.branch}/{resolved}.md"
    else:
        raise EditionError(f"{doc}: {{doc}} target {target!r} is not in _toc.yml")
    return f"[{text or book.titles.get(resolved, resolved)}]({href})"


def _blockquote(text: str) -> str:
    return "\n".join("> " + line if line.strip() else ">" for line in text.split("\n"))


def _details(summary: str, body: str) -> str:
    return f"<details>\n<summary><b>{summary}</b> (click to show)</summary>\n\n{body.strip()}\n\n</details>"


def render_markdown(source: str, book: Book, doc: str, headings: list[str]) -> tuple[str, str | None]:
    """Render one markdown cell. Returns the text and the gated-solution state after the cell:
    "open" if a solution-start was met and not closed in this cell, else None."""
    lines = source.split("\n")
    out: list[str] = []
    gated = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):  # copy fenced code verbatim
            j = next((k for k in range(i + 1, len(lines)) if FENCE.match(lines[k])), len(lines) - 1)
            out.extend(lines[i:j + 1])
            i = j + 1
            continue
        if LABEL_LINE.match(line):
            i += 1
            continue
        if m := HEADING.match(line):
            out.append(f"{m.group('hashes')} {_heading_number(headings, m)} {m.group('title')}")
            i += 1
            continue
        if m := DIRECTIVE_OPEN.match(line):
            i, rendered, gated_now = _render_directive(lines, i, m, book, doc)
            if gated_now == "start":
                # the rest of the cell is the solution's text; its code cells follow
                rest = "\n".join(lines[i:]).strip()
                out.append(_details(rendered, rest + "\n\n*This solution's code is in the collapsed cells "
                                    "that follow.*"))
                gated = "open"
                break
            if gated_now == "end":
                gated = "closed"
            elif rendered is not None:
                out.append(rendered)
            continue
        out.append(line)
        i += 1
    text = "\n".join(out).strip("\n")
    return render_roles(text, book, doc), gated


def _heading_number(headings: list[str], m: re.Match) -> str:
    number = headings.pop(0)
    return number + "." if len(m.group("hashes")) == 1 and "." not in number else number


def _render_directive(lines: list[str], i: int, m: re.Match, book: Book, doc: str):
    """Render the directive opening at lines[i]; return (next line index, text, gated marker)."""
    name, arg = m.group("name"), m.group("arg").strip()
    j = i + 1
    options = {}
    while j < len(lines) and (o := OPTION.match(lines[j])):
        options[o.group("key")] = o.group("value").strip()
        j += 1
    end = next((k for k in range(j, len(lines)) if lines[k].strip() == ":::"), None)
    if end is None:
        raise EditionError(f"{doc}: the directive {name} {arg!r} is not closed by ':::' in its cell")
    body = "\n".join(lines[j:end]).strip("\n")
    if any(DIRECTIVE_OPEN.match(x) for x in lines[j:end]):
        raise EditionError(f"{doc}: nested directives inside {name} are not supported by the edition")
    nxt = end + 1
    if name == "admonition":
        return nxt, _blockquote(f"**{arg}**\n\n{body}"), None
    if name == "exercise":
        t = book.targets[options["label"]]
        head = f"**Exercise {t.number}" + (f" ({arg})" if arg else "") + ".**"
        return nxt, f"{head} {body.lstrip()}", None
    if name in ("solution", "solution-start"):
        t = _target(book, arg, doc)
        summary = f"Solution to Exercise {t.number}"
        if name == "solution-start":
            if body:
                raise EditionError(f"{doc}: put a gated solution's text after its solution-start, not inside")
            return nxt, summary, "start"
        return nxt, _details(summary, body), None
    if name == "solution-end":
        return nxt, None, "end"
    if name == "prf:proof":
        return nxt, f"*Proof.* {body.lstrip()} $\\square$", None
    if name.startswith("prf:") and name[4:] in PROOF_NAMES:
        t = book.targets[options["label"]]
        head = f"**{PROOF_NAMES[name[4:]]} {t.number}" + (f" ({arg})" if arg else "") + ".**"
        return nxt, f"{head} {body.lstrip()}", None
    raise EditionError(f"{doc}: the directive {{{name}}} has no plain rendering in tools/reader_edition.py")


def _tag_equations(text: str, book: Book) -> str:
    """``$$ (label)`` -> ``\\tag{4.1} $$``: Jupyter's MathJax numbers the display itself."""
    return EQ_LABEL.sub(lambda m: f"\\tag{{{book.targets[m.group('label')].number}}}\n$$", text)


def render_notebook(doc: str, book: Book, root: Path = ROOT) -> nbformat.NotebookNode:
    """The reader edition of one chapter."""
    src = nbformat.read(root / f"{doc}.ipynb", as_version=4)
    nb = copy.deepcopy(src)
    headings = list(book.heading_numbers[doc])
    cells = []
    in_solution = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = _tag_equations(cell.source, book)
            rendered, gated = render_markdown(text, book, doc, headings)
            if gated is not None:  # a markdown cell inside a gated solution leaves it open
                in_solution = gated == "open"
            if rendered.strip():
                cell.source = rendered
                cells.append(cell)
            continue
        tags = cell.metadata.get("tags", [])
        if in_solution or "hide-input" in tags:
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
        if in_solution:
            cell.metadata["jupyter"]["outputs_hidden"] = True
        cells.append(cell)
        figure = cell.metadata.get("mystnb", {}).get("figure")
        if figure:
            t = book.targets[figure["name"]]
            caption = render_roles(figure.get("caption", ""), book, doc)
            cells.append(nbformat.v4.new_markdown_cell(f"*Figure {t.number}.* {caption}",
                                                       id=f"{cell.id}-caption"[:64]))
    if headings:
        raise EditionError(f"{doc}: heading count differs from the numbering pass")
    cited = _cited_keys(src, book)
    if cited:  # the site links each citation to its reference page; a notebook lists them at its end
        refs = "\n".join(f"* [{book.citations[k]}] {book.references[k]}" for k in cited)
        cells.append(nbformat.v4.new_markdown_cell(f"## References\n\n{refs}", id="reader-edition-references"))
    nb.cells = cells
    nb.metadata["reader_edition"] = {"source": f"{doc}.ipynb", "written_by": "tools/reader_edition.py",
                                     "note": "generated; edit the source and run `make edition`"}
    return nb


def _cited_keys(src: nbformat.NotebookNode, book: Book) -> list[str]:
    """The bib keys the chapter cites (prose and figure captions), in the order of their labels."""
    texts = [c.source for c in src.cells if c.cell_type == "markdown"]
    texts += [c.metadata.get("mystnb", {}).get("figure", {}).get("caption", "") for c in src.cells]
    keys = {k.strip() for t in texts for m in ROLE.finditer(t) if m.group("role") == "cite"
            for k in _split_target(m.group("content"))[1].split(",")}
    return sorted(keys, key=lambda k: (book.citations[k].lower(), k))


def edition_path(doc: str, root: Path = ROOT) -> Path:
    return root / EDITION_DIR / f"{doc}.ipynb"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed edition")
    args = parser.parse_args(argv)
    book = read_book()
    stale = []
    for doc in book.docs:
        nb = render_notebook(doc, book)
        path = edition_path(doc)
        text = nbformat.writes(nb) + "\n"
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    if args.check and stale:
        print("the reader edition is out of date (run `make edition`):", *stale, sep="\n  ")
        return 1
    print(("out of date: " if args.check else "written: ") + (", ".join(map(str, stale)) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
