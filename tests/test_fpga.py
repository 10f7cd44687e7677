"""The FPGA back end: da4ml's trace of a quantized graph is bit-identical to the graph (its interpreter and
the Verilog run by Verilator), refuses what it cannot express, and its costs are usable as metrics."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from qfx.graph import QGraph, trace
from qfx.graph.meta import TensorPrecision
from qfx.passes.analysis import analyze
from qfx.passes.export import ExportError
from qfx.passes.export.api import export, verification_inputs, verify
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.passes.transforms.quantize.quantizers import integer_quantize
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

pytest.importorskip("da4ml")
from qfx.passes.export.da4ml_backend import fixed, synth, tools, trace_graph  # noqa: E402

DS = load_dataset("digits")
X = DS.test.x  # 360 rows
IN_CI = bool(os.environ.get("CI") or os.environ.get("QFX_CI"))


def need(tool: str) -> None:
    """Skip where a tool is absent, saying which; in CI (which installs them) absence is a failure."""
    if tools()[tool] is None:
        if IN_CI:
            pytest.fail(f"{tool} is not on PATH in CI (.ci/run installs it)")
        pytest.skip(f"{tool} is not on PATH (apt-get install {tool})")


@pytest.mark.parametrize(("k", "i", "f"), [(1, 2, 2), (0, 3, 1), (1, 1, 3), (1, 4, 0), (0, 0, 4), (1, -1, 5)])
def test_round_half_even_and_saturation_exact_for_every_code(k, i, f):
    from da4ml.trace import FixedVariableArray, FixedVariableArrayInput, comb_trace

    inp = FixedVariableArrayInput((1,))
    x = inp.quantize(1, 6, 6)  # 13-bit values with 6 fraction bits: every tie case is among them
    w = k + i + f
    out = fixed(x, TensorPrecision("integer" if k else "uinteger", w, f))
    comb = comb_trace(inp, FixedVariableArray(out._vars))
    codes = np.arange(-(2**12), 2**12) / 64.0
    got = comb.predict(codes[:, None], n_threads=1).ravel()
    ref = integer_quantize(torch.tensor(codes, dtype=torch.float64), w, f, signed=bool(k)).numpy()
    assert np.array_equal(got, ref), np.flatnonzero(got != ref)[:5]


def _random_config(g: QGraph, seed: int) -> dict:
    """Every quantizable node at its own width 2-12; fracs calibrated ("auto") from the graph's example rows."""
    rng = random.Random(seed)
    out: dict = {"by": "name"}
    for name in quantizable_nodes(g):
        dw, ww, bw = rng.randint(2, 12), rng.randint(2, 12), rng.randint(6, 12)
        out[name] = {
            "name": "integer",
            "data_in_width": dw,
            "data_in_frac_width": "auto",
            "weight_width": ww,
            "weight_frac_width": "auto",
            "bias_width": bw,
            "bias_frac_width": "auto",
        }
    return out


_FLOAT: dict[str, QGraph] = {}


def _float_graph(name: str) -> QGraph:
    if name not in _FLOAT:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same weights whatever thread count earlier tests left behind
        torch.manual_seed(0)
        kw = {"width": 4} if name == "cnn" else {}  # a narrow CNN keeps the unrolled RTL small
        m = build_model(name, DS.num_features, DS.num_classes, image_shape=DS.image_shape, **kw)
        train(m, DS, epochs=2, progress=False)
        torch.set_num_threads(threads)
        from qfx.passes.analysis.calibrate import CalibrationPass

        g = analyze(trace(m.eval(), X[:8]))
        _FLOAT[name] = CalibrationPass(inputs=(DS.train.x[:256],))(g).graph
    return _FLOAT[name]


def _quantized(name: str, seed: int) -> QGraph:
    g = _float_graph(name)
    return QuantizePass(_random_config(g, seed))(g).graph


