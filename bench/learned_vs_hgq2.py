"""qfx learned precision vs HGQ2: identical splits, architecture and cost model, fronts side by side.

Both tools train jsc-s (64-64-32-32-10 with batch norms) on the bundled digits splits (train 1,149 / val 288 /
test 360). Each keeps its Pareto epochs (validation accuracy up, EBOPs down) over a beta ramp; every kept point
is converted through da4ml 0.6 (qfx: ``fpga_cost``, the logic ``qfx export --format verilog`` writes; HGQ2:
``da4ml.converter.trace_model`` after ``trace_minmax`` on the training split) and reported with its *test*
accuracy (qfx: the quantized graph, bit-identical to its RTL; HGQ2: da4ml's interpreter of its logic), da4ml
LUTs and adder depth. Then, for every HGQ2 point, the smallest qfx point at no lower test accuracy (one test
row of slack) and the ratio of their LUTs. ``--yosys N`` adds Yosys ``synth_xilinx`` LUTs for N points of each.

HGQ2 is optional (``pip install 'qfx[bench]'``: hgq2, keras, jax); without it only qfx's front is printed.

    python bench/learned_vs_hgq2.py [--seeds 0,1,2] [--epochs 600] [--plot learned_vs_hgq2.png]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KERAS_BACKEND", "jax")  # HGQ2 runs on Keras 3; jax is its CPU backend here

from qfx.graph.trace import trace
from qfx.hw.fpga import fpga_cost
from qfx.passes.analysis import analyze
from qfx.passes.transforms.learn_precision import LearnConfig, learn_precision
from qfx.zoo.data import Dataset, load_dataset
from qfx.zoo.models import _wide, build_model
from qfx.zoo.train import train


@dataclass
class Point:
    tool: str
    seed: int
    epoch: int
    val: float
    test: float
    ebops: float
    luts: float
    depth: float
    yosys: float | None = None
    handle: object = None
    width: float = 1.0  # hidden-width multiplier of jsc-s (0.375: 24-12-12)


def qfx_front(ds: Dataset, seed: int, cfg: LearnConfig, width: float = 1.0) -> list[Point]:
    torch.manual_seed(seed)
    m = build_model("jsc-s", ds.num_features, ds.num_classes, width=width)
    train(m, ds, 60, 32, 1e-2, seed, False, 0.0)  # the float model `qfx search --config jsc_s_fpga` starts from
    g = analyze(trace(m, ds.val.x[:8]))
    res = learn_precision(g, ds.train, ds.val, cfg.model_copy(update={"seed": seed}), progress=False)
    out = []
    for rec in res.front:
        q = res.graph(rec.epoch)
        with torch.no_grad():
            test = float((q(ds.test.x).argmax(1) == ds.test.y).float().mean())
        luts, depth = fpga_cost(q)
        out.append(Point("qfx", seed, rec.epoch, rec.val_accuracy, test, rec.ebops, luts, depth, handle=q, width=width))
    return out


def hgq2_front(ds: Dataset, seed: int, epochs: int, beta0: float, beta1: float, width: float = 1.0) -> list[Point]:
    import keras
    from da4ml.converter import trace_model
    from da4ml.trace import comb_trace
    from hgq.config import LayerConfigScope, QuantizerConfigScope
    from hgq.layers import QBatchNormDense, QDense
    from hgq.utils import trace_minmax
    from hgq.utils.sugar import BetaScheduler

    keras.utils.set_random_seed(seed)
    with QuantizerConfigScope(place="all"), LayerConfigScope(enable_ebops=True, beta0=beta0):
        inp = keras.Input((ds.num_features,))
        x = inp
        for units in _wide((64, 32, 32), width):  # jsc-s's hidden sizes, as the zoo scales them
            x = QBatchNormDense(units, activation="relu")(x)
        model = keras.Model(inp, QDense(ds.num_classes)(x))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])  # fmt: skip
    xs = {s: ds.split(s).x.numpy() for s in ("train", "val", "test")}
    ys = {s: ds.split(s).y.numpy() for s in ("train", "val", "test")}
    kept: dict[int, tuple[float, float, list]] = {}

    class Front(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            acc = float(np.mean(np.argmax(self.model.predict(xs["val"], verbose=0), 1) == ys["val"]))
            eb = float(sum(float(lay.ebops) for lay in self.model.layers if hasattr(lay, "ebops")))
            if not any(a >= acc and e <= eb and (a > acc or e < eb) for a, e, _ in kept.values()):
                for k in [k for k, (a, e, _) in kept.items() if acc >= a and eb <= e]:
                    del kept[k]
                kept[epoch] = (acc, eb, [w.copy() for w in self.model.get_weights()])

    ramp = BetaScheduler(
        lambda ep: float(np.exp(np.log(beta0) + (np.log(beta1) - np.log(beta0)) * ep / max(epochs - 1, 1)))
    )
    model.fit(xs["train"], ys["train"], batch_size=64, epochs=epochs, verbose=0, callbacks=[ramp, Front()])
    out = []
    for ep, (acc, eb, weights) in sorted(kept.items()):
        model.set_weights(weights)
        trace_minmax(model, xs["train"], verbose=0)
        inp_v, out_v = trace_model(model)
        comb = comb_trace(inp_v, out_v)
        test = float(np.mean(np.argmax(comb.predict(xs["test"].astype(np.float64), n_threads=1), 1) == ys["test"]))
        out.append(
            Point("hgq2", seed, ep, acc, test, eb, float(comb.cost), float(comb.latency[1]), handle=comb, width=width)
        )
    return out


def yosys_luts(p: Point) -> float | None:
    """Yosys synth_xilinx LUTs of the point's Verilog (None without yosys)."""
    import shutil

    from qfx.passes.export.api import export
    from qfx.passes.export.da4ml_backend import Traced, synth, write_project

    if shutil.which("yosys") is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        if p.tool == "qfx":
            export(p.handle, "verilog", d)  # type: ignore[arg-type]
        else:
            write_project(Traced(p.handle, None, (), ()), d, "verilog")  # type: ignore[arg-type]
        return float(synth(Path(d))["LUT"])


