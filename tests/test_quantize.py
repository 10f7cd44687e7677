"""Quantizers against torch's fake-quant oracle; the quantize pass on the zoo."""

from __future__ import annotations

import copy
import tomllib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo_fixtures import zoo

from qfx.graph import trace
from qfx.passes import PassError
from qfx.passes.analysis import analyze
from qfx.passes.transforms.quantize import (
    QuantizeConfig,
    QuantizePass,
    SummaryPass,
    integer_quantize,
    minifloat_quantize,
)

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)


def fq(x: torch.Tensor, w: int, f: int, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
    lo = -(2 ** (w - 1)) if lo is None else lo
    hi = 2 ** (w - 1) - 1 if hi is None else hi
    return torch.fake_quantize_per_tensor_affine(x, 2.0**-f, 0, lo, hi)


@st.composite
def wf(draw):
    w = draw(st.integers(2, 32))
    return w, draw(st.integers(0, w))


@settings(max_examples=300, deadline=None)
@given(wf(), st.lists(floats, min_size=1, max_size=64))
def test_integer_equals_fake_quantize(wfr, xs):
    w, f = wfr
    x = torch.tensor(xs, dtype=torch.float32)
    torch.testing.assert_close(integer_quantize(x, w, f), fq(x, w, f), rtol=0, atol=0)


@settings(max_examples=200, deadline=None)
@given(wf(), st.lists(st.integers(-(2**12), 2**12), min_size=1, max_size=32))
def test_integer_ties_half_even(wfr, ks):
    """x exactly halfway between two grid points (k + 0.5) * 2^-f: ties and saturation."""
    w, f = wfr
    x = (torch.tensor(ks, dtype=torch.float64) + 0.5) * 2.0**-f
    x = x.float()
    torch.testing.assert_close(integer_quantize(x, w, f), fq(x, w, f), rtol=0, atol=0)
    q = integer_quantize(x, w, f) * 2**f
    assert (q >= -(2 ** (w - 1))).all() and (q <= 2 ** (w - 1) - 1).all()


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 30), st.lists(floats, min_size=1, max_size=32), st.data())
def test_unsigned_equals_fake_quantize(w, xs, data):
    f = data.draw(st.integers(0, w))
    x = torch.tensor(xs)
    torch.testing.assert_close(integer_quantize(x, w, f, signed=False), fq(x, w, f, 0, 2**w - 1), rtol=0, atol=0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-65504, 65504, allow_nan=False, width=32), min_size=1, max_size=64))
def test_minifloat_e5m10_is_float16(xs):
    x = torch.tensor(xs)
    torch.testing.assert_close(minifloat_quantize(x, 16, 5), x.half().float(), rtol=0, atol=0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32), min_size=1, max_size=64))
def test_minifloat_e8m7_is_bfloat16(xs):
    x = torch.tensor(xs)
    torch.testing.assert_close(minifloat_quantize(x, 16, 8), x.bfloat16().float(), rtol=0, atol=0)


def test_minifloat_saturates_and_has_subnormals():
    # e=4, m=3, bias 7: max = 1.875 * 2^8 = 480, smallest subnormal 2^-9
    x = torch.tensor([1e6, -1e6, 2.0**-9, 2.0**-11, 0.0])
    torch.testing.assert_close(minifloat_quantize(x, 8, 4), torch.tensor([480.0, -480.0, 2.0**-9, 0.0, 0.0]))


def test_ste_gradient_passes_through():
    from qfx.graph.meta import TensorPrecision
    from qfx.passes.transforms.quantize.quantizers import make_quantizer

    q = make_quantizer(TensorPrecision("integer", 4, 2))
    x = torch.linspace(-5, 5, 11, requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(11))


INT = {"name": "integer"}


def _cfg(w: int, f: int | str = "NA", **extra):
    c = {"name": "integer"}
    for r in ("data_in", "weight", "bias"):
        c[f"{r}_width"], c[f"{r}_frac_width"] = w, f
    c.update(extra)
    return {"config": c}


