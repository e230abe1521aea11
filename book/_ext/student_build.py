"""The student build: leave every solution out of the pages, gated ones with their code cells.

sphinx-exercise's own ``hide_solutions`` (1.0.1) drops a gated ``solution-start`` but leaves its
``solution-end`` behind (the HTML writer then fails on the unknown node) and leaves the solution's
code cells on the page. So the book keeps ``hide_solutions`` off and, when ``student_build`` is on,
removes the merged solution nodes after sphinx-exercise has gathered each gated solution's cells.
"""
from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx_exercise.nodes import solution_node


class RemoveSolutions(SphinxTransform):
    default_priority = 20  # after sphinx-exercise's MergeGatedSolutions (priority 10)

    def apply(self, **kwargs) -> None:
        if not self.config.student_build:
            return
        for node in list(self.document.findall(solution_node)):
            node.parent.remove(node)


def setup(app: Sphinx) -> dict:
    app.add_config_value("student_build", False, "env")
    app.add_transform(RemoveSolutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
