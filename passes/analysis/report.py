"""Report pass: the annotated graph as a tabulate table (with totals) and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qfx.graph.dump import to_dict, to_json, to_table
from qfx.graph.meta import SHAPES
from qfx.graph.trace import QGraph
from qfx.passes.base import Pass, PassResult


@dataclass(frozen=True)
class ReportPass(Pass):
    """Reads all metadata; writes nothing. Info: ``text`` (table or JSON) and ``data`` (dict)."""

    name = "report"
    requires = (SHAPES,)

    fmt: Literal["table", "json"] = "table"

    def run(self, graph: QGraph) -> PassResult:

        text = to_table(graph) if self.fmt == "table" else to_json(graph)
        return PassResult(graph, False, {"text": text, "data": to_dict(graph)})