ZOO = zoo()


@pytest.mark.parametrize("name", ["jsc-toy", "jsc-s", "cnn", "transformer", "ops-cnn"])
def test_32_16_matches_fp32(name):
    model, inputs = ZOO[name]
    model.eval()
    g = analyze(trace(model, inputs))
    types = ["linear", "conv1d", "conv2d", "relu", "add", "sub", "mul", "matmul", "bmm"]
    cfg = {"by": "type", **{t: _cfg(32, 16) for t in types}}
    r = QuantizePass(cfg)(g)
    assert r.modified and r.info["quantized"]
    # ops-cnn sums ~10^3 terms to a value near 26: there 1e-4 is float32 rounding, so compare relatively
    rtol = 1e-5 if name == "ops-cnn" else 0.0
    torch.testing.assert_close(r.graph(*inputs), model(*inputs), rtol=rtol, atol=1e-4)


def test_qlinear_exact_against_manual():
    model, (x,) = ZOO["jsc-tiny"]
    g = trace(model, x)
    cfg = {
        "by": "name",
        "seq_blocks_2": {
            "config": {
                "name": "integer",
                "data_in_width": 6,
                "data_in_frac_width": 3,
                "weight_width": 4,
                "weight_frac_width": 2,
                "bias_width": 5,
                "bias_frac_width": 1,
            }
        },
    }
    q = QuantizePass(cfg)(g).graph
    lin = q.gm.get_submodule("seq_blocks.2")
    h = torch.relu(model.seq_blocks[0].eval()(x))
    ref = F.linear(fq(h, 6, 3), fq(lin.weight, 4, 2), fq(lin.bias, 5, 1))
    with torch.no_grad():
        out = lin(h)
    assert torch.equal(out, ref)
    assert torch.equal(lin.weight, model.seq_blocks[2].weight)  # float weights carried over


def test_conv_bias_carried_over():
    model, inputs = ZOO["cnn"]
    g = trace(model, inputs)
    q = QuantizePass({"by": "type", "conv2d": _cfg(16, 8)})(g).graph
    for name in ("conv1", "conv2", "conv3"):
        src, dst = getattr(model, name), q.gm.get_submodule(name)
        assert type(dst).__name__ == "QConv2d"
        assert dst.bias is not None and torch.equal(dst.bias, src.bias)
        assert dst.groups == src.groups and dst.dilation == src.dilation


def test_by_type_linear_changes_exactly_linear_nodes_and_leaves_inputs():
    model, inputs = ZOO["transformer"]
    before = copy.deepcopy(model.state_dict())
    g = analyze(trace(model, inputs))
    gm_code = g.gm.code
    cfg = {"by": "type", "default": {"config": {"name": "NA"}}, "linear": _cfg(8)}
    cfg_copy = copy.deepcopy(cfg)
    r = QuantizePass(cfg)(g)
    linear = {m.name for m in g.metas() if m.op_type == "linear"}
    assert set(r.info["quantized"]) == linear
    assert {m.name for m in r.graph.metas() if m.quantized} == linear
    assert all(str(m.precision["weight"]) == "int8.4" for m in r.graph.metas() if m.quantized)
    assert cfg == cfg_copy
    assert g.gm.code == gm_code and not any(m.quantized for m in g.metas())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    hist = {row[0]: row[1:] for row in SummaryPass()(r.graph).info["histogram"]}
    assert hist["linear"] == [8, 8, 0] and hist["add"] == [3, 0, 3]


