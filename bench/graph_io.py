"""Save + validated load of a quantized graph vs the analysis of the same graph, on growing MLPs.

Prints, per size, the analysis time (trace + shapes/FLOPs/params), save, load (schema validation,
allowlists, rebuild) and the ratio (save + load) / analysis measured in this run.
Goal (issue 19): the ratio at or below 1x for a 20,002-node graph.
Run: python bench/graph_io.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from analysis_scale import mlp
from tabulate import tabulate

from qfx.graph import QGraph, trace
from qfx.passes.analysis import analyze
from qfx.passes.transforms.quantize import QuantizePass

CFG = {
    "by": "type",
    "linear": {"name": "integer", "weight_width": 8, "data_in_width": 8, "bias_width": 8},
    "relu": {"name": "integer", "data_in_width": 8},
}


def main() -> None:
    sizes = [100, 1000] if "--quick" in sys.argv else [100, 1000, 10000]
    rows = []
    for layers in sizes:
        torch.manual_seed(0)
        m, x = mlp(layers, 16), torch.randn(4, 16)
        t = time.perf_counter()
        g = analyze(trace(m, x))
        ta = time.perf_counter() - t
        q = QuantizePass(CFG)(g).graph
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            q.save(Path(d) / "g")
            ts = time.perf_counter() - t
            t = time.perf_counter()
            back = QGraph.load(Path(d) / "g")
            tl = time.perf_counter() - t
        with torch.no_grad():
            assert torch.equal(back(x), q(x))
        rows.append([len(q.nodes), f"{ta:.2f}", f"{ts:.2f}", f"{tl:.2f}", f"{(ts + tl) / ta:.2f}x"])
        print(tabulate(rows, headers=["nodes", "analysis s", "save s", "load s", "(save+load)/analysis"]), flush=True)
        print()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