def table(points: list[Point]) -> str:
    from tabulate import tabulate

    rows = [(p.tool, f"{p.width:g}", p.seed, p.epoch, f"{p.val:.3f}", f"{p.test:.3f}", f"{p.ebops:,.0f}",
             f"{p.luts:,.0f}", f"{p.depth:g}", "" if p.yosys is None else f"{p.yosys:,.0f}")
            for p in points]  # fmt: skip
    return tabulate(
        rows, ["tool", "width", "seed", "epoch", "val acc", "test acc", "EBOPs", "da4ml LUTs", "depth", "Yosys LUTs"]
    )


def domination(qfx: list[Point], hgq: list[Point], slack: float) -> list[str]:
    lines = []
    for h in sorted(hgq, key=lambda p: p.luts):
        ok = [q for q in qfx if q.test >= h.test - slack]
        best = min(ok, key=lambda q: q.luts, default=None)
        if best is None:
            lines.append(f"hgq2 {h.test:.3f} @ {h.luts:,.0f} LUTs depth {h.depth:g}: no qfx point that accurate")
        else:
            lines.append(
                f"hgq2 {h.test:.3f} @ {h.luts:,.0f} LUTs depth {h.depth:g}: qfx {best.test:.3f} @ {best.luts:,.0f} "
                f"LUTs depth {best.depth:g} = {best.luts / h.luts:.2f}x LUTs"
            )
    return lines


CAPS = (5_000, 9_800, 19_500)  # the LUT caps (goal: >= 87.5%, 94.7%, 96.4% test accuracy, depth <= 32)