def test_priority_name_over_regex_over_type():
    model, inputs = ZOO["jsc-toy"]
    g = trace(model, inputs)
    cfg = QuantizeConfig(
        by_type={"linear": _cfg(8)["config"]},
        by_regex={r"seq_blocks_[58]": _cfg(6)["config"]},
        by_name={"seq_blocks_8": _cfg(4)["config"]},
    )
    q = QuantizePass(cfg)(g).graph
    w = {n: str(q.meta(n).precision["weight"]) for n in ("seq_blocks_2", "seq_blocks_5", "seq_blocks_8")}
    assert w == {"seq_blocks_2": "int8.4", "seq_blocks_5": "int6.3", "seq_blocks_8": "int4.2"}


def test_idempotent_and_restores_float():
    model, inputs = ZOO["cnn"]
    model.eval()
    g = trace(model, inputs)
    cfg = {"by": "type", "conv2d": _cfg(8), "relu": _cfg(8), "add": _cfg(8), "linear": _cfg(8)}
    q1 = QuantizePass(cfg)(g).graph
    q2 = QuantizePass(cfg)(q1).graph
    assert torch.equal(q1(*inputs), q2(*inputs))
    assert [m.to_dict() for m in q1.metas()] == [m.to_dict() for m in q2.metas()]
    back = QuantizePass({"by": "type"})(q1).graph
    torch.testing.assert_close(back(*inputs), model(*inputs), rtol=0, atol=0)


def test_relu_unsigned_and_method_forms():
    class M(torch.nn.Module):
        def forward(self, x, y):
            return (x.add(y).relu() - torch.sub(x, y)) @ y.transpose(0, 1)

    x, y = torch.randn(3, 4), torch.randn(3, 4)
    g = trace(M(), (x, y))
    cfg = {"by": "type", "relu": _cfg(6, 2), "add": _cfg(6, 2), "sub": _cfg(6, 2), "matmul": _cfg(6, 2)}
    q = QuantizePass(cfg)(g)
    assert set(q.info["quantized"].values()) == {"QAdd", "QReLU", "QSub", "QMatmul"}
    a = fq(torch.relu(fq(x, 6, 2) + fq(y, 6, 2)), 6, 2, 0, 63)
    ref = fq(a - (fq(x, 6, 2) - fq(y, 6, 2)), 6, 2) @ fq(y.t(), 6, 2)
    torch.testing.assert_close(q.graph(x, y), ref, rtol=0, atol=0)


def test_config_errors_are_clear():
    model, inputs = ZOO["jsc-tiny"]
    g = trace(model, inputs)
    with pytest.raises(
        PassError, match=r"unknown node.*'fc9'.*quantizable nodes: seq_blocks_0, seq_blocks_1, seq_blocks_2"
    ):
        QuantizePass({"by": "name", "fc9": _cfg(8)})(g)
    with pytest.raises(PassError, match="unsupported op type.*'lstm'.*supported: add, batch_norm1d, batch_norm2d, bmm"):
        QuantizePass({"by": "type", "lstm": _cfg(8)})(g)
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        QuantizeConfig.model_validate({"by": "type", "linear": {"config": {"name": "integer", "wieght_width": 8}}})
    with pytest.raises(ValueError, match="data_in_frac_width=9 must be in 0..data_in_width"):
        QuantizeConfig.model_validate({"linear": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 9}})
    r = QuantizePass({"by": "type", "default": {"config": {"name": "NA"}}})(g)
    assert not r.modified and any("quantizes nothing" in n for n in r.info["notes"])


def test_seed_004_toml_section_loads_and_applies():
    text = """
[passes.quantize]
by = "type"
[passes.quantize.default.config]
name = "NA"
[passes.quantize.linear.config]
name = "integer"
"data_in_width" = 8
"data_in_frac_width" = 4
"weight_width" = 8
"weight_frac_width" = 4
"bias_width" = 8
"bias_frac_width" = 4
"""
    cfg = QuantizeConfig.model_validate(tomllib.loads(text)["passes"]["quantize"])
    model, inputs = ZOO["jsc-toy"]
    r = QuantizePass(cfg)(trace(model, inputs))
    assert set(r.info["quantized"]) == {"seq_blocks_2", "seq_blocks_5", "seq_blocks_8"}


