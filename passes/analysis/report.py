"""Report pass: the annotated graph as a tabulate table (with totals) and JSON."""

from __future__ import annotations

from typing import Literal

from qfx.graph.dump import to_dict, to_table
from qfx.graph.trace import QGraph
from qfx.passes.base import Pass, PassResult


class ReportPass(Pass):
    """Reads all metadata; writes nothing. Info: ``text`` (table or JSON) and ``data`` (dict)."""

    name = "report"
    requires = ("shapes",)

    def __init__(self, fmt: Literal["table", "json"] = "table") -> None:
        self.fmt = fmt

    def run(self, graph: QGraph) -> PassResult:
        from qfx.graph.dump import to_json

        text = to_table(graph) if self.fmt == "table" else to_json(graph)
        return PassResult(graph, False, {"text": text, "data": to_dict(graph)})
