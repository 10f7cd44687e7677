"""Rounding/overflow modes and per-element (map) precisions: reference math, da4ml circuits, records, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qfx.graph.meta import TensorPrecision, check_precision
from qfx.graph.trace import QGraph, trace
from qfx.passes.analysis import analyze
from qfx.passes.export.api import export, verification_inputs, verify
from qfx.passes.export.da4ml_backend import fixed
from qfx.passes.export.ir import ExportError
from qfx.passes.transforms.quantize import QuantizePass
from qfx.passes.transforms.quantize.quantizers import (
    MapQuantizer,
    _decode_quantizer,
    _encode_quantizer,
    integer_quantize,
    map_quantize,
)

MODES = [(r, o) for r in ("half_even", "half_up", "trunc") for o in ("saturate", "wrap")]


def _hand(v: float, w: int, f: int, signed: bool, rnd: str, ovf: str) -> float:
    """One value by the textbook definitions (Python ints, no torch)."""
    t = v * 2**f
    c = {"half_even": round(t), "half_up": math.floor(t + 0.5), "trunc": math.floor(t)}[rnd]
    lo, hi = (-(2 ** (w - 1)), 2 ** (w - 1) - 1) if signed else (0, 2**w - 1)
    c = min(max(c, lo), hi) if ovf == "saturate" else (c - lo) % (hi - lo + 1) + lo
    return c / 2**f


@pytest.mark.parametrize(("rnd", "ovf"), MODES)
@pytest.mark.parametrize(("w", "f", "signed"), [(3, 2, True), (4, 0, True), (3, 1, False), (2, 3, True)])
def test_integer_modes_equal_hand_reference(rnd, ovf, w, f, signed):
    step = 2.0**-f
    ties = [(k + 0.5) * step for k in range(-12, 12)]  # every tie, both signs
    bounds = [k * step for k in range(-(2**w) - 3, 2**w + 3)]  # codes at, inside and past both bounds
    odd = [(k + 0.25) * step for k in range(-12, 12)] + [(k + 0.75) * step for k in range(-12, 12)]
    vals = ties + bounds + odd
    got = integer_quantize(torch.tensor(vals, dtype=torch.float64), w, f, signed, rnd, ovf).tolist()
    assert got == [_hand(v, w, f, signed, rnd, ovf) for v in vals]


@pytest.mark.parametrize(("rnd", "ovf"), MODES)
def test_map_quantize_is_per_element_integer_quantize(rnd, ovf):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) * 4
    widths, fracs = torch.tensor([3, 5, 0, 8, 2, 6]), torch.tensor([1, 3, 2, -1, 0, 5])
    got = map_quantize(x, widths, fracs, True, rnd, ovf)
    for j in range(6):
        ref = (
            integer_quantize(x[:, j].clone(), int(widths[j]), int(fracs[j]), True, rnd, ovf)
            if widths[j]
            else 0 * x[:, j]
        )
        assert torch.equal(got[:, j], ref), j


@pytest.mark.parametrize(("rnd", "ovf"), MODES)
@pytest.mark.parametrize(("k", "i", "f"), [(1, 2, 2), (0, 3, 1), (1, -1, 4)])
def test_da4ml_circuit_of_every_mode_exact_for_every_code(rnd, ovf, k, i, f):
    from da4ml.trace import FixedVariableArray, FixedVariableArrayInput, comb_trace

    inp = FixedVariableArrayInput((1,))
    x = inp.quantize(1, 5, 6)
    w = k + i + f
    out = fixed(x, TensorPrecision("integer" if k else "uinteger", w, f, rnd, ovf))
    comb = comb_trace(inp, FixedVariableArray(out._vars))
    codes = np.arange(-(2**11), 2**11) / 64.0
    got = comb.predict(codes[:, None], n_threads=1).ravel()
    ref = integer_quantize(torch.tensor(codes, dtype=torch.float64), w, f, bool(k), rnd, ovf).numpy()
    assert np.array_equal(got, ref), np.flatnonzero(got != ref)[:5]


@pytest.mark.parametrize(("rnd", "ovf"), MODES)
def test_da4ml_constants_rounded_and_fitted_exactly(rnd, ovf):
    """A constant (e.g. the bias of a channel whose weights all quantize to 0) gets QuantizePass's value:
    da4ml does not wrap constants, which the half-to-even construction relied on (-0.125 became -0.5)."""
    from da4ml.trace import FixedVariable, FixedVariableArray, FixedVariableArrayInput

    inp = FixedVariableArrayInput((1,))
    for v in (-0.125, -0.75, -0.375, 0.375, 1.25, -3.5, 5.0, -7.9):
        for k, i, f in ((1, 1, 1), (1, 2, 0), (0, 2, 2), (1, 0, 3)):
            c = FixedVariable.from_const(v, hwconf=inp.hwconf)
            arr = FixedVariableArray(np.array([c], dtype=object), inp.solver_options, hwconf=inp.hwconf)
            p = TensorPrecision("integer" if k else "uinteger", k + i + f, f, rnd, ovf)
            got = float(fixed(arr, p)._vars[0].low)
            assert got == _hand(v, k + i + f, f, bool(k), rnd, ovf), (v, k, i, f)


def _model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    return m, torch.randn(64, 6)


@pytest.mark.parametrize(("rnd", "ovf"), MODES)
def test_graph_with_modes_exports_bit_identical_through_da4ml(tmp_path, rnd, ovf):
    m, x = _model()
    node = {"name": "integer", "data_in_width": 4, "data_in_frac_width": 2, "weight_width": 5, "bias_width": 8,
            "data_in_round": rnd, "data_in_overflow": ovf}  # fmt: skip
    q = QuantizePass({"default": node})(analyze(trace(m, x[:4]))).graph
    assert q.meta("_0").precision["data_in"].round == rnd
    e = export(q, "vhdl", tmp_path)  # checked by da4ml's interpreter
    agreement = verify(e, q, verification_inputs(x, 400))
    assert agreement["bit_identical"], agreement


def test_exporters_without_modes_refuse_naming_node_and_role(tmp_path):
    m, x = _model()
    node = {"name": "integer", "data_in_width": 4, "weight_width": 5, "data_in_round": "trunc"}
    q = QuantizePass({"default": node})(analyze(trace(m, x[:4]))).graph
    for fmt in ("qonnx", "onnx-qdq", "hls4ml", "torch"):
        with pytest.raises(ExportError, match=rf"{fmt}: node '_0' quantizes data_in as int4\.2:trn"):
            export(q, fmt, tmp_path / fmt)


def test_modes_and_maps_round_trip_through_a_saved_graph(tmp_path):
    m, x = _model()
    node = {
        "name": "integer",
        "data_in_width": 4,
        "weight_width": 5,
        "data_in_round": "half_up",
        "data_in_overflow": "wrap",
    }
    q = QuantizePass({"default": node})(analyze(trace(m, x[:4]))).graph
    mod = q.gm.get_submodule(q.node("_2").target)
    mod.__dict__["qw"] = MapQuantizer(torch.randint(0, 6, (3, 8)), torch.randint(-2, 5, (3, 8)))
    from qfx.graph.meta import update_meta

    update_meta(q.node("_2"), precision={**q.meta("_2").precision, "weight": mod.qw.precision})
    q.save(tmp_path / "g")
    back = QGraph.load(tmp_path / "g")
    assert back.meta("_0").precision == q.meta("_0").precision
    assert back.meta("_2").precision["weight"] == mod.qw.precision
    assert str(back.meta("_2").precision["weight"]).endswith(f"/element#{mod.qw.precision.maps[:8]}")
    assert torch.equal(back(x), q(x))


def test_map_quantizer_precision_is_the_enclosing_format():
    q = MapQuantizer(torch.tensor([3, 0, 4, 2, 8]), torch.tensor([2, 0, 1, -1, 3]))
    p = q.precision
    assert (p.fmt, p.width, p.frac, p.granularity) == ("integer", 8, 3, "element")  # 4 integer bits + 3 frac
    x = torch.linspace(-20, 20, 401).reshape(-1, 1).expand(-1, 5)
    vals = q(x)
    assert torch.equal(integer_quantize(vals.clone(), p.width, p.frac), vals)  # exact in the enclosing format


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda d: d.update(widths=d["widths"][:-1]), "list of 5 small integers"),
        (lambda d: d.update(widths=[40] * 5), "widths must be in 0..32"),
        (lambda d: d.update(fracs=[1.5] * 5), "list of 5 small integers"),
        (lambda d: d.update(shape=[5, 10**9]), "elements"),
        (lambda d: d.update(shape="5"), "shape is a list"),
        (lambda d: d.update(maps="0" * 32), "not the stated"),
        (lambda d: d.update(width=9), "not the stated"),
        (lambda d: d.update(round="nearest"), "round 'nearest'"),
        (lambda d: d.update(granularity="tensor"), "has no maps"),
        (lambda d: d.update(extra=1), "a quantizer is"),
        (lambda d: d.pop("shape"), "shape is a list"),
    ],
)
def test_crafted_map_quantizer_records_are_refused(edit, msg):
    d = _encode_quantizer(MapQuantizer(torch.tensor([3, 0, 4, 2, 8]), torch.tensor([2, 0, 1, -1, 3])))
    assert _decode_quantizer(dict(d)).precision.maps == d["maps"]
    edit(d)
    with pytest.raises(ValueError, match=msg):
        _decode_quantizer(d)


def test_precision_records_name_what_is_allowed():
    with pytest.raises(ValueError, match="allowed: half_even, half_up, trunc"):
        check_precision(TensorPrecision("integer", 8, 4, "stochastic"))
    with pytest.raises(ValueError, match="per-element precision needs maps"):
        check_precision(TensorPrecision("integer", 8, 4, granularity="element"))
    assert str(TensorPrecision("integer", 8, 4, "trunc", "wrap")) == "int8.4:trn:wrap"
    assert TensorPrecision("integer", 8, 4).as_dict() == {"fmt": "integer", "width": 8, "frac": 4}