def test_quantized_graph_save_load_and_qat(tmp_path):
    model, inputs = ZOO["jsc-toy"]
    model.eval()
    q = QuantizePass({"by": "type", "linear": _cfg(8), "relu": _cfg(8)})(trace(model, inputs)).graph
    out = q(*inputs)
    q.save(tmp_path / "q")
    from qfx.graph import QGraph

    q2 = QGraph.load(tmp_path / "q")
    assert torch.equal(q2(*inputs), out)
    # QAT: gradients reach the float weights through the straight-through quantizers
    q.gm.train()
    q.gm(*inputs).sum().backward()
    assert q.gm.get_submodule("seq_blocks.2").weight.grad is not None
    assert model.seq_blocks[2].weight.grad is None


def test_shared_weights_mode_does_not_copy():
    model, inputs = ZOO["jsc-toy"]
    g = trace(model, inputs)
    q = QuantizePass({"by": "type", "linear": _cfg(8)}, copy_weights=False)(g).graph
    assert q.gm.get_submodule("seq_blocks.2").weight is g.gm.get_submodule("seq_blocks.2").weight
    q2 = QuantizePass({"by": "type", "linear": _cfg(8)})(g).graph
    assert q2.gm.get_submodule("seq_blocks.2").weight is not g.gm.get_submodule("seq_blocks.2").weight


def test_bypass_and_mase_regex_form():
    model, inputs = ZOO["jsc-toy"]
    g = trace(model, inputs)
    r = QuantizePass({"by": "type", "linear": _cfg(8, bypass=True)})(g)
    assert not r.modified and any("quantizes nothing" in n for n in r.info["notes"])
    cfg = {"by": "regex_name", "default": {"config": {"name": "NA"}}, r"seq_blocks_[25]": _cfg(6)}
    r = QuantizePass(cfg)(g)
    assert set(r.info["quantized"]) == {"seq_blocks_2", "seq_blocks_5"}
    r = QuantizePass({"by": "regex_name", "fc.*": _cfg(6)})(g)
    assert any("matches no quantizable node" in n for n in r.info["notes"])


