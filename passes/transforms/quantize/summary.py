"""Summary of a quantized graph: per-node table and per-op-type histogram (text and CSV)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass

from tabulate import tabulate

from qfx.graph.meta import get_meta
from qfx.graph.trace import QGraph
from qfx.passes.base import Pass, PassResult

NODE_COLS = ["node", "op", "original type", "quantized type", "data_in", "weight", "bias"]
HIST_COLS = ["op type", "total", "changed", "unchanged"]


def _csv(header: list[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


@dataclass(frozen=True)
class SummaryPass(Pass):
    """Reads node metadata (op type, quantized type, precision). Writes nothing.

    Info: ``nodes`` / ``histogram`` rows, ``text`` (two tabulate tables), ``nodes_csv``, ``histogram_csv``.
    """

    name = "quantize_summary"

    def run(self, graph: QGraph) -> PassResult:
        rows: list[list[object]] = []
        total: Counter[str] = Counter()
        changed: Counter[str] = Counter()
        for n in graph.gm.graph.nodes:
            if n.op not in ("call_module", "call_function", "call_method"):
                continue
            m = get_meta(n)
            p = m.precision
            rows.append(
                [
                    m.name,
                    n.op,
                    m.op_type,
                    m.quantized or "-",
                    *(str(p[r]) if r in p else "-" for r in ("data_in", "weight", "bias")),
                ]
            )
            total[m.op_type] += 1
            changed[m.op_type] += bool(m.quantized)
        hist = [[t, total[t], changed[t], total[t] - changed[t]] for t in sorted(total)]
        text = (
            tabulate(rows, headers=NODE_COLS, tablefmt="github")
            + "\n\n"
            + tabulate(hist, headers=HIST_COLS, tablefmt="github")
        )
        info = {
            "nodes": rows,
            "histogram": hist,
            "text": text,
            "nodes_csv": _csv(NODE_COLS, rows),
            "histogram_csv": _csv(HIST_COLS, hist),
        }
        return PassResult(graph, False, info)
