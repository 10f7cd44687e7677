"""The port map of a da4ml RTL export (``ports.json``) and the self-checking testbench every Verilog export ships.

da4ml's top module ``qfx_model`` packs each input and output element at its own minimal width (sign bit,
integer bits, fraction bits of the values it can take), least significant element first; an element of
width 0 (an input nothing reads, an output that is a constant) has no bits. :func:`ports` says exactly that,
per element, and :func:`write_testbench` writes ``tb/qfx_model_tb.v`` with ``tb/vectors_in.mem`` /
``tb/vectors_out.mem`` (hex, one row per line: the inputs a host feeds and the outputs the graph computes).
A hardware engineer runs it first in their own flow; the export runs it with Icarus Verilog::

    iverilog -g2012 -o tb/sim.vvp src/static/{binop,multiplier,mux,negative,shift_adder}.v src/qfx_model.v \
        tb/qfx_model_tb.v && cd tb && vvp sim.vvp

It prints ``PASS: N rows`` or ``FAIL: ...`` with the first differing rows (and exits non-zero through
``$fatal`` on a failure).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from qfx.graph.safeio import out_path
from qfx.passes.export.tools import Progress, run_tool

TB = "qfx_model_tb"


def _elements(qints: Any, used: list[bool] | None = None) -> list[dict[str, Any]]:
    from da4ml.types import minimal_kif

    out, offset = [], 0
    for j, q in enumerate(qints):
        k, i, f = (int(v) for v in minimal_kif(q))
        w = k + i + f
        e = {"index": j, "offset": offset, "width": w, "signed": bool(k), "integer_bits": i, "frac": f}
        if used is not None and not used[j]:
            e["read"] = False
        out.append(e)
        offset += w
    return out


def ports(comb: Any) -> dict[str, Any]:
    """The top module's ports, per element (see the module docstring)."""
    ins = _elements(comb.inp_qint)
    outs = _elements(comb.out_qint)
    for e, idx in zip(outs, comb.out_idxs, strict=True):
        if idx < 0 or e["width"] == 0:
            e["constant"] = True
    return {
        "module": "qfx_model",
        "input_port": {"name": "model_inp", "bits": sum(e["width"] for e in ins)},
        "output_port": {"name": "model_out", "bits": sum(e["width"] for e in outs)},
        "value": "element j = two's complement (or unsigned) code in bits [offset, offset + width) x 2^-frac",
        "inputs": ins,
        "outputs": outs,
        "dropped_inputs": [e["index"] for e in ins if e["width"] == 0],
        "constant_outputs": [e["index"] for e in outs if e.get("constant")],
    }


def pack(values: np.ndarray, elements: list[dict[str, Any]]) -> list[int]:
    """Rows of element values as port words (Python ints): each code at its offset and width."""
    rows = []
    for row in np.asarray(values, dtype=np.float64).reshape(len(values), -1):
        word = 0
        for e in elements:
            w = e["width"]
            if w == 0 or e.get("constant"):
                continue
            code = int(round(float(row[e["index"]]) * 2.0 ** e["frac"]))
            word |= (code & ((1 << w) - 1)) << e["offset"]
        rows.append(word)
    return rows


def _mask(elements: list[dict[str, Any]]) -> int:
    m = 0
    for e in elements:
        if e["width"] and not e.get("constant"):
            m |= ((1 << e["width"]) - 1) << e["offset"]
    return m


def write_ports(project: str | Path, comb: Any, pipeline: Any = None) -> dict[str, Any]:
    """Write ``ports.json`` (see :func:`ports`; with a ``pipeline``, its clock, stages, latency and II) into
    ``project`` and return it. Every da4ml RTL export writes it, verified or not."""
    pm = ports(comb)
    if pipeline is not None:
        pm["clock"] = {"port": "clk", "period_ns": pipeline.clock_ns, "stages": pipeline.stages,
                       "latency_cycles": pipeline.latency_cycles, "initiation_interval": 1}  # fmt: skip
    out_path(Path(project), "ports.json").write_text(json.dumps(pm, indent=1))
    return pm


