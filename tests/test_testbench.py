"""The self-checking testbench and port map every Verilog export ships (iverilog), from a user's seat."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from qfx.graph.trace import trace
from qfx.passes.analysis import analyze
from qfx.passes.export.api import export, verification_inputs, verify
from qfx.passes.export.testbench import run_testbench
from qfx.passes.export.tools import ToolError
from qfx.passes.transforms.quantize import QuantizePass
from qfx.zoo.data import load_dataset
from tests.test_fpga import need

DS = load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    need("iverilog")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10)).eval()
    cfg = {
        "name": "integer",
        "data_in_width": 6,
        "data_in_frac_width": 2,
        "weight_width": 6,
        "weight_frac_width": 5,
        "bias_width": 8,
    }
    q = QuantizePass({"default": cfg, "by_name": {"_1": cfg}})(analyze(trace(m, DS.test.x[:8]))).graph
    d = tmp_path_factory.mktemp("tb out") / "my rtl"
    e = export(q, "verilog", d)
    return e, verify(e, q, verification_inputs(DS.test.x, 300))


def test_the_export_runs_its_testbench_and_it_passes(exported):
    e, agreement = exported
    assert agreement["ok"] and agreement["testbench"].startswith("iverilog: PASS: 32 rows"), agreement
    assert "iverilog testbench" in agreement["checked_by"]
    assert (
        len((Path(e.path) / "tb" / "vectors_in.mem").read_text().splitlines()) == 360
    )  # the test split (300 asked: at least all of it)


def test_ports_json_describes_the_top_module(exported):
    e, _ = exported
    d = Path(e.path)
    pm = json.loads((d / "ports.json").read_text())
    top = (d / "src" / "qfx_model.v").read_text()
    (w_in,) = re.findall(r"input \[(\d+):0\] model_inp", top)
    (w_out,) = re.findall(r"output \[(\d+):0\] model_out", top)
    assert pm["input_port"]["bits"] == int(w_in) + 1 and pm["output_port"]["bits"] == int(w_out) + 1
    for side in ("inputs", "outputs"):
        off = 0
        for el in pm[side]:  # contiguous, least significant element first
            assert el["offset"] == off
            off += el["width"]
    assert len(pm["inputs"]) == 64 and len(pm["outputs"]) == 10
    assert set(pm["dropped_inputs"]) == {el["index"] for el in pm["inputs"] if el["width"] == 0}
    # input element j sits where the top module reads it (da4ml's own wiring)
    reads = {(int(a), int(b)) for a, b in re.findall(r"= model_inp\[(\d+):(\d+)\]", top)}
    assert reads <= {(el["offset"] + el["width"] - 1, el["offset"]) for el in pm["inputs"] if el["width"]}


def test_an_altered_expected_vector_fails(exported, tmp_path):
    import shutil

    e, _ = exported
    d = tmp_path / "copy"
    shutil.copytree(e.path, d)
    vec = d / "tb" / "vectors_out.mem"
    lines = vec.read_text().splitlines()
    first = int(lines[0], 16)
    lines[0] = f"{first ^ 1:0{len(lines[0])}x}"  # one output bit of row 0 flipped
    vec.write_text("\n".join(lines) + "\n")
    with pytest.raises(ToolError, match="FAIL: 1 of 20 rows differ"):
        run_testbench(d, rows=20)
    assert run_testbench(e.path, rows=20) == "PASS: 20 rows"


def test_pipelined_design_streams_bit_identical_and_an_altered_vector_fails(tmp_path, clock_ns=2.5):
    """An II = 1 pipeline: Verilator (da4ml's binder streams one row per clock) and the clocked iverilog
    testbench agree with the graph; its stages follow the delay model; an altered vector fails (random widths,
    jsc-s and cnn at two clocks: tests/test_fpga.py)."""
    import shutil

    from qfx.passes.export.da4ml_backend import stage_levels

    need("iverilog")
    need("verilator")
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval()
    cfg = {"name": "integer", "data_in_width": 7, "data_in_frac_width": 3, "weight_width": 7, "weight_frac_width": 6,
           "bias_width": 10}  # fmt: skip
    q = QuantizePass({"default": cfg})(analyze(trace(m, DS.test.x[:8]))).graph
    e = export(q, "verilog", tmp_path / "rtl", clock_ns=clock_ns)
    a = verify(e, q, verification_inputs(DS.test.x, 400))
    assert a["ok"] and "Verilator" in a["checked_by"] and a["testbench"].startswith("iverilog: PASS"), a
    p = e.handle.pipeline
    assert p.levels_per_stage == stage_levels(clock_ns) and p.stages >= 2
    assert p.stages * p.levels_per_stage >= e.handle.latency  # every adder level sits in some stage
    pm = json.loads((tmp_path / "rtl" / "ports.json").read_text())
    assert pm["clock"] == {"port": "clk", "period_ns": clock_ns, "stages": p.stages, "latency_cycles": p.stages,
                           "initiation_interval": 1}  # fmt: skip
    assert "clk" in (tmp_path / "rtl" / "src" / "qfx_model.v").read_text()
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "rtl", bad)
    vec = bad / "tb" / "vectors_out.mem"
    lines = vec.read_text().splitlines()
    lines[3] = f"{int(lines[3], 16) ^ (1 << 2):0{len(lines[3])}x}"
    vec.write_text("\n".join(lines) + "\n")
    with pytest.raises(ToolError, match="FAIL row 3"):
        run_testbench(bad, rows=10)


def test_clock_target_is_checked(tmp_path):
    from qfx.passes.export.da4ml_backend import stage_levels
    from qfx.passes.export.ir import ExportError

    with pytest.raises(ExportError, match=r"clock period"):
        stage_levels(float("nan"))
    assert stage_levels(0.1) == 1 and stage_levels(5.0) == 7  # (5 - 0.5) // 0.6
    m = torch.nn.Sequential(torch.nn.Linear(64, 4)).eval()
    g = QuantizePass({"default": {"name": "integer"}})(analyze(trace(m, DS.test.x[:8]))).graph
    with pytest.raises(ValueError, match="a clock target applies to verilog, vhdl, not to qonnx"):
        export(g, "qonnx", tmp_path / "q", clock_ns=5.0)
    with pytest.raises(ValueError, match="not to da4ml-hls"):
        export(g, "da4ml-hls", tmp_path / "h", clock_ns=5.0)


def test_testbench_runs_from_a_path_with_shell_characters(exported, tmp_path, monkeypatch):
    """The project's path reaches Icarus as nothing but a working directory (argument vectors, relative names)."""
    import shutil

    e, _ = exported
    d = tmp_path / "x; touch pwned; #" / "my rtl"
    shutil.copytree(e.path, d)
    monkeypatch.chdir(tmp_path)
    assert run_testbench(Path("x; touch pwned; #") / "my rtl", rows=4) == "PASS: 4 rows"
    assert not (tmp_path / "pwned").exists() and not (Path(d) / "pwned").exists()


def test_clocked_metrics_are_what_the_export_writes_and_yosys_counts(tmp_path):
    """fpga_timing (the fpga_ffs / fpga_latency_* search metrics) at a clock equals the pipelined export: same
    stages, adder depth and LUT estimate; its flip-flops (da4ml's register bits) bound Yosys' FF count of the
    written RTL from above, within 1/0.6; latency in ns = stages x clock; combinational: 0 flip-flops, 0 stages."""
    from qfx.hw.fpga import fpga_timing
    from qfx.passes.export.da4ml_backend import ADDER_LEVEL_NS, synth

    need("yosys")
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)).eval()
    cfg = {"name": "integer", "data_in_width": 4, "data_in_frac_width": 2, "weight_width": 4, "weight_frac_width": 3,
           "bias_width": 8}  # fmt: skip
    q = QuantizePass({"default": cfg})(analyze(trace(m, DS.test.x[:8]))).graph
    comb = fpga_timing(q)
    assert comb.ffs == 0 and comb.stages == 0 and comb.latency_ns == pytest.approx(comb.depth * ADDER_LEVEL_NS)
    e = export(q, "verilog", tmp_path / "rtl", clock_ns=2.5)
    t = fpga_timing(q, 2.5)
    p = e.handle.pipeline
    assert (t.stages, t.depth, t.luts) == (p.stages, e.handle.latency, e.handle.luts) and t.stages >= 2
    assert t.latency_ns == pytest.approx(p.latency_ns) and t.metrics()["fpga_latency_cycles"] == p.stages
    cells = synth(tmp_path / "rtl")  # Yosys drops constant and unread register bits that da4ml counts
    assert 0.6 * t.ffs <= cells["FF"] <= t.ffs, (cells, t)  # measured: 810 vs 975 (0.83x)
    export(q, "verilog", tmp_path / "comb")
    comb_cells = synth(tmp_path / "comb")
    assert 0 < 2 * cells["LTP"] < comb_cells["LTP"], (cells["LTP"], comb_cells["LTP"])  # Yosys ltp: ~15 vs ~57
    with pytest.raises(Exception, match="clock period"):
        fpga_timing(q, 0.0)


