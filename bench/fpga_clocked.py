"""RTL at a clock: what the delay model predicts against what synthesis and place-and-route measure.

For each design and clock target (combinational, 10, 5, 2.5 ns) the graph is exported as `qfx export --clock-ns`
writes it and measured three ways: da4ml's estimate as the search metrics see it (``hw.fpga.fpga_timing``: LUTs,
register bits, stages, latency in ns by the delay model), Yosys ``synth_xilinx`` (LUT, FF) and, where the design
fits an iCE40 HX8K, yosys ``synth_ice40`` + nextpnr-ice40's timing analysis (achieved Fmax; the achieved latency =
stages / Fmax). Designs: a 64-8-10 MLP at 4 bits (fits an iCE40) and jsc-s at 3-bit weights / 4-bit inputs
(trained briefly on digits, fracs calibrated). Prints one table and writes bench/fpga_clocked.png.
Then (``--rank N``): N random jsc-s configurations (the widths of configs/jsc_s_fpga_clocked.toml per layer) at
10, 5 and 2.5 ns: the search metrics (fpga_luts, fpga_ffs, fpga_latency_cycles) against Yosys synth_xilinx LUT/FF
of the exported pipeline (Spearman rank correlation per clock) and the cycles of da4ml's own pipeline; and
(``--search T``): T trials of the clocked config (NSGA-II, accuracy vs fpga_luts under the 40 ns budget), twice in one
process (seed 0 with the per-layer trace cache cold, then seed 1 with it warm), against the same search scored by
average_bitwidth: median seconds per evaluated trial of each, their ratio and the layer cache's hit rate.
Run: python bench/fpga_clocked.py [--quick] [--rank N] [--search T]   (--quick: the MLP only)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from qfx.graph import trace
from qfx.hw.fpga import fpga_timing
from qfx.passes.analysis import analyze
from qfx.passes.analysis.calibrate import CalibrationPass
from qfx.passes.export.api import export
from qfx.passes.export.da4ml_backend import synth
from qfx.passes.export.pnr import ICE40_LCS, ice40_fmax
from qfx.passes.transforms.quantize import QuantizePass
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

CLOCKS = [None, 10.0, 5.0, 2.5]


def designs(quick: bool) -> dict[str, object]:
    ds = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    train(mlp, ds, epochs=10, progress=False)
    cfg = {"name": "integer", "data_in_width": 4, "data_in_frac_width": 2, "weight_width": 4,
           "weight_frac_width": 3, "bias_width": 8}  # fmt: skip
    out = {"mlp 64-8-10 int4": QuantizePass({"default": cfg})(analyze(trace(mlp.eval(), ds.val.x[:8]))).graph}
    if not quick:
        m = build_model("jsc-s", ds.num_features, ds.num_classes)
        train(m, ds, epochs=20, progress=False)
        g = analyze(trace(m.eval(), ds.val.x[:8]))
        CalibrationPass(ds.train.x[:512])(g)  # "auto" fracs: recorded on the graph
        auto = {"name": "integer", "data_in_width": 4, "data_in_frac_width": "auto", "weight_width": 3,
                "weight_frac_width": "auto", "bias_width": 8, "bias_frac_width": "auto"}  # fmt: skip
        out["jsc-s w3/a4"] = QuantizePass({"default": auto})(g).graph
    return out


def measure(name: str, q: object, clock: float | None, work: Path) -> list[object]:
    t = fpga_timing(q, clock)  # type: ignore[arg-type]
    e = export(q, "verilog", work / f"{name}-{clock}".replace(" ", "_"), clock_ns=clock)  # type: ignore[arg-type]
    cells = synth(e.path)
    row = [name, "comb" if clock is None else f"{clock:g} ns", f"{t.luts:,.0f}", t.ffs, t.stages or "-",
           f"{t.latency_ns:.1f}", cells["LUT"], cells["FF"]]  # fmt: skip
    if t.luts / 1.0 > ICE40_LCS * 1.2:  # da4ml LUT6 count: a design this size needs more LUT4s than an HX8K has
        return [*row, "-", "-"]
    r = ice40_fmax(e.path, target_mhz=1000 / clock if clock else 50.0)
    cycles = max(t.stages, 1)
    return [*row, f"{r['fmax_mhz']:.1f}", f"{1000 * cycles / r['fmax_mhz']:.1f}"]


def plot(rows: list[list[object]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name]
        xs = [str(r[1]) for r in mine]
        ax1.plot(xs, [r[7] for r in mine], "o-", label=f"{name}: Yosys FF")
        ax1.plot(xs, [r[3] for r in mine], "x--", label=f"{name}: da4ml register bits")
        fm = [(x, float(r[8])) for x, r in zip(xs, mine, strict=True) if r[8] != "-"]
        if fm:
            ax2.plot([x for x, _ in fm], [v for _, v in fm], "o-", label=f"{name}: iCE40 Fmax (nextpnr)")
    ax1.set(xlabel="clock target", ylabel="flip-flops", title="Registers vs clock target")
    ax2.set(xlabel="clock target", ylabel="MHz", title="Achieved Fmax (iCE40 HX8K)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _jsc_s() -> object:
    ds = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    m = build_model("jsc-s", ds.num_features, ds.num_classes)
    train(m, ds, epochs=20, progress=False)
    g = analyze(trace(m.eval(), ds.val.x[:8]))
    return CalibrationPass(ds.train.x[:512])(g).graph


def rank(n: int, work: Path) -> None:
    """Random per-layer widths 2-6 (the clocked config's space): metrics vs Yosys at three clocks."""
    import random

    from scipy.stats import spearmanr

    from qfx.passes.transforms.quantize import quantizable_nodes

    g, rng, rows = _jsc_s(), random.Random(0), []
    for i in range(n):
        cfg: dict = {"by": "name"}
        for node in quantizable_nodes(g):
            cfg[node] = {"name": "integer", "data_in_width": rng.randint(2, 6), "data_in_frac_width": "auto",
                         "weight_width": rng.randint(2, 6), "weight_frac_width": "auto", "bias_width": 8,
                         "bias_frac_width": "auto"}  # fmt: skip
        q = QuantizePass(cfg)(g).graph
        for clock in (10.0, 5.0, 2.5):
            t0 = time.perf_counter()
            t = fpga_timing(q, clock)
            e = export(q, "verilog", work / f"r{i}-{clock}", clock_ns=clock)
            cells = synth(e.path)
            rows.append((clock, t.luts, t.ffs, t.stages, e.handle.pipeline.stages, cells["LUT"], cells["FF"]))
            print(f"  config {i} @ {clock:g} ns: {t.luts:,.0f} LUT est, {t.ffs:,} reg bits, {t.stages} stages "
                  f"(da4ml pipeline {e.handle.pipeline.stages}); Yosys {cells['LUT']:,} LUT {cells['FF']:,} FF "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    table = []
    for clock in (10.0, 5.0, 2.5):
        r = [x for x in rows if x[0] == clock]
        lut = spearmanr([x[1] for x in r], [x[5] for x in r]).statistic
        ff = spearmanr([x[2] for x in r], [x[6] for x in r]).statistic
        both = spearmanr([x[1] + x[2] for x in r], [x[5] + x[6] for x in r]).statistic
        same = sum(x[3] == x[4] for x in r)
        ratio = sorted(x[2] / max(x[6], 1) for x in r)[len(r) // 2]
        table.append([f"{clock:g} ns", len(r), f"{lut:.2f}", f"{ff:.2f}", f"{both:.2f}", f"{ratio:.2f}",
                      f"{same}/{len(r)}"])  # fmt: skip
    head = ["clock", "configs", "Spearman LUT", "Spearman FF", "Spearman LUT+FF", "median reg bits / Yosys FF",
            "cycles = da4ml pipeline"]  # fmt: skip
    print(tabulate(table, headers=head, tablefmt="github"))


def search_cost(trials: int, work: Path) -> None:
    """The clocked config's search (seed 0: the layer cache cold; then seed 1 in the same process: warm) against the
    same search scored by average_bitwidth (same weights, sampler)."""
    import statistics

    from qfx.hw.fpga_compose import _LAYERS
    from qfx.search.records import record_of
    from qfx.search.session import run_search

    cfg = Path(__file__).resolve().parent.parent / "configs" / "jsc_s_fpga_clocked.toml"
    text = cfg.read_text()
    plain = text[: text.index("[search.strategy.metrics]")] + (
        "[search.strategy.metrics]\naccuracy.scale = 1.0\naverage_bitwidth.scale = 1.0\n"
        'average_bitwidth.direction = "minimize"\n'
    )
    (work / "plain.toml").write_text(plain)
    (work / "seed1.toml").write_text(text.replace("seed = 0", "seed = 1"))
    out = {}
    runs = (("clocked, seed 0 (layer cache cold)", cfg, None, "a"),
            ("clocked, seed 1 (same process: warm)", work / "seed1.toml", None, "c"),
            ("average_bitwidth", work / "plain.toml", str(work / "a" / "baseline"), "b"))  # fmt: skip
    for name, path, ck, sub in runs:
        h0, m0 = _LAYERS.hits, _LAYERS.misses
        t0 = time.perf_counter()
        run = run_search(path, checkpoint=ck, out=work / sub, n_trials=trials)
        wall = time.perf_counter() - t0
        fresh = [t for t in run.study.trials if (r := record_of(t)) and not r.refused and "cached" not in r.timings]
        med = statistics.median(t.duration.total_seconds() for t in fresh)
        hits, misses = _LAYERS.hits - h0, _LAYERS.misses - m0
        rate = f"{hits / max(hits + misses, 1):.0%}" if hits + misses else "-"
        out[name] = (len(run.study.trials), len(fresh), med, wall, rate)
    base = out["average_bitwidth"][2]
    rows = [[k, n, f, f"{1e3 * m:.1f}", f"{m / base:.1f}x", f"{w:.0f}", r] for k, (n, f, m, w, r) in out.items()]
    print(tabulate(rows,
                   headers=["search", "trials", "evaluated", "median ms / evaluated trial", "vs average_bitwidth",
                            "wall s", "layer-cache hits"], tablefmt="github"))  # fmt: skip


def main() -> None:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory(prefix="qfx-bench-") as tmp:
        if "--rank" in sys.argv:
            rank(int(sys.argv[sys.argv.index("--rank") + 1]), Path(tmp))
        if "--search" in sys.argv:
            search_cost(int(sys.argv[sys.argv.index("--search") + 1]), Path(tmp))
        if "--rank" in sys.argv or "--search" in sys.argv:
            return
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfx-bench-") as tmp:
        for name, q in designs(quick).items():
            for clock in CLOCKS:
                t0 = time.perf_counter()
                rows.append(measure(name, q, clock, Path(tmp)))
                print(f"  {name} @ {rows[-1][1]}: {time.perf_counter() - t0:.1f} s", flush=True)
    head = ["design", "clock", "da4ml LUT", "da4ml reg bits", "stages", "model latency ns", "Yosys LUT", "Yosys FF",
            "iCE40 Fmax MHz", "iCE40 latency ns"]  # fmt: skip
    print(tabulate(rows, headers=head, tablefmt="github"))
    path = Path(__file__).with_name("fpga_clocked.png")
    plot(rows, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