def under_caps(points: list[Point]) -> str:
    """Per tool and LUT cap, the most accurate point (test split) that fits, with its width, LUTs and depth."""
    from tabulate import tabulate

    rows = []
    for tool in dict.fromkeys(p.tool for p in points):
        for cap in CAPS:
            fit = [p for p in points if p.tool == tool and p.luts <= cap]
            b = max(fit, key=lambda p: (p.test, -p.luts), default=None)
            rows.append([tool, f"<= {cap:,}"] + (["-"] * 5 if b is None else
                        [f"{b.test:.1%}", f"{b.luts:,.0f}", f"{b.depth:g}", f"{b.width:g}", b.seed]))  # fmt: skip
    return tabulate(rows, ["tool", "LUT cap", "best test acc", "da4ml LUTs", "depth", "width", "seed"])


def plot(points: list[Point], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for tool, mark in (("qfx", "o"), ("hgq2", "s")):
        pts = sorted((p for p in points if p.tool == tool), key=lambda p: p.luts)
        if pts:
            ax.plot(
                [p.luts for p in pts], [p.test for p in pts], mark, label=f"{tool} (front epochs, all seeds)", alpha=0.7
            )
    ax.set_xlabel("da4ml LUTs (whole network)")
    ax.set_ylabel("test accuracy")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--beta0", type=float, default=1e-5)
    ap.add_argument("--beta1", type=float, default=3e-3)
    ap.add_argument("--hgq-beta0", type=float, default=1e-7)
    ap.add_argument("--hgq-beta1", type=float, default=1e-4)
    ap.add_argument("--yosys", type=int, default=0, help="Yosys LUTs for this many points of each tool")
    ap.add_argument("--plot", default="learned_vs_hgq2.png")
    ap.add_argument("--no-hgq2", action="store_true")
    ap.add_argument("--widths", default="1.0", help="hidden-width multipliers of jsc-s, each trained by both tools "
                    "(the fronts pool them): e.g. 1.0,0.375")  # fmt: skip
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("digits", seed=0)
    cfg = LearnConfig(epochs=a.epochs, beta_start=a.beta0, beta=a.beta1, overflow="wrap", round="half_up")
    points: list[Point] = []
    for width in (float(w) for w in a.widths.split(",")):
        for seed in (int(s) for s in a.seeds.split(",")):
            t = time.perf_counter()
            points += qfx_front(ds, seed, cfg, width)
            print(f"qfx width {width:g} seed {seed}: {time.perf_counter() - t:.0f} s (float training, learning, "
                  "da4ml per front point)", flush=True)  # fmt: skip
            if a.no_hgq2:
                continue
            try:
                import hgq  # noqa: F401
            except ImportError:
                print("hgq2 is not installed (pip install 'qfx[bench]'): HGQ2's front is skipped")
                a.no_hgq2 = True
                continue
            t = time.perf_counter()
            points += hgq2_front(ds, seed, a.epochs, a.hgq_beta0, a.hgq_beta1, width)
            print(f"hgq2 width {width:g} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    for tool in ("qfx", "hgq2"):
        pts = sorted((p for p in points if p.tool == tool), key=lambda p: p.luts)
        for p in pts[:: max(1, len(pts) // max(a.yosys, 1))][: a.yosys]:
            p.yosys = yosys_luts(p)
    print(table(sorted(points, key=lambda p: (p.tool, p.luts))))
    slack = 1.0 / len(ds.test)
    hgq = [p for p in points if p.tool == "hgq2"]
    if hgq:
        print("\nfor each HGQ2 point, the smallest qfx point at no lower test accuracy (one test row of slack):")
        print("\n".join(domination([p for p in points if p.tool == "qfx"], hgq, slack)))
    print("\nthe most accurate point under each LUT cap:\n" + under_caps(points))
    plot(points, a.plot)
    print(f"\nplot: {a.plot}")


if __name__ == "__main__":
    main()
