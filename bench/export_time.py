"""Export + verification time per format for jsc-s (digits, every node quantized, 360 test samples).

Prints, per format, the time to write the export and the time for the target tool's own executor to
run the test split, beside one forward of the project's quantized graph (the ratio column).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from qfx.graph import trace
from qfx.passes.analysis import analyze
from qfx.passes.export.api import export, verify
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train


def main() -> None:
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    torch.manual_seed(0)
    m = build_model("jsc-s", ds.num_features, ds.num_classes)
    train(m, ds, epochs=5, progress=False)
    g = analyze(trace(m.eval(), ds.test.x[:8]))
    c = {
        "name": "integer",
        "data_in_width": 8,
        "data_in_frac_width": 4,
        "weight_width": 6,
        "weight_frac_width": 4,
        "bias_width": 8,
        "bias_frac_width": 4,
    }
    q = QuantizePass({"by": "type", **{t: c for t in set(quantizable_nodes(g).values())}})(g).graph
    x = ds.test.x
    t0 = time.perf_counter()
    with torch.no_grad():
        q(x)
    ours = time.perf_counter() - t0
    print(f"jsc-s, {len(x)} test samples; project forward {ours * 1e3:.2f} ms")
    print(f"{'format':10s} {'export s':>9s} {'verify s':>9s} {'verify/forward':>15s}  bit-identical")
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("torch", "onnx-qdq", "qonnx", "hls4ml"):
            t0 = time.perf_counter()
            e = export(q, fmt, Path(d) / fmt, batch=len(x) if fmt == "qonnx" else None)
            t1 = time.perf_counter()
            a = verify(e, q, x)
            t2 = time.perf_counter()
            print(f"{fmt:10s} {t1 - t0:9.2f} {t2 - t1:9.2f} {(t2 - t1) / ours:15.0f}x  {a['bit_identical']}")


if __name__ == "__main__":
    main()
