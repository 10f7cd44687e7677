"""Contract suite: every Pass over every zoo model, and golden ReportPass dumps.

Every pass: running it twice gives the same records and info (idempotent); it leaves the model's
outputs, parameters and graph code alone (a transform also leaves its input graph's records alone);
every analysis it ``provides`` is listed on every node's record. Golden dumps: the ReportPass table
of two zoo models is compared with ``tests/golden/`` (``QFX_UPDATE_GOLDEN=1`` rewrites them).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from zoo_fixtures import zoo

from qfx.graph import trace
from qfx.graph.meta import get_meta
from qfx.passes import Pass
from qfx.passes.analysis import CalibrationPass, FlopsPass, ParamsPass, ReportPass, ShapePass, analyze
from qfx.passes.debug import NumericsPass
from qfx.passes.transforms.quantize import QuantizePass, SummaryPass, quantizable_nodes
from qfx.passes.transforms.quantize.quantize_pass import quant_types

GOLDEN = Path(__file__).parent / "golden"
ZOO = zoo()
INT8 = {"name": "integer", "data_in_width": 8, "weight_width": 8, "bias_width": 8}


def _passes(float_graph) -> list[Pass]:
    every_type = {"by": "type", **{t: {"config": INT8} for t in quant_types()}}
    return [
        ShapePass(),
        ShapePass(fake=True),
        FlopsPass(),
        ParamsPass(),
        CalibrationPass(),
        CalibrationPass(method="max"),
        ReportPass(),
        ReportPass(fmt="json"),
        QuantizePass(every_type),
        SummaryPass(),
        NumericsPass(float_graph),
    ]


def _records(g) -> dict[str, dict]:
    return {n.name: get_meta(n).to_dict() for n in g.gm.graph.nodes}


def _state(g) -> tuple:
    with torch.no_grad():
        out = g.gm(*g.example_inputs)
    if not isinstance(out, torch.Tensor):
        out = torch.cat([o.flatten() for o in torch.utils._pytree.tree_leaves(out)])
    sd = {k: v.clone() for k, v in g.gm.state_dict().items()}
    return out.clone(), sd, g.gm.code


def _same_state(a: tuple, b: tuple) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2] == b[2]


def _comparable(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "plan"}


@pytest.mark.parametrize("model", list(ZOO))
def test_every_pass_honours_its_contract(model):
    m, inputs = ZOO[model]
    base = analyze(trace(m.eval(), inputs))
    if not quantizable_nodes(base):
        pytest.skip("no quantizable node")
    for p in _passes(base.copy()):
        g = base.copy()
        if p.name == "numerics":
            g = QuantizePass({"by": "type", "linear": {"config": INT8}, "conv2d": {"config": INT8}})(g).graph
        before_records, before_state = _records(g), _state(g)
        first = p(g)
        if p.in_place:
            assert first.graph is g
            assert _records(g).keys() == before_records.keys()
        else:
            assert first.graph is not g and _records(g) == before_records, f"{p.name} changed its input's records"
        _same_state(_state(g), before_state)  # the model computes what it computed before
        for a in p.provides:
            assert all(a in get_meta(n).analyses for n in first.graph.gm.graph.nodes), (p.name, a)
        records = _records(first.graph)
        second = p(first.graph if p.in_place else g)
        assert _records(second.graph) == records, f"{p.name} is not idempotent on {model}"
        assert _comparable(second.info) == _comparable(first.info) or p.name == "numerics"
        if p.name == "numerics":
            assert second.info["worst"] == first.info["worst"]


def test_passes_are_frozen_dataclasses_with_typed_options():
    for p in _passes(analyze(trace(*ZOO["jsc-tiny"]))):
        assert dataclasses.is_dataclass(p) and type(p).__dataclass_params__.frozen, type(p).__name__
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.name_of_nothing = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"ReportPass\(fmt='yaml'\): allowed values are 'table', 'json'"):
        ReportPass(fmt="yaml")
    with pytest.raises(TypeError, match=r"ShapePass\(fake='yes'\): expected bool"):
        ShapePass(fake="yes")
    with pytest.raises(TypeError, match=r"QuantizePass\(copy_weights=1\): expected bool"):
        QuantizePass({"by": "type"}, copy_weights=1)


def test_provides_and_in_place_are_enforced():
    from qfx.passes import PassError, PassResult

    @dataclasses.dataclass(frozen=True)
    class Lazy(Pass):
        name = "lazy"
        provides = ("lazy",)

        def run(self, graph):
            return PassResult(graph, False, {})

    @dataclasses.dataclass(frozen=True)
    class Sneaky(Pass):
        name = "sneaky"
        in_place = False

        def run(self, graph):
            return PassResult(graph, True, {})

    g = analyze(trace(*ZOO["jsc-tiny"]))
    with pytest.raises(PassError, match=r"provides 'lazy' but left \d+ node\(s\) unannotated: x"):
        Lazy()(g)
    with pytest.raises(PassError, match="says it returns a new graph but did not"):
        Sneaky()(g)


@pytest.mark.parametrize("model", ["jsc-s", "cnn"])
def test_report_matches_golden_dump(model):
    m, inputs = ZOO[model]
    text = ReportPass()(analyze(trace(m.eval(), inputs))).info["text"] + "\n"
    q = QuantizePass({"by": "type", "linear": {"config": INT8}, "relu": {"config": INT8}})(analyze(trace(m, inputs)))
    text += "\n" + ReportPass()(q.graph).info["text"] + "\n"
    path = GOLDEN / f"report_{model}.txt"
    if os.environ.get("QFX_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing {path}: run with QFX_UPDATE_GOLDEN=1 once and review the file"
    assert text == path.read_text(), f"ReportPass output of {model} changed; review and regenerate {path}"
