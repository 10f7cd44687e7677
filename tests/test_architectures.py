"""Realistic architectures checked node by node against independent oracles.

Shapes against ShapeProp, MAC-op FLOPs per node against FlopCounterMode, parameters against
``sum(numel)`` of unique parameters, an int8 node against ``fake_quantize_per_tensor_affine``,
32/16-bit quantization against FP32, exactly-the-intended-nodes quantization (per call site),
untouched caller models and metadata, and a bit-identical save/load round trip.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from arch_models import GPTish, architectures
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from qfx.graph import QGraph, trace
from qfx.graph.meta import get_meta, update_meta
from qfx.graph.serialize import SerializationError
from qfx.hw import tensor_bits
from qfx.hw.estimates import average_bitwidth
from qfx.passes import Pipeline
from qfx.passes.analysis import FLOP_RULES, FlopsPass, ParamsPass, ShapePass, analyze
from qfx.passes.base import PassError
from qfx.passes.transforms.quantize import QuantizePass, SummaryPass, quantizable_nodes

ARCH = architectures()
NAMES = list(ARCH)


def qcfg(w: int, f: int) -> dict:
    c = {"name": "integer"}
    for r in ("data_in", "weight", "bias"):
        c[f"{r}_width"], c[f"{r}_frac_width"] = w, f
    return c


def fq(x: torch.Tensor, w: int, f: int) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, 2.0**-f, 0, -(2 ** (w - 1)), 2 ** (w - 1) - 1)


def node_outputs(gm: fx.GraphModule, inputs: tuple) -> dict[str, object]:
    """Every node's output (cloned, so later in-place ops do not change what was recorded)."""
    out: dict[str, object] = {}

    class Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            r = super().run_node(n)
            out[n.name] = r.clone() if isinstance(r, torch.Tensor) else r
            return r

    with torch.no_grad():
        Rec(gm).run(*[i.clone() for i in inputs])
    return out


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def close(a: object, b: object, rtol: float, atol: float) -> None:
    if isinstance(a, dict):
        for k in a:
            close(a[k], b[k], rtol, atol)
    elif isinstance(a, (tuple, list)):
        for x, y in zip(a, b, strict=True):
            close(x, y, rtol, atol)
    else:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def rel_err(a: object, b: object) -> float:
    """Largest norm-relative error over the output tensors."""
    if isinstance(a, dict):
        return max(rel_err(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return max(rel_err(x, y) for x, y in zip(a, b, strict=True))
    return float((a - b).norm() / a.norm())


def run(model: nn.Module, inputs: tuple) -> object:
    with torch.no_grad():
        return model(*[i.clone() for i in inputs])


@pytest.fixture(scope="module")
def analysed() -> dict[str, QGraph]:
    return {k: analyze(trace(m, x)) for k, (m, x) in ARCH.items()}


@pytest.mark.parametrize("name", NAMES)
def test_shapes_equal_shapeprop(name, analysed):
    model, inputs = ARCH[name]
    g = analysed[name]
    ref = fx.symbolic_trace(model)
    ShapeProp(ref).propagate(*[i.clone() for i in inputs])
    ours = {n.name: get_meta(n) for n in g.nodes}
    for n in ref.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if isinstance(tm, torch.fx.passes.shape_prop.TensorMetadata):
            assert ours[n.name].out_shape == tuple(tm.shape), n.name
            assert ours[n.name].out_dtype == str(tm.dtype).removeprefix("torch."), n.name


@pytest.mark.filterwarnings("ignore:TF32")
@pytest.mark.parametrize("name", NAMES)
def test_every_node_has_a_flop_rule_and_mac_ops_equal_flopcountermode(name, analysed):
    model, inputs = ARCH[name]
    g = analysed[name]
    assert FlopsPass()(g).info["no_rule"] == []
    counted: dict[str, int] = {}

    class PerNode(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            with FlopCounterMode(display=False) as fc:
                r = super().run_node(n)
            counted[n.name] = fc.get_total_flops()
            return r

    gm = copy.deepcopy(g.gm)
    # grad enabled: nn.MultiheadAttention takes its math path (its fused no-grad kernel is not counted);
    # mkldnn off: nn.LSTM decomposes into the matmuls FlopCounterMode counts (its CPU kernel reports 0);
    # SDPA on its math backend (FlopCounterMode does not count the fused CPU flash kernel)
    with (
        torch.enable_grad(),
        torch.backends.mkldnn.flags(enabled=False),
        sdpa_kernel(SDPBackend.MATH),
    ):
        PerNode(gm).run(*[i.clone() for i in inputs])
    modules = dict(g.gm.named_modules())
    mac_nodes = [n for n in g.nodes if (r := FLOP_RULES.lookup(n, modules)) is not None and r.mac]
    for n in mac_nodes:
        m = get_meta(n)
        if m.op_type == "lstm" and counted[n.name] == 0:
            pytest.fail("FlopCounterMode did not count the decomposed LSTM")
        assert m.flops == counted[n.name] and m.flops == 2 * m.macs, (n.name, m.flops, counted[n.name])
    assert sum(counted[n.name] for n in mac_nodes) == sum(counted.values())  # no MAC op missed


@pytest.mark.parametrize("name", NAMES)
def test_params_equal_unique_numel(name, analysed):
    model, _ = ARCH[name]
    g = analysed[name]
    assert sum(m.params for m in g.metas()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_one_int8_node_equals_fake_quantize(name, analysed):
    g = analysed[name]
    modules = g.modules
    target = next(
        (
            n
            for n in g.nodes
            if n.op == "call_module" and isinstance(modules[n.target], (nn.Linear, nn.Conv1d, nn.Conv2d))
        ),
        None,
    )
    if target is None:
        pytest.skip("no Linear/Conv module node")
    q = QuantizePass({"by": "name", target.name: qcfg(8, 4)})(g).graph
    _, inputs = ARCH[name]
    captured: dict[str, object] = {}

    class Grab(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            if n.name == target.name:
                captured["x"] = self.env[n.args[0]].clone()
            r = super().run_node(n)
            if n.name == target.name:
                captured["y"] = r
            return r

    with torch.no_grad():
        Grab(q.gm).run(*[i.clone() for i in inputs])
    fm = modules[target.target]
    w, b = fq(fm.weight, 8, 4), None if fm.bias is None else fq(fm.bias, 8, 4)
    x = fq(captured["x"], 8, 4)
    ref = F.linear(x, w, b) if isinstance(fm, nn.Linear) else fm._conv_forward(x, w, b)
    assert torch.equal(captured["y"], ref)


@pytest.mark.parametrize("name", NAMES)
def test_32_16_bits_match_fp32_everywhere(name, analysed):
    model, inputs = ARCH[name]
    g = analysed[name]
    types = sorted(set(quantizable_nodes(g).values()))
    q = QuantizePass({"by": "type", **{t: qcfg(32, 16) for t in types}})(g)
    assert set(q.info["quantized"]) == set(quantizable_nodes(g))
    assert rel_err(run(q.graph.gm, inputs), run(model, inputs)) <= 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_by_type_changes_exactly_that_type_and_caller_untouched(name, analysed):
    model, inputs = ARCH[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref_out = run(model, inputs)
    g = analysed[name]
    metas = [m for m in g.metas()]
    qn = quantizable_nodes(g)
    for t in sorted(set(qn.values())):
        r = QuantizePass({"by": "type", t: qcfg(6, 3)})(g)
        expected = {n for n, tt in qn.items() if tt == t}
        assert set(r.info["quantized"]) == expected
        assert {m.name for m in r.graph.metas() if m.quantized} == expected
        hist = {row[0]: row[1:] for row in SummaryPass()(r.graph).info["histogram"]}
        assert hist[t][1] == len(expected)
    assert list(g.metas()) == metas  # input records untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert same(run(model, inputs), ref_out)


@pytest.mark.parametrize("name", NAMES)
def test_by_name_changes_only_that_call_site(name, analysed):
    """Quantize the LAST quantizable node: every node not downstream of it stays bit-identical."""
    _, inputs = ARCH[name]
    g = analysed[name]
    target = list(quantizable_nodes(g))[-1]
    q = QuantizePass({"by": "name", target: qcfg(3, 1)})(g).graph
    assert [m.name for m in q.metas() if m.quantized] == [target]
    downstream: set[str] = set()
    frontier = [g.node(target)]
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u.name not in downstream:
                downstream.add(u.name)
                frontier.append(u)
    a, b = node_outputs(g.gm, inputs), node_outputs(q.gm, inputs)
    for n in g.nodes:
        if n.name != target and n.name not in downstream and n.op != "output":
            assert same(a[n.name], b[n.name]), n.name


def test_shared_linear_quantized_at_second_call_only():
    model, inputs = ARCH["shared"]
    g = analyze(trace(model, inputs))
    calls = [n.name for n in g.nodes if n.op == "call_module" and n.target == "fc"]
    assert calls == ["fc", "fc_1"]
    q = QuantizePass({"by": "name", "fc_1": qcfg(4, 2)})(g).graph
    a, b = node_outputs(g.gm, inputs), node_outputs(q.gm, inputs)
    assert torch.equal(a["fc"], b["fc"]) and not torch.equal(a["fc_1"], b["fc_1"])
    assert type(q.gm.get_submodule("fc")) is nn.Linear
    assert q.gm.get_submodule(q.node("fc_1").target).weight is q.gm.get_submodule("fc").weight  # shares params
    rows = {r[0]: r for r in SummaryPass()(q).info["nodes"]}
    assert rows["fc_1"][3] == "QLinear" and rows["fc"][3] == "-"
    # the shared ReLU module: quantizing one of its three calls leaves the other two float
    q2 = QuantizePass({"by": "name", "relu_1": qcfg(4, 2)})(g).graph
    c = node_outputs(q2.gm, inputs)
    assert torch.equal(a["relu"], c["relu"]) and not torch.equal(a["relu_1"], c["relu_1"])


def test_inplace_semantics_kept():
    model, inputs = ARCH["inplace"]
    g = analyze(trace(model, inputs))
    types = sorted(set(quantizable_nodes(g).values()))
    assert {"relu", "add", "mul", "linear"} <= set(types)
    q = QuantizePass({"by": "type", **{t: qcfg(32, 16) for t in types}})(g).graph
    torch.testing.assert_close(run(q.gm, inputs), run(model, inputs), rtol=1e-4, atol=1e-4)

    class Issue(nn.Module):  # the exact pattern from the bug report
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x * 1.0
            r = self.relu(h)
            return r + h

    x = torch.randn(4, 5)
    gi = trace(Issue(), x)
    qi = QuantizePass({"by": "type", "relu": qcfg(32, 16), "mul": qcfg(32, 16)})(gi).graph
    torch.testing.assert_close(qi(x), Issue()(x), rtol=1e-4, atol=1e-4)
    qi8 = QuantizePass({"by": "type", "relu": qcfg(8, 4)})(gi).graph
    r = torch.relu(x)
    expected = 2 * torch.fake_quantize_per_tensor_affine(r, 2.0**-4, 0, 0, 255)
    assert torch.equal(qi8(x), expected)  # h holds the quantized relu output too


@pytest.mark.parametrize("name", NAMES)
def test_analysis_after_quantization_same_totals(name, analysed):
    _, inputs = ARCH[name]
    g = analysed[name]
    types = sorted(set(quantizable_nodes(g).values()))
    q = QuantizePass({"by": "type", **{t: qcfg(8, 4) for t in types}})(g).graph
    res = Pipeline([ShapePass(), FlopsPass(), ParamsPass()])(q)
    assert res.info["flops"]["no_rule"] == []
    assert res.info["flops"]["flops"] == sum(m.flops for m in g.metas())
    assert res.info["flops"]["macs"] == sum(m.macs for m in g.metas())
    assert res.info["params"]["params"] == sum(m.params for m in g.metas())
    for a, b in zip(g.metas(), q.metas(), strict=True):
        assert a.op_type == b.op_type and a.out_shape == b.out_shape
        if b.quantized:  # the record describes what runs now
            assert b.op == "call_module" and b.target.endswith(type(q.gm.get_submodule(q.node(b.name).target)).__name__)


@pytest.mark.parametrize("name", NAMES)
def test_no_state_shared_between_input_and_output_graph(name, analysed):
    model, inputs = ARCH[name]
    g = analysed[name]
    before_meta = [m.to_dict() for m in g.metas()]
    before_out = run(g.gm, inputs)
    types = sorted(set(quantizable_nodes(g).values()))
    q = QuantizePass({"by": "type", **{t: qcfg(8, 4) for t in types}})(g).graph
    for n in q.nodes:  # change every record of the output graph
        m = get_meta(n)
        with pytest.raises(TypeError):
            m.precision["weight"] = None  # type: ignore[index]
        update_meta(n, in_shapes=((1,),), out_shape=(0,), flops=-1, precision={"data_in": None})
    with torch.no_grad():
        for p in q.gm.parameters():
            p.add_(1.0)
        for b in q.gm.buffers():
            if b.is_floating_point():
                b.add_(1.0)
    assert [m.to_dict() for m in g.metas()] == before_meta
    assert same(run(g.gm, inputs), before_out)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_identical(name, analysed, tmp_path):
    _, inputs = ARCH[name]
    g = analysed[name]
    types = sorted(set(quantizable_nodes(g).values()))
    q = QuantizePass({"by": "type", **{t: qcfg(8, 4) for t in types}})(g).graph
    for graph, d in ((g, tmp_path / "float"), (q, tmp_path / "q")):
        graph.save(d)
        back = QGraph.load(d)
        assert [n.name for n in back.nodes] == [n.name for n in graph.nodes]
        assert [m.to_dict() for m in back.metas()] == [m.to_dict() for m in graph.metas()]
        assert same(run(back.gm, inputs), run(graph.gm, inputs))
        res = Pipeline([ShapePass(), FlopsPass(), ParamsPass()])(back)
        assert res.info["flops"]["flops"] == sum(m.flops for m in g.metas())
        assert res.info["params"]["params"] == sum(m.params for m in g.metas())


def test_tied_parameter_counted_at_widest_use_independent_of_order():
    model, inputs = ARCH["gpt"]
    g = analyze(trace(model, inputs))
    q = QuantizePass({"by": "name", "lm_head": qcfg(8, 4)})(g).graph
    tb = {t.node: t for t in tensor_bits(q)}
    assert tb["wte"].bits == 32  # the embedding reads it in float: stored at 32 bits
    assert "lm_head" not in tb or tb["lm_head"].role == "bias"

    class Tied(nn.Module):
        def __init__(self, head_first: bool) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.head_first = head_first

        def forward(self, idx: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.head_first:
                logits = F.linear(h, self.emb.weight)
                return logits, self.emb(idx)
            e = self.emb(idx)
            return F.linear(h, self.emb.weight), e

    idx, h = torch.randint(0, 10, (2, 3)), torch.randn(2, 6)
    widths = []
    for head_first in (True, False):
        tg = analyze(trace(Tied(head_first), (idx, h)))
        lin = next(n for n in tg.nodes if get_meta(n).op_type == "linear")
        tq = QuantizePass({"by": "name", lin.name: qcfg(8, 4)})(tg).graph
        widths.append(average_bitwidth(tensor_bits(tq)))
        # head alone quantized while the embedding is float: stored at 32
    assert widths == [32.0, 32.0]
    model2 = GPTish()
    g2 = analyze(trace(model2, inputs))
    types = sorted(set(quantizable_nodes(g2).values()))
    q2 = QuantizePass({"by": "type", **{t: qcfg(8, 4) for t in types}})(g2).graph
    assert {t.node: t.bits for t in tensor_bits(q2)}["wte"] == 32  # embedding is never quantized


def test_functional_linear_and_addmm_quantized_by_type():
    model, inputs = ARCH["functional"]
    g = analyze(trace(model, inputs))
    lin = [n for n, t in quantizable_nodes(g).items() if t == "linear"]
    assert lin == ["linear", "addmm"]
    r = QuantizePass({"by": "type", "linear": qcfg(8, 4)})(g)
    assert set(r.info["quantized"]) == {"linear", "addmm"} and not any("no node" in n for n in r.info["notes"])
    x = inputs[0]
    h = torch.relu(F.linear(fq(x, 8, 4), fq(model.w1, 8, 4), fq(model.b1, 8, 4)))
    ref = torch.addmm(fq(model.b2, 8, 4), fq(h, 8, 4), fq(model.w2, 8, 4))
    assert torch.equal(node_outputs(r.graph.gm, inputs)["addmm"], ref)
    tb = {t.node: t.bits for t in tensor_bits(r.graph)}
    assert tb["w1"] == tb["b1"] == tb["w2"] == tb["b2"] == 8 and tb["mix"] == 32


def test_quantized_graph_compiles_and_exports():
    """torch.compile(fullgraph=True) with the default (inductor) backend and torch.export, bit-exact."""
    from qfx.zoo.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", 64, 10).eval()
    x = torch.randn(8, 64)
    g = trace(model, x)
    c = qcfg(8, 4)
    q = QuantizePass({"by": "type", "conv2d": c, "relu": c, "add": c, "linear": c})(g).graph
    with torch.no_grad():
        ref = q.gm(x)
        assert torch.equal(torch.compile(q.gm, fullgraph=True)(x), ref)
        torch._dynamo.reset()
        ep = torch.export.export(q.gm, (x,))
        assert torch.equal(ep.module()(x), ref)


def test_fake_shapes_agree_on_attention_and_lstm_and_fail_clearly_on_data_dependence():
    for name in ("vit-mha", "lstm", "gpt", "unet"):
        model, inputs = ARCH[name]
        real = ShapePass()(trace(model, inputs)).graph
        fake = ShapePass(fake=True)(trace(model, inputs)).graph
        for a, b in zip(real.metas(), fake.metas(), strict=True):
            assert (a.in_shapes, a.out_shape, a.out_dtype) == (b.in_shapes, b.out_shape, b.out_dtype), (name, a.name)

    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0].sum() * torch.ones(int((x > 0).sum()))

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dd = DataDependent()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dd(x) + 1

    g = trace(Wrap(), torch.randn(8), leaf_modules=[DataDependent])
    ShapePass()(g)
    with pytest.raises(PassError, match=r"node 'dd'.*fake tensors.*ShapePass\(\)"):
        ShapePass(fake=True)(trace(Wrap(), torch.randn(8), leaf_modules=[DataDependent]))


def test_load_refuses_unknown_classes_without_trust(tmp_path):
    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = Custom()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x) + 1

    x = torch.randn(3)
    g = trace(Outer(), x, leaf_modules=[Custom])
    g.save(tmp_path / "g")
    with pytest.raises(SerializationError, match="Custom.*allowlist.*trust=True"):
        QGraph.load(tmp_path / "g")
