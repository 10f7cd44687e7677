"""Views of an annotated (quantized) graph: SQNR-along-the-graph PNG, DOT text, Model Explorer.

Model Explorer files are built with ``model_explorer``'s own ``graph_builder`` and
``node_data_builder``: ``graph.json`` (its JSON graph format: a list of collections with
``subgraphs``) plus one ``node_data_<metric>.json`` overlay per metric, coloured by value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qfx.graph.meta import get_meta
from qfx.graph.trace import QGraph
from qfx.passes.debug.numerics import saturation

SQNR_CAP = 150.0  # where "exact" (no error) is drawn


def _sqnr(stats: Any) -> float | None:
    if not stats or "sqnr_db" not in stats:
        return None
    return SQNR_CAP if stats.get("exact") else stats["sqnr_db"]


def plot_sqnr(graphs: QGraph | Mapping[str, QGraph], path: str | Path, title: str = "", worst: int = 3) -> Path:
    """SQNR (dB) per node in topological order: one line per graph (a mapping label -> graph draws several on
    one axis, e.g. a search's distinct best configurations); saturating nodes circled; the ``worst`` inexact
    nodes of the first graph named."""
    from matplotlib.figure import Figure

    lines = {"output SQNR vs float": graphs} if isinstance(graphs, QGraph) else dict(graphs)
    per: dict[str, dict[str, tuple[float, float]]] = {}
    order: dict[str, None] = {}  # nodes with an SQNR in any graph, in the first graph's topological order
    for label, g in lines.items():
        per[label] = {m.name: (s, saturation(dict(m.numerics or {}))) for m in g.metas()
                      if (s := _sqnr(m.numerics)) is not None}  # fmt: skip
        order.update(dict.fromkeys(per[label]))
    names = list(order)
    xs = {n: i for i, n in enumerate(names)}
    fig = Figure(figsize=(max(6.0, 0.35 * len(names)), 4.2))
    ax = fig.add_subplot()
    for i, (label, pts) in enumerate(per.items()):
        named = " (weakest named)" if i == 0 and len(per) > 1 and worst else ""
        ax.plot([xs[n] for n in pts], [s for s, _ in pts.values()], "-o", color=f"C{i}", ms=4, label=label + named)
    sat = [(xs[n], s, v) for pts in per.values() for n, (s, v) in pts.items() if v > 0]
    if sat:
        ax.scatter([x for x, _, _ in sat], [s for _, s, _ in sat], s=[30 + 400 * v for _, _, v in sat],
                   facecolors="none", edgecolors="tab:red", label="saturating (size: fraction)")  # fmt: skip
    first = next(iter(lines.values()), None)
    exact = {m.name for m in first.metas() if (m.numerics or {}).get("exact")} if first is not None else set()
    inexact = [(n, s) for n, (s, _) in next(iter(per.values()), {}).items() if n not in exact]  # never "weakest"
    for rank, (name, s) in enumerate(sorted(inexact, key=lambda t: t[1])[:worst]):
        x = xs[name]
        right = x > (len(xs) - 1) / 2  # labels of right-half points extend leftwards: never cut at the edge
        ax.annotate(f"{name}: {s:.1f} dB", (x, s), textcoords="offset points", xytext=(-6 if right else 6,
                    10 + 22 * rank), ha="right" if right else "left", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
    capped = any(s >= SQNR_CAP for pts in per.values() for s, _ in pts.values())
    ax.set_ylabel("SQNR vs float (dB)" + (f"; exact nodes drawn at {SQNR_CAP:.0f}" if capped else ""))
    ax.set_title(title or "quantization error along the graph", fontsize=10, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    return p


def _label(graph: QGraph, name: str) -> list[str]:
    m = graph.meta(name)
    lines = [f"{m.name}: {m.op_type}"]
    if isinstance(m.out_shape, tuple) and all(isinstance(i, int) for i in m.out_shape):
        lines.append("x".join(map(str, m.out_shape)))
    if m.precision:
        lines.append(", ".join(f"{k}={v}" for k, v in m.precision.items()))
    s = _sqnr(m.numerics)
    if s is not None:
        lines.append("exact" if (m.numerics or {}).get("exact") else f"SQNR {s:.1f} dB")
    return lines


def dot_string(s: str) -> str:
    """``s`` as a DOT double-quoted string body: backslashes, quotes and line breaks escaped, so text read
    from a file (meta.json) cannot end the string or add statements."""
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")


def to_dot(graph: QGraph) -> str:
    """Graphviz DOT text: one box per node (op type, shape, precision, SQNR), data edges."""
    out = ["digraph qfx {", "  rankdir=TB;", '  node [shape=box, fontsize=10, fontname="Helvetica"];']
    for n in graph.gm.graph.nodes:
        m = get_meta(n)
        label = "\\n".join(dot_string(s) for s in _label(graph, n.name))
        color = "lightblue" if m.quantized else "white"
        out.append(f'  "{dot_string(n.name)}" [label="{label}", style=filled, fillcolor={color}];')
    for n in graph.gm.graph.nodes:
        for a in n.all_input_nodes:
            out.append(f'  "{dot_string(a.name)}" -> "{dot_string(n.name)}";')
    out.append("}")
    return "\n".join(out) + "\n"


def write_dot(graph: QGraph, path: str | Path) -> list[Path]:
    """Write ``.dot`` and, when Graphviz ``dot`` is installed, the rendered ``.svg``."""
    p = Path(path)
    p.write_text(to_dot(graph))
    written = [p]
    if shutil.which("dot"):
        svg = p.with_suffix(".svg")
        subprocess.run(["dot", "-Tsvg", str(p), "-o", str(svg)], check=True, capture_output=True)
        written.append(svg)
    return written


# ---- Model Explorer -----------------------------------------------------------------------------
METRICS: dict[str, str] = {
    "sqnr_db": "output SQNR vs float (dB)",
    "max_abs_err": "max |error| vs float",
    "saturated": "largest saturating fraction of a quantized tensor",
    "bits": "widest quantized width",
    "flops": "FLOPs",
    "params": "parameters",
}


def _attr_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def me_graph(graph: QGraph, graph_id: str = "qfx") -> Any:
    """The graph as a ``model_explorer.graph_builder.Graph`` (metadata as node attributes)."""
    from model_explorer import graph_builder as gb

    nodes = []
    for n in graph.gm.graph.nodes:
        m = get_meta(n)
        attrs = [gb.KeyValue(key=k, value=_attr_value(v)) for k, v in m.to_dict().items() if v not in (None, {}, [])]
        edges = [
            gb.IncomingEdge(sourceNodeId=a.name, targetNodeInputId=str(i)) for i, a in enumerate(n.all_input_nodes)
        ]
        outs = []
        if isinstance(m.out_shape, tuple):
            shape = [
                gb.KeyValue(key="shape", value=str(list(m.out_shape))),
                gb.KeyValue(key="dtype", value=str(m.out_dtype)),
            ]
            outs = [gb.MetadataItem(id="0", attrs=shape)]
        nodes.append(gb.GraphNode(id=n.name, label=m.op_type, attrs=attrs, incomingEdges=edges, outputsMetadata=outs))
    return gb.Graph(id=graph_id, nodes=nodes)


def me_node_data(graph: QGraph) -> dict[str, Any]:
    """One ``ModelNodeData`` overlay per metric that some node has (coloured low -> high)."""
    from model_explorer import node_data_builder as ndb

    values: dict[str, dict[str, float]] = {k: {} for k in METRICS}
    for m in graph.metas():
        s = dict(m.numerics or {})
        sq = _sqnr(s)
        if sq is not None:
            values["sqnr_db"][m.name] = sq
        if "max_abs_err" in s:
            values["max_abs_err"][m.name] = s["max_abs_err"]
        if m.precision:
            values["saturated"][m.name] = saturation(s)
            values["bits"][m.name] = max(p.width for p in m.precision.values())
        if m.flops is not None:
            values["flops"][m.name] = m.flops
        if m.params:
            values["params"][m.name] = m.params
    out = {}
    for metric, vals in values.items():
        if not vals:
            continue
        lo, hi = min(vals.values()), max(vals.values())
        good_low = metric in ("max_abs_err", "saturated")  # red where bad
        colors = ("#2ca02c", "#d62728") if good_low else ("#d62728", "#2ca02c")
        gradient = [ndb.GradientItem(stop=0, bgColor=colors[0]), ndb.GradientItem(stop=1, bgColor=colors[1])]
        results = {k: ndb.NodeDataResult(value=v) for k, v in vals.items()}
        gdata = ndb.GraphNodeData(results=results, gradient=gradient if hi > lo else [])
        out[metric] = ndb.ModelNodeData(graphsData={"qfx": gdata})
    return out


def write_model_explorer(graph: QGraph, directory: str | Path, label: str = "qfx") -> dict[str, Path]:
    """``graph.json`` (Model Explorer's JSON graph format) and ``node_data_<metric>.json`` files."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    g = me_graph(graph)
    files = {"graph": d / "graph.json"}
    files["graph"].write_text(json.dumps([{"label": label, "subgraphs": [dataclasses.asdict(g)]}]))
    for metric, data in me_node_data(graph).items():
        files[metric] = d / f"node_data_{metric}.json"
        data.save_to_file(str(files[metric]))
    return files


def model_explorer_config(graph: QGraph, name: str = "qfx") -> Any:
    """A ``ModelExplorerConfig`` serving the graph (built in memory) and its overlays."""
    import importlib

    mec = importlib.import_module("model_explorer.config")  # the package's ``config`` name is a function
    cfg = mec.ModelExplorerConfig()
    cfg.graphs_list.append({"graphs": [me_graph(graph)]})
    cfg.model_sources.append({"url": f"graphs://{name}/0"})
    for metric, data in me_node_data(graph).items():
        cfg.add_node_data(f"{metric}: {METRICS[metric]}", data)
    return cfg


def serve(graph: QGraph, host: str = "localhost", port: int = 8080, open_browser: bool = True) -> None:
    """Start Model Explorer's local server on the graph (blocks until Ctrl-C)."""
    from model_explorer import server

    server.start(host=host, port=port, config=model_explorer_config(graph), no_open_in_browser=not open_browser)


def worst_nodes(graph: QGraph, k: int = 3) -> list[dict[str, Any]]:
    """The ``k`` nodes with the lowest output SQNR (exact nodes never listed)."""
    rows = [(m.numerics["sqnr_db"], m.name) for m in graph.metas()
            if m.numerics and m.numerics.get("sqnr_db") is not None and not m.numerics.get("exact")]  # fmt: skip
    rows.sort(key=lambda t: t[0] if not math.isinf(t[0]) else -1e9)
    return [{"node": n, "sqnr_db": round(s, 2)} for s, n in rows[:k]]
