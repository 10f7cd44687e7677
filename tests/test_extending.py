"""Each extension is one registration per table (README "Extending"); nothing else is edited.

A toy op (a leaky ReLU of slope 1/8, as a module and as a function) is registered once for its op type,
FLOPs, quantization (module and function form), the deployment IR and each back end's table; it then
quantizes, counts FLOPs against an independent count, and exports bit-identically through every format, each
checked by its own executor on the digits test split plus saturating noise. A toy number format (an exact copy
of ``integer`` under another name) goes through the same exports, and a toy sampler and a toy metric are
registered and used by a search.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import optuna
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from qfx.graph import trace
from qfx.graph.meta import TensorPrecision, get_meta
from qfx.graph.registry import OP_TYPES, register_op_type
from qfx.passes.analysis import analyze
from qfx.passes.analysis.flops import flop_rule, mac_rule
from qfx.passes.export.api import EXPORT_FORMATS, export, verification_inputs, verify
from qfx.passes.export.da4ml_backend import fixed, register_da4ml
from qfx.passes.export.hls4ml_export import Fx, HlsStep, register_hls
from qfx.passes.export.ir import Layer, register_ir, register_ir_op
from qfx.passes.export.onnx_export import register_onnx
from qfx.passes.export.portable import _q, register_portable
from qfx.passes.transforms.quantize import NumberFormat, QuantizePass, register_format
from qfx.passes.transforms.quantize.config import IntegerQ
from qfx.passes.transforms.quantize.formats import FORMATS as NUMBER_FORMATS
from qfx.passes.transforms.quantize.formats import unregister_format
from qfx.passes.transforms.quantize.modules import QLinear, clone_as
from qfx.passes.transforms.quantize.quantize_pass import register_function_rule, register_module_rule
from qfx.passes.transforms.quantize.quantizers import make_quantizer
from qfx.search.metrics import Metric, register_metric, unregister_metric
from qfx.search.records import record_of
from qfx.search.samplers import SAMPLERS, SamplerSpec, register_sampler, unregister_sampler
from qfx.zoo.data import load_dataset

DS = load_dataset("digits")
SLOPE = 0.125


def toy_leaky(x: torch.Tensor) -> torch.Tensor:
    """The toy op's function form."""
    return F.leaky_relu(x, SLOPE)


class ToyLeaky(nn.Module):
    """The toy op's module form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return toy_leaky(x)


class QToyLeaky(ToyLeaky):
    """Its quantized module: the input quantized (role data_in), the output exact."""

    float_cls = ToyLeaky

    @classmethod
    def from_float(cls, m: nn.Module, roles: dict[str, TensorPrecision]) -> QToyLeaky:
        q = clone_as(cls, m)
        q.qx = make_quantizer(roles["data_in"])
        return q

    def to_float(self) -> nn.Module:
        return ToyLeaky()

    def qfx_source_key(self) -> type:
        return ToyLeaky

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return toy_leaky(self.qx(x))


# --- the registrations: one per table --------------------------------------------------------------------
register_op_type("toy_leaky", ToyLeaky, toy_leaky)


@flop_rule("toy_leaky")
def _toy_flops(c):  # a compare and a multiply per element
    return 0, 2 * c.out_numel


register_module_rule("toy_leaky", QToyLeaky, roles=("data_in",))
register_function_rule("toy_leaky", "QToyLeaky", ("data_in",))


@register_ir_op("toy_leaky")
def _toy_ir(n, m, fmt):
    return Layer(n.name, "toy_leaky", [n.args[0].name], {}, {}, dict(get_meta(n).precision))


@register_onnx("toy_leaky")
def _toy_onnx(b, lay, src):
    x = b.quant(src(0), lay.precision.get("data_in"), lay.name, f"node {lay.name!r} input")
    return b.op("LeakyRelu", [x], lay.name, alpha=SLOPE)


@register_portable("toy_leaky")
def _toy_portable(lay, ins, t):
    return F.leaky_relu(_q(ins[0], lay.precision.get("data_in")), SLOPE)


@register_hls("toy_leaky")
def _toy_hls(s: HlsStep):
    exact = Fx(s.cur.width + 3, s.cur.frac + 3, True, exact=True)  # x / 8 exactly
    return [(nn.LeakyReLU(SLOPE), {}, s.reader() or exact)]


@register_da4ml("toy_leaky")
def _toy_da4ml(lay, ins, env):
    x = fixed(ins[0], lay.precision.get("data_in"))
    pos = x.relu()
    return pos + (x - pos) * SLOPE


# --- a toy number format: integer under another name (and its unsigned variant) -----------------------------
class MyIntQ(IntegerQ):
    name: Literal["myint"]  # type: ignore[assignment]

    def roles(self) -> dict[str, TensorPrecision]:
        return {r: TensorPrecision("myint", p.width, p.frac) for r, p in super().roles().items()}


@pytest.fixture(scope="module")
def myint():
    integer, uinteger = NUMBER_FORMATS["integer"], NUMBER_FORMATS["uinteger"]
    register_format(dataclasses.replace(integer, name="myint", config=MyIntQ, unsigned="umyint"))
    register_format(dataclasses.replace(uinteger, name="umyint"))
    yield
    unregister_format("myint")
    unregister_format("umyint")


class Net(nn.Module):
    """A chain (what the hls4ml export takes) with the toy op in both forms and a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(64, 16), ToyLeaky()
        self.fc2, self.act2 = nn.Linear(16, 16), nn.ReLU()
        self.fc3, self.fc4 = nn.Linear(16, 12), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x))
        h = self.act2(self.fc2(h))
        return self.fc4(toy_leaky(self.fc3(h)))


