"""Export + verification time per format, as ``qfx export`` runs them: jsc-toy and jsc-s (digits, every node
quantized), verified on 1,000 rows (the test split, then saturating noise).

Prints, per model and format, the time to write the export, the time for the target tool's own executor to
verify all rows (qonnx: a batched twin plus the shipped batch-1 file on 32 rows; hls4ml and Verilog include
their compiles: g++ of the C simulation, Verilator + g++ of the RTL), and the ratio to one forward of the
project's quantized graph on the same rows. Goal (issue 31): verification <= 2 s per format except the
compiles.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from qfx.graph import trace
from qfx.passes.analysis import analyze
from qfx.passes.export.api import export, verification_inputs, verify
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

FORMATS = ("torch", "onnx-qdq", "qonnx", "hls4ml", "vhdl", "verilog")


def _graph(name: str, ds: object) -> object:
    torch.manual_seed(0)
    m = build_model(name, ds.num_features, ds.num_classes)  # type: ignore[attr-defined]
    train(m, ds, epochs=5, progress=False)
    g = analyze(trace(m.eval(), ds.test.x[:8]))  # type: ignore[attr-defined]
    c = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 6,
         "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}  # fmt: skip
    return QuantizePass({"by": "type", **{t: c for t in set(quantizable_nodes(g).values())}})(g).graph


def main() -> None:
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    x = verification_inputs(ds.test.x, 1000)
    formats = sys.argv[1].split(",") if len(sys.argv) > 1 else FORMATS
    head = f"{'model':8s} {'format':9s} {'export s':>9s} {'verify s':>9s} {'verify/forward':>15s}"
    print(head + "  checked by; bit-identical")
    for name in ("jsc-toy", "jsc-s"):
        q = _graph(name, ds)
        t0 = time.perf_counter()
        with torch.no_grad():
            q(x)  # type: ignore[operator]
        ours = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            for fmt in formats:
                t0 = time.perf_counter()
                e = export(q, fmt, Path(d) / fmt)  # type: ignore[arg-type]
                t1 = time.perf_counter()
                a = verify(e, q, x)  # type: ignore[arg-type]
                t2 = time.perf_counter()
                print(f"{name:8s} {fmt:9s} {t1 - t0:9.2f} {t2 - t1:9.2f} {(t2 - t1) / ours:15.0f}x  "
                      f"{a['checked_by']}; {a['bit_identical']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