def write_testbench(
    project: str | Path, comb: Any, x_in: np.ndarray, expected: np.ndarray, pipeline: Any = None
) -> dict[str, Any]:
    """Write ``ports.json`` and ``tb/`` into ``project`` for the host's input values ``x_in`` (already in the
    port's precision) and the outputs ``expected`` (the graph's); returns the port map. For a ``pipeline``
    (:class:`~qfx.passes.export.da4ml_backend.Pipelined`) the testbench streams one row per clock (II = 1) and
    checks each output its latency later."""
    project = Path(project)
    pm = write_ports(project, comb, pipeline)
    tb = out_path(project, "tb")
    tb.mkdir(exist_ok=True)
    w_in, w_out = max(pm["input_port"]["bits"], 1), max(pm["output_port"]["bits"], 1)
    hex_in, hex_out = -(-w_in // 4), -(-w_out // 4)
    rows_in, rows_out = pack(x_in, pm["inputs"]), pack(expected, pm["outputs"])
    out_path(tb, "vectors_in.mem").write_text("".join(f"{v:0{hex_in}x}\n" for v in rows_in))
    out_path(tb, "vectors_out.mem").write_text("".join(f"{v:0{hex_out}x}\n" for v in rows_out))
    mask = _mask(pm["outputs"])
    n = len(rows_in)
    ports_line = (".model_inp(model_inp), " if pm["input_port"]["bits"] else "") + ".model_out(model_out)"
    body = _COMB if pipeline is None else _CLOCKED
    text = body.format(TB=TB, n=n, w_in=w_in, w_out=w_out, mask=f"{mask:x}", ports=ports_line,
                       lat=pipeline.stages if pipeline is not None else 0,
                       half=pipeline.clock_ns / 2 if pipeline is not None else 0)  # fmt: skip
    out_path(tb, f"{TB}.v").write_text(text)
    return pm


_HEAD = """`timescale 1ns/1ps
// Self-checking testbench written by qfx: {n} rows of inputs (vectors_in.mem) and the outputs the quantized
// graph computes (vectors_out.mem), compared bit for bit on every driven output bit (ports.json).
module {TB};
    localparam N = {n}, W_IN = {w_in}, W_OUT = {w_out};
    localparam [W_OUT-1:0] CHECKED = {w_out}'h{mask};
    reg [W_IN-1:0] vin [0:N-1];
    reg [W_OUT-1:0] vout [0:N-1];
    reg [W_IN-1:0] model_inp;
    wire [W_OUT-1:0] model_out;
    integer i, n, errors;
"""
_TAIL = """        if (errors == 0) $display("PASS: %0d rows", n);
        else $fatal(1, "FAIL: %0d of %0d rows differ", errors, n);
        $finish;
    end
endmodule
"""
_START = """        $readmemh("vectors_in.mem", vin);
        $readmemh("vectors_out.mem", vout);
        errors = 0;
        if (!$value$plusargs("rows=%d", n) || n > N) n = N;  // vvp sim.vvp +rows=100: the first 100 rows
"""
_CHECK = """            if ((model_out & CHECKED) !== (vout[{row}] & CHECKED)) begin
                errors = errors + 1;
                if (errors <= 5) $display("FAIL row %0d: got %h, expected %h", {row}, model_out & CHECKED, vout[{row}]);
            end
"""
_COMB = (
    _HEAD
    + """
    qfx_model dut ({ports});

    initial begin
"""
    + _START
    + """        for (i = 0; i < n; i = i + 1) begin
            model_inp = vin[i];
            #1;
"""
    + _CHECK.replace("{row}", "i")
    + """        end
"""
    + _TAIL
)
_CLOCKED = (
    _HEAD
    + """    // II = 1 pipeline: a row enters at every rising edge; its output is checked {lat} edges on
    localparam LAT = {lat};
    reg clk = 0;
    always #{half} clk = ~clk;

    qfx_model dut (.clk(clk), {ports});

    initial begin
"""
    + _START
    + """        model_inp = vin[0];
        for (i = 0; i < n + LAT; i = i + 1) begin
            @(posedge clk);
            #0.01;
            if (i >= LAT) begin
"""
    + _CHECK.replace("{row}", "i - LAT").replace("            ", "                ")
    + """            end
            model_inp = (i + 1 < n) ? vin[i + 1] : {{W_IN{{1'b0}}}};
        end
"""
    + _TAIL
)


def run_testbench(project: str | Path, progress: Progress | None = None, rows: int | None = None) -> str:
    """Compile and run ``tb/`` with Icarus Verilog in a private copy (argument vectors only); returns the PASS
    line. ``rows``: only the first rows (Icarus runs a jsc-s netlist at ~0.1-0.2 s a row). Raises
    :class:`~qfx.passes.export.tools.ToolError` (with the FAIL lines) when a row differs."""
    import tempfile

    project = Path(project).resolve()
    with tempfile.TemporaryDirectory(prefix="qfx-tb-") as tmp:
        work = Path(tmp)
        shutil.copytree(project / "src", work / "src", ignore=shutil.ignore_patterns("memfiles"))
        shutil.copytree(project / "tb", work / "tb")
        from qfx.passes.export.da4ml_backend import STATIC_SOURCES

        stages = sorted(str(p.relative_to(work)) for p in (work / "src").glob("qfx_model_stage*.v"))
        src = [*(f"src/static/{s}" for s in STATIC_SOURCES), *stages, "src/qfx_model.v", f"tb/{TB}.v"]
        run_tool(["iverilog", "-g2012", "-o", "tb/sim.vvp", *src], work, "iverilog compile of the testbench", progress)
        argv = ["vvp", "-n", "sim.vvp", *([f"+rows={rows}"] if rows else [])]
        text = run_tool(argv, work / "tb", "vvp run of the testbench", progress).stdout
    lines = [ln for ln in text.splitlines() if re.match(r"^(PASS|FAIL)", ln)]
    return lines[-1] if lines else text.strip().splitlines()[-1]
