"""The port map of a da4ml RTL export (``ports.json``) and the self-checking testbench every RTL export ships.

da4ml's top module ``qfx_model`` packs each input and output element at its own minimal width (sign bit,
integer bits, fraction bits of the values it can take), least significant element first; an element of
width 0 (an input nothing reads, an output that is a constant) has no bits. :func:`ports` says exactly that,
per element, and :func:`write_testbench` writes ``tb/qfx_model_tb.v`` with ``tb/vectors_in.mem`` /
``tb/vectors_out.mem`` (hex, one row per line: the inputs a host feeds and the outputs the graph computes).
A hardware engineer runs it first in their own flow; the export runs it with Icarus Verilog::

    iverilog -g2012 -o tb/sim.vvp src/static/{binop,multiplier,mux,negative,shift_adder}.v src/qfx_model.v \
        tb/qfx_model_tb.v && cd tb && vvp sim.vvp

It prints ``PASS: N rows`` or ``FAIL: ...`` with the first differing rows (and exits non-zero through
``$fatal`` on a failure). A VHDL export ships ``tb/qfx_model_tb.vhd`` (VHDL-2008) on the same vectors, run with
GHDL::

    ghdl -a --std=08 src/static/*.vhd src/qfx_model.vhd tb/qfx_model_tb.vhd && ghdl -e --std=08 qfx_model_tb \
        && cd tb && ghdl -r --std=08 --workdir=.. qfx_model_tb
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from qfx.graph.safeio import out_path
from qfx.passes.export.tools import Progress, ToolError, run_tool

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
    project: str | Path, comb: Any, x_in: np.ndarray, expected: np.ndarray, pipeline: Any = None,
    lang: str = "verilog",
) -> dict[str, Any]:
    """Write ``ports.json`` and ``tb/`` into ``project`` for the host's input values ``x_in`` (already in the
    port's precision) and the outputs ``expected`` (the graph's); returns the port map. For a ``pipeline``
    (:class:`~qfx.passes.export.da4ml_backend.Pipelined`) the testbench streams one row per clock (II = 1) and
    checks each output its latency later. ``lang``: ``verilog`` (``tb/qfx_model_tb.v``) or ``vhdl``
    (``tb/qfx_model_tb.vhd``, VHDL-2008)."""
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
    n, has_in = len(rows_in), bool(pm["input_port"]["bits"])
    lat = pipeline.stages if pipeline is not None else 0
    half = pipeline.clock_ns / 2 if pipeline is not None else 0
    if lang == "vhdl":
        ports_map = ("model_inp => model_inp, " if has_in else "") + "model_out => model_out"
        text = _VHDL.format(TB=TB, n=n, w_in=w_in, w_out=w_out, h_in=4 * hex_in, h_out=4 * hex_out,
                            mask=f"{mask:0{hex_out}x}", lat=lat, half=f"{half:g}",
                            clk_map="clk => clk, " if pipeline is not None else "", ports=ports_map,
                            clocked="true" if pipeline is not None else "false")  # fmt: skip
        out_path(tb, f"{TB}.vhd").write_text(text)
        return pm
    ports_line = (".model_inp(model_inp), " if has_in else "") + ".model_out(model_out)"
    body = _COMB if pipeline is None else _CLOCKED
    text = body.format(TB=TB, n=n, w_in=w_in, w_out=w_out, mask=f"{mask:x}", ports=ports_line, lat=lat,
                       half=half)  # fmt: skip
    out_path(tb, f"{TB}.v").write_text(text)
    return pm


# VHDL-2008 (GHDL: --std=08). Combinational: a row every ns, checked 1 ns on. Clocked (II = 1): a row enters at
# every rising edge and its output is checked LAT edges on, as the Verilog one does.
_VHDL = """-- Self-checking testbench written by qfx: {n} rows of inputs (vectors_in.mem) and the outputs the quantized
-- graph computes (vectors_out.mem), compared bit for bit on every driven output bit (ports.json).
-- ghdl -r --std=08 {TB} -gROWS=100: the first 100 rows.
library ieee;
use ieee.std_logic_1164.all;
use std.textio.all;

entity {TB} is
    generic (ROWS : integer := {n});
end entity {TB};

architecture sim of {TB} is
    constant N : integer := {n};
    constant W_IN : integer := {w_in};
    constant W_OUT : integer := {w_out};
    constant LAT : integer := {lat};
    constant CLOCKED : boolean := {clocked};
    constant CHECKED : std_logic_vector({h_out} - 1 downto 0) := x"{mask}";
    type vin_t is array (0 to N - 1) of std_logic_vector({h_in} - 1 downto 0);
    type vout_t is array (0 to N - 1) of std_logic_vector({h_out} - 1 downto 0);
    signal model_inp : std_logic_vector(W_IN - 1 downto 0) := (others => '0');
    signal model_out : std_logic_vector(W_OUT - 1 downto 0);
    signal clk : std_logic := '0';
    signal done : boolean := false;
