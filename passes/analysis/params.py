"""Parameter counts per node, each parameter counted once."""

from __future__ import annotations

from dataclasses import dataclass

from qfx.graph.meta import PARAMS, annotate
from qfx.graph.trace import QGraph, node_parameters
from qfx.passes.base import Pass, PassResult


@dataclass(frozen=True)
class ParamsPass(Pass):
    """Writes ``params`` of every node: the parameters its module (or get_attr) owns.

    A parameter used by several nodes (shared weights) is credited to the first
    node in graph order only, so the total equals ``sum(p.numel() for p in model.parameters())``.
    """

    name = PARAMS
    provides = (PARAMS,)

    def run(self, graph: QGraph) -> PassResult:
        seen: set[int] = set()
        total = 0
        gm = graph.gm
        for n in gm.graph.nodes:
            ps = [p for _, p in node_parameters(gm, n)]
            count = 0
            for p in ps:
                if id(p) not in seen:
                    seen.add(id(p))
                    count += p.numel()
            annotate(n, PARAMS, params=count)
            total += count
        return PassResult(graph, False, {"params": total})
