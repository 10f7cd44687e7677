"""An achieved clock, not a modelled one: the exported RTL placed and routed for a Lattice iCE40 with open tools.

``qfx export --clock-ns`` cuts the logic by a delay model (``da4ml_backend.ADDER_LEVEL_NS``). :func:`ice40_fmax`
checks what a real flow achieves: Yosys ``synth_ice40`` then ``nextpnr-ice40`` (HX8K, CT256) with its timing
analysis, which reports the maximum frequency of the clock. The model's ports are far wider than an iCE40 has
pins, so the design is wrapped in a harness with two pins of data: a shift register fills ``model_inp`` (no input
is a constant, nothing is optimised away) and a register takes ``model_out``, XOR-reduced to one pin. Every path
through the model then runs from a register to a register: for a combinational export the Fmax is 1 / (its
delay), for a pipelined one 1 / (its slowest stage). iCE40 LUT4 logic is slower than the UltraScale+ LUT6 logic
the delay model describes: the figure checks the model's *shape* (how Fmax grows with stages), and is the
deployable number for iCE40 users. Only designs that fit an HX8K (7,680 logic cells) place.

Like :func:`~qfx.passes.export.da4ml_backend.synth`, the tools read scripts and file names we write, in a private
copy of the project: no path text reaches them.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qfx.passes.export.da4ml_backend import STATIC_SOURCES, TOP
from qfx.passes.export.tools import Progress, ToolError, run_tool

HARNESS = "qfx_harness"
ICE40_LCS = 7680  # logic cells of an iCE40 HX8K


def harness(w_in: int, w_out: int, clocked: bool) -> str:
    """Verilog of the harness around ``qfx_model`` (see the module docstring)."""
    clk = ".clk(clk), " if clocked else ""
    inp = ".model_inp(sin), " if w_in else ""
    return f"""// written by qfx: {TOP} between registers, two data pins (place and route only; not a deliverable)
module {HARNESS} (input clk, input din, output dout);
    reg [{max(w_in, 1) - 1}:0] sin;
    reg [{w_out - 1}:0] sout;
    wire [{w_out - 1}:0] y;
    always @(posedge clk) begin
        sin <= {{sin, din}};
        sout <= y;
    end
    {TOP} dut ({clk}{inp}.model_out(y));
    assign dout = ^sout;
endmodule
"""


def ice40_fmax(project: str | Path, target_mhz: float = 100.0, seed: int = 1, timeout: float = 900,
               progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Place and route the project's Verilog (in its harness) for an iCE40 HX8K; returns ``fmax_mhz`` (nextpnr's
    maximum frequency of ``clk``), ``logic_cells``, ``flip_flops`` (SB_DFF*), ``carries`` and the harness's own
    register bits (``harness_ffs``: to subtract from ``flip_flops``). Raises ToolError when a tool fails or the
    design does not fit."""
    project = Path(project).resolve()
    ports = json.loads((project / "ports.json").read_text())
    w_in, w_out = ports["input_port"]["bits"], max(ports["output_port"]["bits"], 1)
    clocked = "clock" in ports
    with tempfile.TemporaryDirectory(prefix="qfx-pnr-") as tmp:
        work = Path(tmp)
        shutil.copytree(project / "src", work / "src", ignore=shutil.ignore_patterns("memfiles"))
        (work / "harness.v").write_text(harness(w_in, w_out, clocked))
        stages = sorted(f"src/{p.name}" for p in (work / "src").glob(f"{TOP}_stage*.v"))
        files = [f"src/static/{s}" for s in STATIC_SOURCES] + stages + [f"src/{TOP}.v", "harness.v"]
        (work / "synth.ys").write_text(
            f"read_verilog -sv {' '.join(files)}\nsynth_ice40 -top {HARNESS} -json design.json\n"
            "tee -q -o stat.txt stat\n"
        )
        run_tool(["yosys", "-q", "-s", "synth.ys"], work, "yosys synth_ice40", progress, timeout)
        cells = _cells((work / "stat.txt").read_text())
        if cells.get("SB_LUT4", 0) > ICE40_LCS:
            raise ToolError(f"{cells['SB_LUT4']:,} LUT4s do not fit an iCE40 HX8K ({ICE40_LCS:,} logic cells)")
        argv = ["nextpnr-ice40", "--hx8k", "--package", "ct256", "--json", "design.json", "--freq",
                f"{target_mhz:g}", "--seed", str(seed), "--report", "report.json", "--timing-allow-fail"]  # fmt: skip
        r = run_tool(argv, work, "nextpnr-ice40 place and route", progress, timeout)
        report = json.loads((work / "report.json").read_text())
    fmax = _fmax(report, r.stderr + r.stdout)
    return {
        "fmax_mhz": fmax,
        "logic_cells": cells.get("SB_LUT4", 0),
        "flip_flops": sum(v for c, v in cells.items() if c.startswith("SB_DFF")),
        "carries": cells.get("SB_CARRY", 0),
        "harness_ffs": max(w_in, 1) + w_out,
    }


def _cells(stat: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in stat.splitlines():
        m = re.match(r"^\s+(\w+)\s+(\d+)$", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _fmax(report: dict[str, Any], log: str) -> float:
    """nextpnr's achieved maximum frequency of the clock (its JSON report, else its log line)."""
    for name, v in (report.get("fmax") or {}).items():
        if "clk" in name and isinstance(v.get("achieved"), int | float):
            return float(v["achieved"])
    found = re.findall(r"Max frequency for clock\s+'[^']*clk[^']*':\s+([\d.]+) MHz", log)
    if not found:
        raise ToolError("nextpnr-ice40 reported no maximum frequency for clk")
    return float(found[-1])
