"""Give the singlehtml builder (the PDF, ``make pdf``) every renderer the html builder has.

Sphinx looks up an extension's node renderers by builder name and falls back to the builder's format
("html") only when *no* renderer at all is registered under the name "singlehtml". sphinx-exercise
registers a few singlehtml renderers of its own, which switches that fallback off for every other
extension: sphinx-proof's propositions and myst-nb's hidden code cells then stop the singlehtml build
("unknown node type"). So once every extension has registered, this copies each html renderer that
has no singlehtml counterpart: the PDF page renders exactly as the html pages do.
"""
from __future__ import annotations

from sphinx.application import Sphinx


def _copy_html_handlers(app: Sphinx) -> None:
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for node, visit_depart in handlers.get("html", {}).items():
        single.setdefault(node, visit_depart)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _copy_html_handlers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