@pytest.mark.parametrize("clock_ns", [None, 2.5])
def test_vhdl_export_runs_its_ghdl_testbench_on_every_row(tmp_path, clock_ns):
    """A VHDL export ships a VHDL-2008 testbench on the same vectors; verify() compiles and runs it with GHDL on
    all 1,000 rows (combinational, and a pipeline streaming a row per clock); an altered vector fails naming
    the row."""
    import shutil

    need("ghdl")
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10)).eval()
    cfg = {"name": "integer", "data_in_width": 5, "data_in_frac_width": 2, "weight_width": 5, "weight_frac_width": 4,
           "bias_width": 9}  # fmt: skip
    q = QuantizePass({"default": cfg})(analyze(trace(m, DS.test.x[:8]))).graph
    e = export(q, "vhdl", tmp_path / "my vhdl; touch PWNED", clock_ns=clock_ns)
    a = verify(e, q, verification_inputs(DS.test.x, 1000))
    assert a["ok"] and a["checked_by"] == "da4ml interpreter + GHDL testbench", a
    assert a["testbench"] == "ghdl: PASS: 1000 rows (of 1000 in tb/)", a
    tb = (tmp_path / "my vhdl; touch PWNED" / "tb" / "qfx_model_tb.vhd").read_text()
    assert f"CLOCKED : boolean := {str(clock_ns is not None).lower()};" in tb
    pm = json.loads((tmp_path / "my vhdl; touch PWNED" / "ports.json").read_text())
    assert ("clock" in pm) == (clock_ns is not None)
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "my vhdl; touch PWNED", bad)
    vec = bad / "tb" / "vectors_out.mem"
    lines = vec.read_text().splitlines()
    lines[3] = f"{int(lines[3], 16) ^ (1 << 2):0{len(lines[3])}x}"
    vec.write_text("\n".join(lines) + "\n")
    with pytest.raises(ToolError, match="FAIL row 3"):
        run_testbench(bad, rows=10, lang="vhdl")
    assert run_testbench(bad, rows=3, lang="vhdl") == "PASS: 3 rows"  # the rows before it still pass
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()  # no path text reached a shell


