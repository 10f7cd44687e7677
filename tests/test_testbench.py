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
