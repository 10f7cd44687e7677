"""Accuracy at uniform widths with frac = "NA" (width // 2) vs "auto" (calibrated: max, percentile, MSE).

Every quantizable node of the model (weights, biases, activations) at one width; calibration on 512 training
samples; accuracy on the digits test split. FP32 for reference. Prints a table (markdown).

    python bench/auto_frac.py [--seeds 3]
"""

from __future__ import annotations

import argparse
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


def accuracies(model_name: str, epochs: int, seed: int) -> dict[tuple[int, str], float]:
    """(width, "FP32" | "NA" | method) -> test accuracy of one model trained from ``seed``."""
    ds = load_dataset("digits")
    torch.manual_seed(seed)
    model = build_model(model_name, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
    train(model, ds, epochs=epochs, progress=False)
    model.eval()
    g = analyze(trace(model, ds.val.x[:8]))
    types = set(quantizable_nodes(g).values())
    acc = {(0, "FP32"): evaluate(g.gm, ds.test, ds.num_classes)["accuracy"]}
    graphs = {}
    for m in METHODS:
        graphs[m] = g.copy()
        CalibrationPass(ds.train.x[:512], method=m, targets=ds.train.y[:512])(graphs[m])
    for w in WIDTHS:
        acc[w, "NA"] = evaluate(QuantizePass(uniform(types, w, "NA"))(g).graph.gm, ds.test, ds.num_classes)["accuracy"]
        for m in METHODS:
            q = QuantizePass(uniform(types, w, "auto"))(graphs[m]).graph
            acc[w, m] = evaluate(q.gm, ds.test, ds.num_classes)["accuracy"]
    return acc


def run(model_name: str, epochs: int, seeds: int) -> list[list[str]]:
    runs = [accuracies(model_name, epochs, s) for s in range(seeds)]
    mean = {k: 100 * sum(r[k] for r in runs) / seeds for k in runs[0]}
    fp = mean[0, "FP32"]
    rows = []
    for w in WIDTHS:
        worse = sum(r[w, "mse"] < r[w, "NA"] for r in runs)
        accs = [f"{mean[w, k]:.1f}" for k in ("NA", *METHODS)]
        gain, loss = mean[w, "mse"] - mean[w, "NA"], mean[w, "mse"] - fp
        rows.append([model_name, w, f"{fp:.1f}", *accs, f"{gain:+.1f}", f"{worse}/{seeds}", f"{loss:+.1f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="models trained per architecture (means are printed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = run("jsc-s", 60, args.seeds) + run("cnn", 30, args.seeds)
    headers = ["model", "width", "FP32 %", "NA %", "auto max %", "auto pct %", "auto mse %", "mse - NA",
               "seeds mse < NA", "mse (default) - FP32"]  # fmt: skip
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print(
        f"\n({time.perf_counter() - t0:.0f} s; mean over {args.seeds} trained models; digits test split, 360 "
        "samples; every quantizable node at the width; calibration on 512 training samples)"
    )


if __name__ == "__main__":
    main()