def q(fmt: str, w: int, f: int, bw: int = 12, bf: int = 6) -> dict:
    return {"name": fmt, "data_in_width": w, "data_in_frac_width": f, "weight_width": w - 1,
            "weight_frac_width": f, "bias_width": bw, "bias_frac_width": bf}  # fmt: skip


def quantized_net(fmt: str):
    torch.manual_seed(0)
    g = analyze(trace(Net().eval(), DS.test.x[:8]))
    nodes = {"fc1": q(fmt, 8, 4), "act1": q(fmt, 7, 3), "fc2": q(fmt, 9, 6), "act2": q(fmt, 6, 3),
             "fc3": q(fmt, 5, 2), "toy_leaky": q(fmt, 6, 4), "fc4": q(fmt, 10, 5)}  # fmt: skip
    return g, QuantizePass({"by": "name", **nodes})(g).graph


def test_the_toy_op_is_traced_quantized_and_counted(myint):
    g, qg = quantized_net("integer")
    types = {n: get_meta(node).op_type for n, node in ((n.name, n) for n in g.gm.graph.nodes)}
    assert types["act1"] == types["toy_leaky"] == "toy_leaky"  # module and function form: one op type
    shapes = {}  # independent shapes: torch.fx's ShapeProp on a plain symbolic trace (through the toy op)
    plain = torch.fx.symbolic_trace(Net().eval())
    ShapeProp(plain).propagate(DS.test.x[:8])
    for n in plain.graph.nodes:
        if n.op == "call_module" or n.op == "call_function":
            shapes[n.name] = n.meta["tensor_meta"].shape
    for name, src in (("act1", "fc1"), ("toy_leaky", "fc3")):  # elementwise: the shape of what it reads
        m = get_meta(next(n for n in qg.gm.graph.nodes if n.name == name))
        assert m.precision["data_in"].fmt == "integer" and set(m.precision) == {"data_in"}
        assert get_meta(next(n for n in g.gm.graph.nodes if n.name == name)).flops == 2 * shapes[src].numel()
    # the quantized values equal the float op on the oracle's fixed-point input
    x = DS.test.x[:64]
    h = qg.gm.fc1(torch.fake_quantize_per_tensor_affine(x, 2.0**-4, 0, -128, 127))
    want = F.leaky_relu(torch.fake_quantize_per_tensor_affine(h, 2.0**-3, 0, -64, 63), SLOPE)
    assert torch.equal(qg.gm.act1(h), want)


