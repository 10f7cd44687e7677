"""Analysis passes against independent oracles: ShapeProp, FlopCounterMode, sum(numel)."""

from __future__ import annotations

import copy
import dataclasses
import json

import networkx as nx
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode
from zoo_fixtures import zoo

from qfx.graph import QGraph, TracingError, trace
from qfx.graph.meta import update_meta
from qfx.passes import PassError, Pipeline
from qfx.passes.analysis import FlopsPass, ParamsPass, ReportPass, ShapePass, analyze

ZOO = zoo()
MAC_OPS = {"linear", "matmul", "bmm", "conv1d", "conv2d", "conv_transpose2d"}


@pytest.fixture(params=list(ZOO))
def case(request):
    model, inputs = ZOO[request.param]
    return request.param, model, inputs


def test_shapes_match_shapeprop(case):
    _, model, inputs = case
    g = analyze(trace(model, inputs))
    ref = fx.symbolic_trace(copy.deepcopy(model).eval())
    ShapeProp(ref).propagate(*inputs)
    ref_shapes = {n.name: n.meta.get("tensor_meta") for n in ref.graph.nodes}
    checked = 0
    for n in g.nodes:
        tm = ref_shapes[n.name]
        if tm is None or not hasattr(tm, "shape"):
            continue
        assert g.meta(n).out_shape == tuple(tm.shape), n.name
        assert g.meta(n).out_dtype == str(tm.dtype).removeprefix("torch."), n.name
        checked += 1
    assert checked >= 3


def test_fake_tensor_shapes_equal_real(case):
    _, model, inputs = case
    real = analyze(trace(model, inputs))
    fake = trace(model, inputs)
    Pipeline([ShapePass(fake=True), FlopsPass(), ParamsPass()])(fake)
    assert [m.to_dict() for m in fake.metas()] == [m.to_dict() for m in real.metas()]


def test_flops_match_flopcounter(case):
    name, model, inputs = case
    g = analyze(trace(model, inputs))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        copy.deepcopy(model).eval()(*inputs)
    ours = sum(m.flops for m in g.metas() if m.op_type in MAC_OPS)
    assert ours == fc.get_total_flops(), name
    for m in g.metas():
        if m.op_type in MAC_OPS:
            assert m.flops == 2 * m.macs
    assert ours > 0


def test_params_equal_numel_shared_once(case):
    _, model, inputs = case
    g = analyze(trace(model, inputs))
    total = sum(m.params for m in g.metas())
    assert total == sum(p.numel() for p in model.parameters())


def test_tied_weights_counted_once():
    model, inputs = ZOO["tied-lm"]
    g = analyze(trace(model, inputs))
    assert sum(m.params for m in g.metas()) == 20 * 8 + 2 * 8 + 8 * 8 + 8


def test_analysis_idempotent_and_output_unchanged(case):
    _, model, inputs = case
    model.eval()
    before = model(*inputs)
    g = trace(model, inputs)
    analyze(g)
    first = json.loads(g.gm and __import__("qfx.graph.dump", fromlist=["to_json"]).to_json(g))
    analyze(g)
    second = json.loads(__import__("qfx.graph.dump", fromlist=["to_json"]).to_json(g))
    assert first == second
    torch.testing.assert_close(g.gm.eval()(*inputs), before, rtol=0, atol=0)
    torch.testing.assert_close(model(*inputs), before, rtol=0, atol=0)


def test_shape_pass_keeps_batchnorm_stats():
    model, inputs = ZOO["jsc-toy"]
    model.train()
    g = trace(model, inputs)
    g.gm.train()
    rm = g.gm.get_submodule("seq_blocks.0").running_mean.clone()
    ShapePass()(g)
    assert torch.equal(g.gm.get_submodule("seq_blocks.0").running_mean, rm)
    assert g.gm.training


def test_missing_prerequisite_is_clear():
    model, inputs = ZOO["jsc-tiny"]
    g = trace(model, inputs)
    with pytest.raises(PassError, match="requires.*shapes"):
        FlopsPass()(g)
    with pytest.raises(PassError, match="shapes"):
        Pipeline([FlopsPass(), ShapePass()])(g)
    res = Pipeline([ShapePass(), FlopsPass(), ParamsPass(), ReportPass()])(g)
    assert "total:" in res.info["report"]["text"]
    assert res.info["params"]["params"] == 117


def test_report_json_networkx_save_load(tmp_path, case):
    _, model, inputs = case
    g = analyze(trace(model, inputs))
    dg = g.to_networkx()
    assert isinstance(dg, nx.DiGraph) and dg.number_of_nodes() == len(g.nodes)
    assert nx.is_directed_acyclic_graph(dg)
    first = next(iter(dg.nodes(data=True)))[1]
    assert {"op_type", "out_shape", "flops", "params"} <= set(first)
    text = str(g)
    assert "FLOPs" in text and "total:" in text
    g.save(tmp_path / "g")
    g2 = QGraph.load(tmp_path / "g")
    assert [m.to_dict() for m in g2.metas()] == [m.to_dict() for m in g.metas()]
    torch.testing.assert_close(g2.gm.eval()(*inputs), g.gm.eval()(*inputs))
    c = g.copy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.meta(c.nodes[1]).flops = -1  # records are immutable
    update_meta(c.nodes[1], flops=-1)
    assert c.meta(c.nodes[1]).flops == -1
    assert g.meta(g.nodes[1]).flops != -1


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Gate()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.inner(x))


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_error_and_leaf_fix():
    x = torch.randn(2, 4)
    with pytest.raises(TracingError) as e:
        trace(Branchy(), x)
    msg = str(e.value)
    assert "'inner' (Gate)" in msg and "leaf_modules=[Gate]" in msg and "x.sum() > 0" in msg
    g = analyze(trace(Branchy(), x, leaf_modules=[Gate]))
    assert [m.op_type for m in g.metas()] == ["placeholder", "gate", "linear", "output"]


def helper_fn(x: torch.Tensor) -> torch.Tensor:
    return x if x.sum() > 0 else -x


class UsesHelper(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return helper_fn(x) * 2


def test_leaf_function_and_concrete_args():
    x = torch.randn(2, 4)
    with pytest.raises(TracingError, match="leaf_functions"):
        trace(UsesHelper(), x)
    g = trace(UsesHelper(), x, leaf_functions=[helper_fn])
    assert any(n.target is helper_fn for n in g.nodes)
    torch.testing.assert_close(g(x), UsesHelper()(x))


def test_trace_does_not_share_caller_model():
    model, inputs = ZOO["jsc-tiny"]
    g = trace(model, inputs)
    g.gm.get_submodule("seq_blocks.2").weight.data.zero_()
    assert model.seq_blocks[2].weight.abs().sum() > 0


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
        y = self.fc(x)
        if double:
            y = y * 2
        return y


def test_concrete_args_fix_python_control_flow():
    x = torch.randn(2, 4)
    with pytest.raises(TracingError):
        trace(Scaled(), (x,))
    m = Scaled()
    g = analyze(trace(m, (x, True), concrete_args={"double": True}))
    assert {"linear", "mul"} <= {mt.op_type for mt in g.metas()}
    torch.testing.assert_close(g(x, True), m(x, True))
