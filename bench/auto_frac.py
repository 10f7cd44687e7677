"""Accuracy at uniform widths with frac = "NA" (width // 2) vs "auto" (calibrated: max, percentile, MSE).

Every quantizable node of the model (weights, biases, activations) at one width; calibration on 512 training
samples; accuracy on the digits test split. FP32 for reference. Prints a table (markdown).

    python bench/auto_frac.py
"""

from __future__ import annotations

import time

import torch
from tabulate import tabulate

from qfx.graph import trace
from qfx.passes.analysis import CalibrationPass, analyze
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import evaluate, train

WIDTHS = (3, 4, 6, 8)
METHODS = ("max", "percentile", "mse")


def uniform(types: set[str], w: int, frac: str) -> dict:
    cfg = {"name": "integer", **{f"{r}_width": w for r in ("data_in", "weight", "bias")},
           **{f"{r}_frac_width": frac for r in ("data_in", "weight", "bias")}}  # fmt: skip
    return {"by": "type", **{t: {"config": cfg} for t in types}}


def run(model_name: str, epochs: int) -> list[list[str]]:
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(model_name, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
    train(model, ds, epochs=epochs, progress=False)
    model.eval()
    g = analyze(trace(model, ds.val.x[:8]))
    types = set(quantizable_nodes(g).values())
    fp = evaluate(g.gm, ds.test, ds.num_classes)["accuracy"]
    rows = []
    graphs = {}
    for m in METHODS:
        graphs[m] = g.copy()
        CalibrationPass(ds.train.x[:512], method=m)(graphs[m])
    for w in WIDTHS:
        accs = {"NA": evaluate(QuantizePass(uniform(types, w, "NA"))(g).graph.gm, ds.test, ds.num_classes)["accuracy"]}
        for m in METHODS:
            q = QuantizePass(uniform(types, w, "auto"))(graphs[m]).graph
            accs[m] = evaluate(q.gm, ds.test, ds.num_classes)["accuracy"]
        best = max(accs[m] for m in METHODS)
        rows.append([model_name, w, f"{100 * fp:.1f}", *(f"{100 * accs[k]:.1f}" for k in ("NA", *METHODS)),
                     f"{100 * (best - accs['NA']):+.1f}", f"{100 * (accs['mse'] - fp):+.1f}"])  # fmt: skip
    return rows


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = run("jsc-s", 60) + run("cnn", 30)
    headers = ["model", "width", "FP32 %", "NA %", "auto max %", "auto pct %", "auto mse %", "best auto - NA",
               "auto mse (default) - FP32"]  # fmt: skip
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print(f"\n({time.perf_counter() - t0:.0f} s; digits test split, 360 samples; every quantizable node at the width)")


if __name__ == "__main__":
    main()