@pytest.mark.slow  # hls4ml and Verilator compile
def test_toy_op_and_toy_format_export_bit_identically_everywhere(myint, tmp_path):
    fmt = "myint"  # the toy format on every node, the toy op in both forms
    _, qg = quantized_net(fmt)
    used = {get_meta(n).precision["data_in"].fmt for n in qg.gm.graph.nodes if get_meta(n).precision}
    assert used == {fmt, "u" + fmt}  # the ReLU's output takes the format's unsigned variant
    x = verification_inputs(DS.test.x, rows=1000)
    for f in EXPORT_FORMATS:
        e = export(qg, f, tmp_path / f)
        a = verify(e, qg, x)
        assert a["bit_identical"] and a["ok"] and a["samples"] == 1000, (f, a)


class FirstChoice(optuna.samplers.RandomSampler):
    """A toy sampler: the first choice of every dimension."""

    def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


def test_a_registered_sampler_and_metric_are_validated_and_used(tmp_path):
    from qfx.search.config import load_config
    from qfx.search.session import run_search

    def zero_weights(ctx):  # fraction of quantized linear weights that round to zero
        zeros = total = 0
        for n in ctx.graph.gm.graph.nodes:
            m = ctx.graph.modules.get(n.target) if n.op == "call_module" else None
            if isinstance(m, nn.Linear) and hasattr(m, "qw"):
                w = m.qw(m.weight)
                zeros, total = zeros + int((w == 0).sum()), total + w.numel()
        return zeros / max(total, 1)

    register_sampler(SamplerSpec("first", lambda sp, s: FirstChoice(seed=s), "the first choice of every dim"))
    register_metric(Metric("zero_weights", "hardware", "minimize", "fraction of weights that are 0", zero_weights))
    try:
        cfg = load_config("jsc_tiny_by_type", require_search=True)
        metrics = {"accuracy": {"scale": 1.0}, "zero_weights": {"scale": 1.0, "direction": "minimize"}}
        strategy = cfg.search.strategy.model_validate({**cfg.search.strategy.model_dump(), "metrics": metrics})
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"strategy": strategy})})
        run = run_search(cfg, out=tmp_path / "o", n_trials=3, sampler="first", sum_scaled_metrics=False)
        done = [t for t in run.study.trials if t.values]
        assert len(done) == 3 and len({str(sorted(t.params.items())) for t in done}) == 1
        first = {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in done[0].distributions.items()}
        assert done[0].params == first
        vals = [record_of(t).hardware_metrics["zero_weights"] for t in done]
        assert all(0 <= v <= 1 for v in vals)
        rand = run_search(cfg, out=tmp_path / "r", n_trials=4, sampler="random", seed=1, sum_scaled_metrics=False)
        assert len({record_of(t).hardware_metrics["zero_weights"] for t in rand.study.trials if t.values}) > 1
    finally:
        unregister_sampler("first")
        unregister_metric("zero_weights")
    assert "first" not in SAMPLERS
    with pytest.raises(ValueError, match="unknown metric"):
        cfg.search.strategy.model_validate({**cfg.search.strategy.model_dump(), "metrics": metrics})


def test_registering_a_target_twice_or_a_module_class_as_a_function_is_refused():
    with pytest.raises(ValueError, match="already listed under op type 'toy_leaky'"):
        register_op_type("toy_again", toy_leaky)
    with pytest.raises(ValueError, match="already registered"):
        register_op_type("toy_leaky")
    with pytest.raises(ValueError, match="already registered"):
        register_onnx("toy_leaky")(lambda b, lay, src: None)
    with pytest.raises(TypeError, match="module classes"):
        register_function_rule("toy_leaky", "QToyLeaky", ("data_in",), keys=(ToyLeaky,))
    assert OP_TYPES["toy_leaky"] == (ToyLeaky, toy_leaky)
    assert isinstance(NumberFormat, type)


# ---------------------------------------------------------------- a toy MAC op: a linear with a fixed mask


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a pruned layer as a new op)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", (torch.arange(n_in * n_out).reshape(n_out, n_in) % 3 != 0).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class QMaskedLinear(QLinear, MaskedLinear):
    float_cls = MaskedLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qw(self.weight * self.mask) if self.qw else self.weight * self.mask
        b = self.qb(self.bias) if self.qb and self.bias is not None else self.bias
        return F.linear(self._qx(x), w, b)