@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-s", "cnn"])
def test_interpreter_bit_identical_on_test_split_and_saturating_rows(name):
    """Every configuration is bit-identical through da4ml's interpreter: the C++ one, or its Python reference
    executor where the C++ one rejects a multiplexer shift (da4ml 0.6; 3 of 8 random jsc-s configurations)."""
    import copy

    x = verification_inputs(X, 1000)
    verified, seeds = 0, 4 if name == "jsc-tiny" else 2  # jsc-s and cnn: a full CMVM search of ~15 s each
    for seed in range(seeds):
        q = _quantized(name, seed)
        assert any(p.fmt == "uinteger" for m in q.metas() for p in m.precision.values())  # ReLU outputs
        assert any(p.fmt == "integer" for m in q.metas() for p in m.precision.values())
        tr = trace_graph(q)
        ref = copy.deepcopy(q.gm).double().eval()(x.double()).detach().numpy().reshape(len(x), -1)
        got = tr.predict(x)
        assert np.array_equal(got, ref), (name, seed, tr.interpreter, float(np.abs(got - ref).max()))
        assert tr.luts > 0 and tr.latency > 0 and np.ptp(ref, axis=0).max() > 0  # a circuit, not a constant
        verified += 1
    assert verified == seeds


@pytest.mark.slow  # Verilator compiles the RTL, GHDL and Icarus run the testbenches
@pytest.mark.parametrize(("name", "clock_ns", "seed"), [("jsc-tiny", None, 0), ("jsc-tiny", 2.5, 0),
                                                        ("jsc-tiny", 5.0, 0), ("jsc-s", 2.5, 0), ("jsc-s", 10.0, 0),
                                                        ("cnn", 5.0, 0), ("cnn", 10.0, 7)])  # fmt: skip
def test_rtl_bit_identical_through_verilator_ghdl_and_icarus(name, clock_ns, seed, tmp_path):
    """Random widths 2-12 per layer, combinational or an II = 1 pipeline at a clock: Verilator (one row per clock,
    outputs after the latency) agrees with the graph on 1,000 rows (test split + saturating noise); the VHDL of
    the same design passes its GHDL testbench; the shipped Icarus testbench passes (every design here, on 4 rows
    where the export itself does not run it). The cnn's second clock takes another random configuration, half
    the size of the first (70k vs 149k LUTs: the suite's time)."""
    from qfx.passes.export.api import SIMULATORS, TESTBENCH_ROWS
    from qfx.passes.export.da4ml_backend import stage_levels
    from qfx.passes.export.testbench import run_testbench

    for tool in ("verilator", "ghdl", "iverilog"):
        need(tool)
    q = _quantized(name, seed)
    x = verification_inputs(X, 1000)
    e = export(q, "verilog", tmp_path / "v", clock_ns=clock_ns)
    a = verify(e, q, x)
    assert a["ok"] and a["bit_identical"] and a["interpreter_vs_rtl_identical"], a
    assert "Verilator" in a["checked_by"], a
    if e.handle.luts <= SIMULATORS["verilog"].max_luts:
        assert a["testbench"] == f"iverilog: PASS: {TESTBENCH_ROWS} rows (of 1000 in tb/)", a
    else:  # Icarus would take minutes at 1,000 rows: the testbench ships, the export says it did not run it
        assert any("tb/) was written, not run" in n for n in e.notes), e.notes
        if (name, clock_ns) == ("jsc-s", 2.5):  # ~10 s; a 150k-LUT cnn takes Icarus ~90 s even for 4 rows
            assert run_testbench(tmp_path / "v", rows=4) == "PASS: 4 rows"
    pipe = e.handle.pipeline
    assert (pipe is None) == (clock_ns is None)
    if pipe is not None:
        assert pipe.levels_per_stage == stage_levels(clock_ns) and pipe.stages >= 2
        assert pipe.stages * pipe.levels_per_stage >= e.handle.latency  # every adder level sits in some stage
        ports = json.loads((tmp_path / "v" / "ports.json").read_text())
        assert ports["clock"] == {"port": "clk", "period_ns": clock_ns, "stages": pipe.stages,
                                  "latency_cycles": pipe.stages, "initiation_interval": 1}  # fmt: skip
    v = export(q, "vhdl", tmp_path / "vhdl", clock_ns=clock_ns)
    b = verify(v, q, x)
    assert b["ok"] and b["bit_identical"] and "GHDL testbench" in b["checked_by"], b
    rows = 1000 if v.handle.luts <= SIMULATORS["vhdl"].all_rows_max_luts else TESTBENCH_ROWS
    assert b["testbench"] == f"ghdl: PASS: {rows} rows (of 1000 in tb/)", b


