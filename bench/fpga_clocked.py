"""RTL at a clock: what the delay model predicts against what synthesis and place-and-route measure.

For each design and clock target (combinational, 10, 5, 2.5 ns) the graph is exported as `qfx export --clock-ns`
writes it and measured three ways: da4ml's estimate as the search metrics see it (``hw.fpga.fpga_timing``: LUTs,
register bits, stages, latency in ns by the delay model), Yosys ``synth_xilinx`` (LUT, FF) and, where the design
fits an iCE40 HX8K, yosys ``synth_ice40`` + nextpnr-ice40's timing analysis (achieved Fmax; the achieved latency =
stages / Fmax). Designs: a 64-8-10 MLP at 4 bits (fits an iCE40) and jsc-s at 3-bit weights / 4-bit inputs
(trained briefly on digits, fracs calibrated). Prints one table and writes bench/fpga_clocked.png.
Run: python bench/fpga_clocked.py [--quick]   (--quick: the MLP only)
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


def main() -> None:
    quick = "--quick" in sys.argv
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