def test_ice40_place_and_route_achieves_a_faster_clock_with_more_stages(tmp_path, capsys):
    """nextpnr-ice40's timing analysis, an oracle independent of the delay model: the combinational export and a
    2.5 ns pipeline of the same graph, each between harness registers on an iCE40 HX8K; the pipeline runs at a
    clearly higher Fmax and holds flip-flops of its own. `qfx synth --ice40` prints it for a saved graph."""
    from qfx import cli
    from qfx.passes.export.pnr import ice40_fmax

    need("yosys")
    need("nextpnr-ice40")
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10)).eval()
    cfg = {"name": "integer", "data_in_width": 4, "data_in_frac_width": 2, "weight_width": 4, "weight_frac_width": 3,
           "bias_width": 8}  # fmt: skip
    q = QuantizePass({"default": cfg})(analyze(trace(m, DS.test.x[:8]))).graph
    export(q, "verilog", tmp_path / "comb")
    comb = ice40_fmax(tmp_path / "comb")
    assert comb["fmax_mhz"] > 1 and comb["flip_flops"] <= comb["harness_ffs"], comb  # only the harness registers
    g = tmp_path / "my graph; touch PWNED $(touch PWNED2)"  # no path text reaches a tool
    q.save(g)
    assert cli.main(["synth", "--graph", str(g), "--clock-ns", "2.5", "--ice40"]) == 0
    assert not list(tmp_path.rglob("PWNED*")) and not Path("PWNED").exists()
    out = capsys.readouterr().out
    fmax = float(re.search(r"Fmax ([\d.]+) MHz", out).group(1))
    assert fmax > 2 * comb["fmax_mhz"], (fmax, comb)  # 7 stages of <= 3 adder levels vs one block of 19
    assert int(re.search(r"~([\d,]+) flip-flops of the model", out).group(1).replace(",", "")) > 300