register_op_type("masked_linear", MaskedLinear, traits=("mac",))


@mac_rule("masked_linear")
def _masked_macs(c):
    return int(c.module.mask.sum()) * math.prod(c.in_shape(0)[:-1])  # the multiplies the mask keeps


register_module_rule("masked_linear", QMaskedLinear)


@register_ir(MaskedLinear)
def _masked_ir(n, m, fmt):
    """Lowered to the IR's linear with the masked weight: every cost rule and back end of linear applies."""
    with torch.no_grad():
        w = m.qw(m.weight * m.mask) if getattr(m, "qw", None) else m.weight * m.mask
        b = m.qb(m.bias) if getattr(m, "qb", None) else m.bias
    return Layer(n.name, "linear", [n.args[0].name], {}, {"weight": w.detach().clone(), "bias": b.detach().clone()},
                 dict(get_meta(n).precision))  # fmt: skip


class MaskedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = MaskedLinear(64, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_toy_mac_op_is_costed_like_the_linear_it_lowers_to():
    """EBOPs of the masked layer = a hand count over its kept weights; its LUTs = da4ml's of a plain linear
    holding the masked weight (an independent route to the same logic); never 0."""
    from qfx.hw.fpga import ebops, effective_bits, fpga_cost, fpga_luts, layer_costs

    torch.manual_seed(0)
    cfg = {"name": "integer", "data_in_width": 6, "data_in_frac_width": 3, "weight_width": 5, "weight_frac_width": 4,
           "bias_width": 8, "bias_frac_width": 4}  # fmt: skip
    net = MaskedNet().eval()
    g = analyze(trace(net, DS.test.x[:8]))
    assert get_meta(next(n for n in g.gm.graph.nodes if n.name == "fc1")).macs == 8 * int(net.fc1.mask.sum())
    q = QuantizePass({"default": cfg})(g).graph
    used = [  # the quantized constants each MAC multiplies by: fc1's masked weight, fc2's weight
        q.gm.fc1.qw(q.gm.fc1.weight * q.gm.fc1.mask).detach(),
        q.gm.fc2.qw(q.gm.fc2.weight).detach(),
    ]
    hand = sum(float(effective_bits(torch.round(w * 16).long().numpy()).sum()) * 6 for w in used)  # x input width
    assert ebops(q) == hand > 0
    plain = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        plain[0].weight.copy_(net.fc1.weight * net.fc1.mask)
        plain[0].bias.copy_(net.fc1.bias)
        plain[2].load_state_dict(net.fc2.state_dict())
    pq = QuantizePass({"default": cfg})(analyze(trace(plain, DS.test.x[:8]))).graph
    assert layer_costs(q)["fc1"] == layer_costs(pq)["_0"] and layer_costs(q)["fc1"][0] > 0
    assert fpga_luts(q) == fpga_luts(pq) and fpga_cost(q) == fpga_cost(pq)


def test_a_mac_op_without_a_cost_rule_raises_naming_it():
    from qfx.hw.fpga import ebops, fpga_luts
    from qfx.passes.export.ir import ExportError

    class Scaled(nn.Linear):
        pass

    register_op_type("scaled_linear_uncosted", Scaled, traits=("mac",))

    @register_ir(Scaled)
    def _ir(n, m, fmt):
        return Layer(n.name, "scaled_linear_ir", [n.args[0].name], {}, {"weight": m.weight.detach()}, {})

    g = analyze(trace(nn.Sequential(Scaled(64, 4)).eval(), DS.test.x[:8]))
    for metric in (ebops, fpga_luts):
        with pytest.raises(ExportError, match=r"node '_0' \(scaled_linear_uncosted\) is a MAC, but its IR op "
                                              r"'scaled_linear_ir' has no FPGA cost rule"):  # fmt: skip
            metric(g)
    with pytest.raises(ValueError, match="unknown trait"):
        register_op_type("toy_bad_trait", traits=("fast",))
