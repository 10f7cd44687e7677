"""Views of an annotated graph: a tabulate table, JSON and a networkx DiGraph."""

from __future__ import annotations

import json
from typing import Any, Protocol

import networkx as nx
import torch.fx as fx
from tabulate import tabulate

from qfx.graph.meta import get_meta


class QGraph(Protocol):
    """What the views read of a :class:`qfx.graph.trace.QGraph` (no import of it: trace uses these views)."""

    gm: fx.GraphModule
    analyses: set[str]


COLUMNS = ["name", "op", "target", "out shape", "MACs", "FLOPs", "params", "precision"]


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def rows(g: QGraph) -> list[list[str]]:
    out = []
    for n in g.gm.graph.nodes:
        m = get_meta(n)
        prec = ", ".join(f"{k}={v}" for k, v in m.precision.items()) or "-"
        shape = "x".join(map(str, m.out_shape)) if isinstance(m.out_shape, tuple) else _fmt(m.out_shape)
        out.append([m.name, m.op_type, m.target, shape, _fmt(m.macs), _fmt(m.flops), _fmt(m.params), prec])
    return out


def totals(g: QGraph) -> dict[str, int]:
    t = {"nodes": 0, "macs": 0, "flops": 0, "params": 0}
    for m in g.metas():
        t["nodes"] += 1
        for k in ("macs", "flops", "params"):
            t[k] += getattr(m, k) or 0
    return t


def to_table(g: QGraph, tablefmt: str = "simple") -> str:
    """Per-node table plus a totals line."""
    t = totals(g)
    body = tabulate(rows(g), headers=COLUMNS, tablefmt=tablefmt)
    return (
        f"{body}\n\ntotal: {t['nodes']} nodes, {t['macs']:,} MACs, "
        f"{t['flops']:,} FLOPs, {t['params']:,} params  (analyses: {', '.join(sorted(g.analyses)) or 'none'})"
    )


def to_dict(g: QGraph) -> dict[str, Any]:
    return {
        "analyses": sorted(g.analyses),
        "totals": totals(g),
        "nodes": [get_meta(n).to_dict() for n in g.gm.graph.nodes],
        "edges": [[a.name, n.name] for n in g.gm.graph.nodes for a in n.all_input_nodes],
    }


def to_json(g: QGraph, indent: int = 1) -> str:
    return json.dumps(to_dict(g), indent=indent)


def to_networkx(g: QGraph) -> nx.DiGraph:
    """DiGraph with one vertex per node (attributes: the metadata fields) and data edges."""
    dg = nx.DiGraph()
    for n in g.gm.graph.nodes:
        dg.add_node(n.name, **get_meta(n).to_dict())
    for n in g.gm.graph.nodes:
        for a in n.all_input_nodes:
            dg.add_edge(a.name, n.name)
    return dg