begin
    dut : entity work.qfx_model port map ({clk_map}{ports});

    clock : process
    begin
        if not CLOCKED or done then
            wait;
        end if;
        clk <= not clk;
        wait for {half} ns;
    end process;

    stimulus : process
        file fin : text open read_mode is "vectors_in.mem";
        file fout : text open read_mode is "vectors_out.mem";
        variable l : line;
        variable vin : vin_t;
        variable vout : vout_t;
        variable got : std_logic_vector({h_out} - 1 downto 0);
        variable errors, todo : integer := 0;  -- VHDL names are case-insensitive: not n (N)

        procedure check(row : integer) is
        begin
            got := (others => '0');
            got(W_OUT - 1 downto 0) := model_out;
            if (got and CHECKED) /= (vout(row) and CHECKED) then
                errors := errors + 1;
                if errors <= 5 then
                    report "FAIL row " & integer'image(row) & ": got " & to_hstring(got and CHECKED)
                        & ", expected " & to_hstring(vout(row));
                end if;
            end if;
        end procedure;
    begin
        for r in 0 to N - 1 loop
            readline(fin, l);
            hread(l, vin(r));
            readline(fout, l);
            hread(l, vout(r));
        end loop;
        todo := ROWS;
        if todo > N then
            todo := N;
        end if;
        if not CLOCKED then
            for i in 0 to todo - 1 loop
                model_inp <= vin(i)(W_IN - 1 downto 0);
                wait for 1 ns;
                check(i);
            end loop;
        else
            model_inp <= vin(0)(W_IN - 1 downto 0);
            for i in 0 to todo + LAT - 1 loop
                wait until rising_edge(clk);
                wait for 10 ps;
                if i >= LAT then
                    check(i - LAT);
                end if;
                if i + 1 < todo then
                    model_inp <= vin(i + 1)(W_IN - 1 downto 0);
                else
                    model_inp <= (others => '0');
                end if;
            end loop;
        end if;
        done <= true;
        if errors = 0 then
            report "PASS: " & integer'image(todo) & " rows";
        else
            report "FAIL: " & integer'image(errors) & " of " & integer'image(todo) & " rows differ" severity failure;
        end if;
        wait;
    end process;
end architecture sim;
"""


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


def run_testbench(project: str | Path, progress: Progress | None = None, rows: int | None = None,
                  lang: str = "verilog") -> str:  # fmt: skip
    """Compile and run ``tb/`` in a private copy (argument vectors only) with Icarus Verilog (``lang`` verilog) or
    GHDL (vhdl); returns the PASS line. ``rows``: only the first rows (Icarus runs a jsc-s netlist at ~0.1-0.2 s
    a row). Raises :class:`~qfx.passes.export.tools.ToolError` (with the FAIL lines) when a row differs."""
    import tempfile

    project = Path(project).resolve()
    with tempfile.TemporaryDirectory(prefix="qfx-tb-") as tmp:
        work = Path(tmp)
        shutil.copytree(project / "src", work / "src", ignore=shutil.ignore_patterns("memfiles"))
        shutil.copytree(project / "tb", work / "tb")
        text = (_ghdl if lang == "vhdl" else _icarus)(work, progress, rows)
    lines = [m.group(1) for ln in text.splitlines() if (m := re.search(r"((?:PASS|FAIL)\b.*)$", ln))]
    if any(ln.startswith("FAIL") for ln in lines):
        raise ToolError(f"{TB} ({lang}): {' / '.join(lines[-6:])}")
    return lines[-1] if lines else text.strip().splitlines()[-1]


def _icarus(work: Path, progress: Progress | None, rows: int | None) -> str:
    from qfx.passes.export.da4ml_backend import STATIC_SOURCES

    stages = sorted(str(p.relative_to(work)) for p in (work / "src").glob("qfx_model_stage*.v"))
    src = [*(f"src/static/{s}" for s in STATIC_SOURCES), *stages, "src/qfx_model.v", f"tb/{TB}.v"]
    run_tool(["iverilog", "-g2012", "-o", "tb/sim.vvp", *src], work, "iverilog compile of the testbench", progress)
    argv = ["vvp", "-n", "sim.vvp", *([f"+rows={rows}"] if rows else [])]
    return run_tool(argv, work / "tb", "vvp run of the testbench", progress).stdout


def _ghdl(work: Path, progress: Progress | None, rows: int | None) -> str:
    """GHDL (VHDL-2008): analyse da4ml's static entities, the stages, the top and the testbench, then run it."""
    from qfx.passes.export.da4ml_backend import STATIC_SOURCES

    stages = sorted(str(p.relative_to(work)) for p in (work / "src").glob("qfx_model_stage*.vhd"))
    static = [f"src/static/{Path(s).with_suffix('.vhd')}" for s in STATIC_SOURCES]
    src = [*(s for s in static if (work / s).is_file()), *stages, "src/qfx_model.vhd", f"tb/{TB}.vhd"]
    std = ["--std=08", "--workdir=tb"]
    run_tool(["ghdl", "-a", *std, *src], work, "ghdl analysis of the testbench", progress)
    run_tool(["ghdl", "-e", *std, "-o", f"tb/{TB}", TB], work, "ghdl elaboration of the testbench", progress)
    # a FAIL report does not stop the run (its lines are read back and raised by run_testbench)
    argv = ["ghdl", "-r", "--std=08", "--workdir=.", TB, *([f"-gROWS={rows}"] if rows else []), "--assert-level=none"]
    r = run_tool(argv, work / "tb", "ghdl run of the testbench", progress)
    return r.stdout + r.stderr