def test_vhdl_and_hls_written_and_checked(tmp_path):
    q = _quantized("jsc-tiny", 1)
    for fmt, path in (("vhdl", "src/qfx_model.vhd"), ("da4ml-hls", "src/qfx_model.hh")):
        e = export(q, fmt, tmp_path / fmt)
        assert verify(e, q, X)["ok"], e.agreement
        assert (tmp_path / fmt / path).is_file(), sorted(p.name for p in (tmp_path / fmt).rglob("*"))


def test_float_mac_and_unsupported_ops_refused_naming_the_node():
    g = _float_graph("jsc-s")
    lin = [n for n, t in quantizable_nodes(g).items() if t == "linear"]
    cfg = _random_config(g, 0)
    del cfg[lin[1]]  # that Linear stays float
    with pytest.raises(ExportError, match=rf"node '{lin[1]}' \(linear\) does not quantize data_in, weight"):
        trace_graph(QuantizePass(cfg)(g).graph)
    torch.manual_seed(0)
    t = analyze(trace(build_model("transformer", 16, 5).eval(), torch.randn(4, 16)))
    with pytest.raises(ExportError, match="node '.*' .*cannot be exported|has no fixed-point circuit"):
        trace_graph(QuantizePass({"by": "type"})(t).graph)


def test_input_read_at_two_precisions_refused():
    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)

    g = analyze(trace(Two().eval(), torch.randn(3, 4)))
    c = {"name": "integer", "weight_width": 6, "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}
    q = QuantizePass(
        {
            "by": "name",
            "a": {**c, "data_in_width": 8, "data_in_frac_width": 4},
            "b": {**c, "data_in_width": 6, "data_in_frac_width": 3},
            "add": {**c, "data_in_width": 12, "data_in_frac_width": 8},
        }
    )(g).graph
    with pytest.raises(ExportError, match=r"input must be read at one fixed-point precision.*a \(int8\.4\)"):
        trace_graph(q)


def test_cli_export_verilog_of_a_lying_meta_exits_nonzero(tmp_path, capsys):
    from qfx import cli

    q = _quantized("jsc-tiny", 0)
    q.save(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "meta.json").read_text())
    lin = next(n for n in meta["nodes"] if n["name"] == "seq_blocks_2")
    lin["precision"]["data_in"]["frac"] = lin["precision"]["data_in"]["frac"] + 1  # the modules say otherwise
    (tmp_path / "g" / "meta.json").write_text(json.dumps(meta))
    rc = cli.main(["export", "--graph", str(tmp_path / "g"), "--format", "vhdl", "--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert rc == 2, out
    assert err.startswith(f"error: {tmp_path / 'g' / 'meta.json'}: node 'seq_blocks_2': precision"), err  # at load
    assert not (tmp_path / "o").exists()


def test_cli_export_verilog_relative_out_with_spaces(tmp_path, capsys, monkeypatch):
    """The README's command shape: relative --graph and --out (here with spaces), run from another
    directory; Verilator and g++ run inside the project and get absolute paths."""
    need("verilator")
    from qfx import cli

    _quantized("jsc-tiny", 0).save(tmp_path / "my graph")
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["export", "--graph", "my graph", "--format", "verilog", "--out", "rtl out", "--data", "digits",
                   "--verify-rows", "400"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "da4ml interpreter + Verilator" in out
    assert (tmp_path / "rtl out" / "verilog" / "src" / "qfx_model.v").is_file()


def test_fpga_metrics_cached_and_ebops_counts_used_bits():
    from qfx.hw.fpga import effective_bits, fpga_cost
    from qfx.passes.export.da4ml_backend import CMVM_CACHE

    assert effective_bits(np.array([0, 1, 2, 3, -4, 6, 12, 127, -128])).tolist() == [0, 1, 1, 2, 1, 2, 2, 7, 1]
    q = _quantized("jsc-s", 1)  # a configuration the interpreter test traced: its CMVMs are cached (speed only)
    luts, lat = fpga_cost(q)
    misses = CMVM_CACHE.misses
    assert fpga_cost(_quantized("jsc-s", 1)) == (luts, lat)  # same configuration rebuilt: memo
    assert CMVM_CACHE.misses == misses
    tr = trace_graph(q)
    assert (tr.luts, tr.latency) == (luts, lat) and CMVM_CACHE.misses == misses  # CMVMs cached


@pytest.mark.slow  # yosys synthesis
def test_cli_synth_counts_cells(tmp_path, capsys):
    need("yosys")
    from qfx import cli

    g = _float_graph("jsc-tiny")  # 3-bit everywhere: a small netlist (the README's FPGA flow synthesizes jsc-s)
    c = {"name": "integer", **{f"{r}_width": 3 for r in ("data_in", "weight", "bias")},
         **{f"{r}_frac_width": 1 for r in ("data_in", "weight", "bias")}}  # fmt: skip
    QuantizePass({"by": "type", **{t: c for t in set(quantizable_nodes(g).values())}})(g).graph.save(tmp_path / "g")
    assert cli.main(["synth", "--graph", str(tmp_path / "g"), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "yosys synth_xilinx" in out and "da4ml estimate" in out
    cells = synth(tmp_path / "s")  # the same netlist again: the CLI printed these counts
    assert cells["LUT"] > 0 and cells["DSP"] == 0
    row = next(line for line in out.splitlines() if line.startswith("| yosys synth_xilinx"))
    assert [int(v) for v in row.split("|")[2:4]] == [cells["LUT"], cells["FF"]]
    # where the logic goes: per-layer shares that sum to the whole network's estimate
    table = out[out.index("per layer") :].splitlines()[3:]
    shares = [line for line in table if line.startswith("| ") and "whole network" not in line]
    whole = next(line for line in table if line.startswith("| whole network"))
    estimate = next(line for line in out.splitlines() if line.startswith("| da4ml estimate"))

    def luts(line: str) -> float:
        return float(line.split("|")[2].replace(",", ""))

    assert len(shares) >= 3 and sum(map(luts, shares)) == pytest.approx(luts(whole), abs=len(shares))
    assert luts(whole) == pytest.approx(luts(estimate), abs=1)


def test_cli_synth_without_yosys_names_it(tmp_path, capsys, monkeypatch):
    from qfx import cli

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    _quantized("jsc-tiny", 1).save(tmp_path / "g")
    assert cli.main(["synth", "--graph", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "yosys is not on PATH" in err and "Traceback" not in err


@pytest.mark.slow  # trains jsc-s (60 epochs), then traces each trial's RTL
def test_search_with_fpga_luts_objective(tmp_path):
    """configs/jsc_s_fpga.toml's search (accuracy vs fpga_luts) on jsc-tiny (the README test runs it on jsc-s):
    every evaluated trial's fpga_luts is the whole network's estimate of its best graph's logic."""
    from search_helpers import ROOT

    from qfx.search.config import load_config
    from qfx.search.session import run_search

    cfg = load_config(ROOT / "configs" / "jsc_s_fpga.toml")
    run = run_search(cfg.model_copy(update={"model": "jsc-tiny", "max_epochs": 2}), out=tmp_path, n_trials=4)
    best = json.loads((tmp_path / "best.json").read_text())
    assert "fpga_luts" in json.dumps(best)
    q = QGraph.load(tmp_path / "best_model")
    luts = {t.values[1] for t in run.study.trials if t.state.name == "COMPLETE"}
    assert trace_graph(q).luts in luts  # the saved best graph's logic is one the search scored


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_fpga_luts_is_the_whole_networks_and_layer_costs_are_cached_per_layer(seed):
    """The search metric fpga_luts is the whole network's LUT estimate of the export's logic (the per-layer sum was
    not: it missed ReLUs and re-quantization and counted logic pruned downstream, 0.73-1.53x); fpga_latency is its
    depth. layer_costs (per-layer reports) stay cached per layer configuration."""
    from qfx.hw import fpga

    g = _float_graph("jsc-tiny")
    cfg = _random_config(g, seed)
    q = QuantizePass(cfg)(g).graph
    tr = trace_graph(q)  # the export's logic
    assert fpga.fpga_cost(q) == (tr.luts, tr.latency)
    assert fpga.fpga_luts(q) == tr.luts > 0  # exactly the export's estimate
    assert fpga.fpga_latency(q) == tr.latency > 0  # the network's depth, as the export writes it
    costs = fpga.layer_costs(q)
    macs = [n for n, t in quantizable_nodes(g).items() if t in ("linear", "batch_norm1d")]
    assert set(costs) == set(macs)
    # one layer's width changed: only that layer's entry changes, the others come from the cache
    lin = next(n for n in macs if quantizable_nodes(g)[n] == "linear")
    cfg2 = {**cfg, lin: {**cfg[lin], "weight_width": 3 if cfg[lin]["weight_width"] != 3 else 4}}
    before = len(fpga._LAYERS)
    costs2 = fpga.layer_costs(QuantizePass(cfg2)(g).graph)
    assert len(fpga._LAYERS) == before + 1
    assert {n for n in macs if costs2[n] != costs[n]} <= {lin}


def test_fpga_timing_composed_from_layers_is_the_whole_trace_and_its_pipeline_exactly(monkeypatch):
    """The search's FPGA metrics compose the network from per-layer traces (cached by layer and input intervals):
    LUTs, depth, register bits and stages equal da4ml's for the whole trace and ``to_pipeline`` of it (retimed:
    the clocks below include cases where retiming changes the register bits), on random widths 2-12 of jsc-tiny,
    jsc-s and the narrow CNN (flatten, max pool, conv). The metric path never runs the whole trace."""
    from da4ml.trace.pipeline import to_pipeline

    from qfx.hw import fpga
    from qfx.passes.export import da4ml_backend
    from qfx.passes.export.da4ml_backend import stage_levels

    retimed = 0
    for name, seed in (("jsc-tiny", 0), ("jsc-tiny", 1), ("jsc-tiny", 4), ("jsc-s", 0), ("cnn", 1)):
        q = _quantized(name, seed)
        tr = trace_graph(q)
        with monkeypatch.context() as m:
            m.setattr(da4ml_backend, "trace_graph", lambda g: pytest.fail("the metrics traced the whole network"))
            got = {c: fpga.fpga_timing(q, c) for c in (None, 10.0, 5.0, 2.5)}
        assert (got[None].luts, got[None].depth, got[None].ffs, got[None].stages) == (tr.luts, tr.latency, 0, 0)
        for clock in (10.0, 5.0, 2.5):
            pipe = to_pipeline(tr.comb, stage_levels(clock), verbose=False)
            t = got[clock]
            assert (t.luts, t.depth, t.ffs, t.stages) == (tr.luts, tr.latency, pipe.reg_bits, len(pipe.solutions)), (
                name, seed, clock)  # fmt: skip
            assert t.latency_ns == len(pipe.solutions) * clock
            assert sum(r[1] for r in t.layers) == t.luts and sum(r[2] for r in t.layers) == t.ffs  # shares add up
            assert max(r[3] for r in t.layers) == t.depth
            retimed += to_pipeline(tr.comb, stage_levels(clock), retiming=False, verbose=False).reg_bits != t.ffs
    assert retimed >= 2  # the retiming replica was exercised, not only the plain cut


def test_a_changed_layer_retraces_only_itself_and_what_its_outputs_feed():
    """The per-layer memo: changing the last linear's weight width re-traces that layer and the layers after it
    whose inputs changed, nothing before it; the result is still the whole trace's."""
    from qfx.hw import fpga_compose
    from qfx.passes.export.da4ml_backend import FMT
    from qfx.passes.export.ir import build_ir

    g = _float_graph("jsc-tiny")
    cfg = _random_config(g, 11)
    fpga_compose.composed_timing(build_ir(QuantizePass(cfg)(g).graph, FMT), 7)
    lin = [n for n, t in quantizable_nodes(g).items() if t == "linear"][-1]
    cfg2 = {**cfg, lin: {**cfg[lin], "weight_width": 3 if cfg[lin]["weight_width"] != 3 else 4}}
    q2 = QuantizePass(cfg2)(g).graph
    layers = build_ir(q2, FMT)
    after = [lay.name for lay in layers][[lay.name for lay in layers].index(lin) :]
    misses = fpga_compose._LAYERS.misses
    c = fpga_compose.composed_timing(layers, None)
    assert 1 <= fpga_compose._LAYERS.misses - misses <= len(after) - 1  # the output layer is not traced
    tr = trace_graph(q2)
    assert (c.luts, c.depth) == (tr.luts, tr.latency)


def test_python_interpreter_fallback_equals_the_cpp_interpreter(monkeypatch):
    """Where da4ml's C++ interpreter rejects a multiplexer shift, its Python reference executor runs instead:
    the two agree row for row where both run (jsc-tiny), and the export says which one checked it."""
    q = _quantized("jsc-tiny", 1)
    tr = trace_graph(q)
    x = verification_inputs(X, 300)
    cpp = tr.predict(x)
    assert tr.interpreter == "da4ml interpreter"

    class Refusing:  # da4ml 0.6's C++ interpreter on such logic
        def __init__(self, comb):
            self.comb = comb

        def predict(self, *a, **k):
            raise RuntimeError("Unsupported msb_mux shift configuration")

        def __call__(self, row):
            return self.comb(row)

    tr.comb = Refusing(tr.comb)
    assert np.array_equal(tr.predict(x), cpp) and tr.interpreter.startswith("da4ml Python interpreter")


def test_a_da4ml_writer_assertion_is_an_export_error_naming_the_format(tmp_path, monkeypatch):
    from da4ml.codegen import RTLModel

    from qfx.passes.export.da4ml_backend import write_project

    def refuse(self):
        raise AssertionError("12557, Op(...), shift0=10, shift1=-8")

    monkeypatch.setattr(RTLModel, "write", refuse)
    with pytest.raises(ExportError, match=r"da4ml cannot write this logic as verilog \(12557"):
        write_project(trace_graph(_quantized("jsc-tiny", 0)), tmp_path, "verilog")


def test_layer_cost_memo_follows_the_weights_not_only_the_configuration():
    import copy

    from qfx.hw import fpga

    g = copy.deepcopy(_float_graph("jsc-tiny"))
    cfg = _random_config(g, 2)
    q = QuantizePass(cfg)(g).graph
    assert fpga.layer_costs(q) == fpga._layer_costs(q)  # the memo's answer is the IR path's
    lin = next(m for m in g.gm.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        lin.weight.mul_(-0.5)  # same configuration, other weights
    q2 = QuantizePass(cfg)(g).graph
    assert fpga.layer_costs(q2) == fpga._layer_costs(q2) != fpga.layer_costs(q)


def test_search_under_a_latency_budget_at_a_clock(tmp_path):
    """configs/jsc_s_fpga_clocked.toml's search on jsc-tiny: every evaluated trial records fpga_latency_ns within the
    40 ns budget at its 5 ns clock (= its stages x 5) and its flip-flops; points over it are refused before any
    evaluation; the best graph exports at that clock with the same stage count."""
    from search_helpers import ROOT

    from qfx import cli
    from qfx.hw.fpga import fpga_timing
    from qfx.search.config import load_config
    from qfx.search.records import record_of
    from qfx.search.session import run_search

    cfg = load_config(ROOT / "configs" / "jsc_s_fpga_clocked.toml")
    cfg = cfg.model_copy(update={"model": "jsc-tiny", "max_epochs": 2})  # the config's search, on a small model
    run = run_search(cfg, out=tmp_path, n_trials=5)
    done = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    assert done
    for t in done:
        hw = record_of(t).hardware_metrics
        assert hw["fpga_latency_ns"] <= 40.0 and hw["fpga_latency_ns"] == 5.0 * hw["fpga_latency_cycles"]
        assert hw["fpga_ffs"] > 0 and hw["fpga_latency"] >= 0  # depth 0: a network whose outputs are constants
    for t in run.study.trials:
        rec = record_of(t)
        if rec is not None and rec.refused:
            assert rec.hardware_metrics["fpga_latency_ns"] > 40.0 and not rec.software_metrics
    q = QGraph.load(tmp_path / "best_model")
    out = tmp_path / "rtl"
    rc = cli.main(["export", "--graph", str(tmp_path / "best_model"), "--format", "verilog", "--clock-ns", "5",
                   "--out", str(out), "--no-verify"])  # fmt: skip
    assert rc == 0
    ports = json.loads((out / "verilog" / "ports.json").read_text())
    assert ports["clock"]["stages"] == fpga_timing(q, 5.0).stages


def test_cpp_interpreter_is_cross_checked_against_the_python_executor():
    """da4ml 0.6's C++ interpreter is wrong on some wide logic (uniform 12-bit jsc-s: every row): every C++ run is
    cross-checked on rows spread over the batch against da4ml's Python executor, which computes every row on a
    difference, and the export says so."""
    q = _quantized("jsc-tiny", 1)
    tr = trace_graph(q)
    x = verification_inputs(X, 200)
    right = tr.predict(x)
    assert tr.interpreter == "da4ml interpreter"

    class Wrong:  # the C++ interpreter off by one code on every row, the Python executor untouched
        def __init__(self, comb):
            self.comb = comb

        def predict(self, xq, n_threads=1):
            return np.asarray(self.comb.predict(xq, n_threads=n_threads)) + 1.0

        def __call__(self, row):
            return self.comb(row)

    tr.comb = Wrong(tr.comb)
    assert np.array_equal(tr.predict(x), right)
    assert "Python interpreter" in tr.interpreter and "differed from it on 4 of 4" in tr.interpreter


@pytest.mark.slow  # Verilator compiles the RTL
def test_uniform_12_bit_exports_and_verifies_through_every_simulator(tmp_path):
    """The issue's widths >= 10 case: jsc-toy at 12 bits everywhere. da4ml writes a 33-bit constant as an unsized
    literal (Verilator: "Too many digits for 32 bit number"): the export sizes it; da4ml's C++ interpreter is wrong
    on some rows of this logic: the cross-check catches it and the Python executor, Verilator and the Icarus
    testbench all agree with the graph on 1,000 rows."""
    from tests.test_export import float_graph  # these weights give a 33-bit constant (the export sizes it)

    need("verilator")
    g = float_graph("jsc-toy")
    c = {"name": "integer", "data_in_width": 12, "data_in_frac_width": 6, "weight_width": 12, "weight_frac_width": 10,
         "bias_width": 12, "bias_frac_width": 6}  # fmt: skip
    q = QuantizePass({"by": "type", "default": c})(g).graph
    e = export(q, "verilog", tmp_path / "v")
    a = verify(e, q, verification_inputs(X, 1000))
    assert a["ok"] and a["bit_identical"] and a["interpreter_vs_rtl_identical"], a
    assert "Verilator" in a["checked_by"] and a["testbench"].startswith("iverilog: PASS"), a


def test_wide_unsized_literals_are_sized_and_nothing_else_changes(tmp_path):
    from qfx.passes.export.da4ml_backend import _size_wide_literals

    (tmp_path / "src").mkdir()
    wide = "1" + "0" * 32
    text = (f"assign a[32:0] = 'b{wide}; // x\nassign b = 9'b111111111;\nassign c = 'b101;\n"
            f"assign d = 40'b{'1' * 40};\n")  # fmt: skip
    (tmp_path / "src" / "qfx_model.v").write_text(text)
    assert _size_wide_literals(tmp_path) == 1
    out = (tmp_path / "src" / "qfx_model.v").read_text()
    assert out == text.replace(f"'b{wide}", f"33'b{wide}")


@pytest.mark.parametrize("shift", [50, 62, 90])
def test_deep_scale_factors_keep_constants_exact(shift):
    """da4ml scales a value by a power-of-two factor that shrinks layer by layer (2^-62 after five 12-bit jsc-s
    layers). At Python's default 28 Decimal digits such a factor is rounded and a constant added to the value
    comes out 1 LSB off, in every executor and the RTL (uniform 12-bit jsc-s: 1 row in 1,000 differed at the
    output). The back end traces with exact_decimals; the same circuit without it is wrong at 2^-62."""
    from da4ml.trace import FixedVariableArrayInput, comb_trace

    from qfx.passes.export.da4ml_backend import exact_decimals

    codes = np.arange(-2048, 2048) / 64  # every 12-bit code with 6 fraction bits

    def circuit_errors() -> int:
        inp = FixedVariableArrayInput((1,))
        x = inp.quantize(np.array([1]), np.array([5]), np.array([6]), "WRAP", "TRN")
        y = (x * 2.0**-shift) * np.array([1.6220703125]) + np.array([0.4375 * 2.0**-shift])  # a batch norm
        got = np.asarray(comb_trace(inp, y).predict(codes.reshape(-1, 1), n_threads=1)).ravel()
        return int((got != (codes * 1.6220703125 + 0.4375) * 2.0**-shift).sum())

    assert exact_decimals(circuit_errors)() == 0
    if shift == 62:
        assert circuit_errors() > 0  # da4ml 0.6 at the default precision: the bug this guards against