def test_relu_output_uses_the_full_unsigned_range():
    """uint4.1 holds [0, 7.5]; the signed int4.1 range would stop at 3.5 (module, function and method forms)."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act = torch.nn.ReLU()

        def forward(self, x):
            return self.act(x), F.relu(x), x.relu()

    x = torch.linspace(-9, 9, 37)
    q = QuantizePass({"by": "type", "relu": _cfg(4, 1)})(trace(M(), x)).graph
    ref = fq(torch.relu(x), 4, 1, 0, 15)
    assert ref.max() == 7.5
    for out in q(x):
        assert torch.equal(out, ref)


def test_quantize_function_and_pipeline_errors():
    from qfx.passes import Pipeline
    from qfx.passes.analysis import FlopsPass, ShapePass
    from qfx.passes.transforms.quantize import quantize

    model, inputs = ZOO["jsc-toy"]
    q = quantize(model, {"by": "type", "linear": _cfg(8)}, inputs)
    assert {m.name for m in q.metas() if m.quantized} == {"seq_blocks_2", "seq_blocks_5", "seq_blocks_8"}
    assert quantize(q, {"by": "type"}).metas() is not None
    with pytest.raises(ValueError, match="needs example inputs"):
        quantize(model, {"by": "type"})
    res = Pipeline([ShapePass(), FlopsPass(), ShapePass()])(trace(model, inputs))
    assert set(res.info) == {"shapes", "flops", "shapes#2"}

    class Boom(ShapePass):
        name = "boom"

        def run(self, graph):
            raise RuntimeError("bad")

    with pytest.raises(
        PassError, match=r"pass 'boom' \(step 2 of 2; ran before it: shapes\) failed: RuntimeError: bad"
    ):
        Pipeline([ShapePass(), Boom()])(trace(model, inputs))


def test_register_function_rule_refuses_module_classes():
    import torch.nn as nn

    from qfx.passes.transforms.quantize.quantize_pass import register_function_rule

    with pytest.raises(TypeError, match="module classes.*register_module_rule"):
        register_function_rule("gelu", "QGelu", ("data_in",), keys=(nn.GELU,))


@pytest.mark.parametrize("name", ["shared", "inplace", "functional", "resnet18", "gpt"])
def test_rebuilder_equals_quantize_pass(name):
    """The search's rebuild (templates per structure, modules per node and precision, swapped in) gives the
    same outputs and node records as a fresh QuantizePass, config after config, structures revisited."""
    import random

    from arch_models import architectures

    from qfx.passes.transforms.quantize import quantizable_nodes
    from qfx.passes.transforms.quantize.rebuild import Rebuilder

    model, inputs = architectures()[name]
    g = analyze(trace(model, inputs))
    qn = sorted(quantizable_nodes(g))
    rng = random.Random(0)
    masks = [set(rng.sample(qn, k=max(1, len(qn) // 2))) for _ in range(2)] + [set(qn)]
    rb = Rebuilder(g, templates=2, modules=16, cache_bytes=1 << 14)  # small limits: eviction is exercised too
    prev = None
    for i in range(12):
        on = masks[i % 3]
        cfg = {"by": "name", **{n: _cfg(rng.choice([4, 6, 8]), rng.choice([2, 3, 4])) if n in on else {"name": "NA"}
                                for n in qn}}  # fmt: skip
        want = QuantizePass(cfg, copy_weights=False)(g).graph
        want.gm.eval()
        with rb.lease(cfg) as got:
            assert not got.gm.training
            with torch.no_grad():
                a = want.gm(*[t.clone() for t in inputs])
                b = got.gm(*[t.clone() for t in inputs])
            for x, y in zip(torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b), strict=True):
                assert torch.equal(x, y), (name, i)
            assert [m.to_dict() for m in want.metas()] == [m.to_dict() for m in got.metas()]
        assert got is not prev  # a new wrapper per call: memos keyed by graph object never see stale contents
        prev = got
        assert len(rb._modules) <= 16 and (rb._bytes <= 1 << 14 or len(rb._modules) == 1)
        assert rb._bytes == sum(size for _, size in rb._modules.values())
    with pytest.raises(PassError, match="unknown node"), rb.lease({"by": "name", "no_such_node": _cfg(8)}):
        pass


def test_rebuilder_threads_never_share_a_graph():
    """n_jobs threads share one evaluator: a lent graph is nobody else's until its lease ends, so a thread that
    yields between its rebuild and its forward still runs its own configuration; a nested lease of the same
    structure gets another template."""
    import threading
    import time

    from qfx.passes.transforms.quantize.rebuild import Rebuilder

    model, (x,) = ZOO["jsc-tiny"]
    g = analyze(trace(model, (x,)))
    cfgs = [{"by": "type", "linear": _cfg(w, 3), "relu": _cfg(w, 3)} for w in (3, 4, 6, 8)]  # one structure
    want = []
    for c in cfgs:
        q = QuantizePass(c)(g).graph
        q.gm.eval()
        with torch.no_grad():
            want.append(q.gm(x))
    assert all(not torch.equal(want[0], w) for w in want[1:])
    rb, errors, barrier = Rebuilder(g), [], threading.Barrier(len(cfgs))

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(30):
            with rb.lease(cfgs[i]) as q:
                time.sleep(0)  # let another thread rebuild in between
                with torch.no_grad():
                    if not torch.equal(q.gm(x), want[i]):
                        errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cfgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with rb.lease(cfgs[0]) as a, rb.lease(cfgs[1]) as b, torch.no_grad():  # nested, same thread, same structure
        assert a.gm is not b.gm and torch.equal(a.gm(x), want[0]) and torch.equal(b.gm(x), want[1])
