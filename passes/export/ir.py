"""A flat deployment IR read from a (quantized) graph: what every export format consumes.

Each FX node becomes a :class:`Layer` with a small op vocabulary (``input``, ``linear``,
``conv``, ``affine`` for batch norm, ``relu``, ``add``/``sub``/``mul``, ``reshape``,
``flatten``, ``maxpool``, ``global_avgpool``, ``identity``, ``output``), its parameters as the
exact values the graph computes with (already quantized where the graph quantizes them) and
the precision of every quantized input/weight/bias/output. Ops outside this vocabulary raise
:class:`ExportError` naming the node and what each format supports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from qfx.graph.meta import SHAPES, TensorPrecision, get_meta
from qfx.graph.registry import OP_TRAITS, OpRegistry, is_inplace
from qfx.graph.trace import QGraph
from qfx.passes.analysis import ShapePass
from qfx.passes.transforms.quantize.formats import code_range
from qfx.passes.transforms.quantize.modules import fold_batch_norm


def supported() -> str:
    """The op types the deployment IR lowers, read from its rule table (``IR_RULES``): a newly registered op
    appears here by itself."""
    from qfx.graph.registry import OP_TYPES

    names = [t for t, keys in OP_TYPES.items() if any(k in IR_RULES for k in keys)]
    return ", ".join(names) + " (batch norms fold to a per-channel affine; flatten/reshape keep the batch first)"




class OpTable(dict[str, Callable[..., Any]]):
    """A back end's table keyed by deployment-IR op (``linear``, ``relu`` ...): ``@table.register("op")``
    adds the function for op(s); a second registration of an op raises."""

    def __init__(self, concern: str) -> None:
        super().__init__()
        self.concern = concern

    def register(self, *ops: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            for op in ops:
                if op in self:
                    raise ValueError(f"{self.concern}: IR op {op!r} is already registered")
                self[op] = fn
            return fn

        return deco


class ExportError(ValueError):
    """The graph holds something a format cannot express; the message names the node."""


@dataclass
class Layer:
    name: str
    op: str
    inputs: list[str | float]  # producer node names, or Python scalars
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # role -> exact values used
    precision: dict[str, TensorPrecision] = field(default_factory=dict)  # data_in/weight/bias/data_out
    out_shape: tuple[int, ...] | None = None
    quantizers: dict[str, Any] = field(default_factory=dict)  # role -> its map quantizer (per-element precision)


def map_quantizers(m: nn.Module | None) -> dict[str, Any]:
    """``{role: quantizer}`` of a quantized module's quantizers that hold per-channel/element maps."""
    if m is None:
        return {}
    from qfx.graph.loadcheck import module_precisions

    if module_precisions(m) is None:
        return {}
    d = m.__dict__
    qs = d["quantizers"] if isinstance(d.get("quantizers"), dict) else {
        r: d.get(k) for k, r in (("qx", "data_in"), ("qw", "weight"), ("qb", "bias"))}  # fmt: skip
    return {r: q for r, q in qs.items() if q is not None and getattr(q, "widths", None) is not None}


def _unsupported(n: fx.Node, what: str, fmt: str) -> ExportError:
    return ExportError(f"{fmt}: node {n.name!r} ({what}) cannot be exported; supported: {supported()}")


def _param(module: nn.Module, role: str, value: torch.Tensor | None) -> torch.Tensor | None:
    """The values the quantized module computes with for ``role`` (quantizer applied)."""
    if value is None:
        return None
    q = getattr(module, {"weight": "qw", "bias": "qb"}[role], None)
    with torch.no_grad():
        return (q(value) if q is not None else value).detach().clone().float()


def _input_names(n: fx.Node, fmt: str) -> list[str | float]:
    out: list[str | float] = []
    for a in n.args:
        if isinstance(a, fx.Node):
            out.append(a.name)
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            out.append(float(a))
        else:
            raise _unsupported(n, f"argument {a!r}", fmt)
    return out


IRRule = Callable[[fx.Node, "nn.Module | None", str], Layer]
# op target (module class, function, method name; quantized forms resolve to their float op) -> the IR layer
# of one call of it: ``rule(node, module or None, export format)``. One registration per op for every form.
IR_RULES: OpRegistry[IRRule] = OpRegistry("deployment IR")
register_ir = IR_RULES.register
register_ir_op = IR_RULES.register_op


def _src(n: fx.Node) -> str:
    return n.args[0].name  # type: ignore[union-attr]


def _prec(n: fx.Node) -> dict[str, TensorPrecision]:
    return dict(get_meta(n).precision)


@register_ir(nn.Linear)
def _linear(n: fx.Node, m: nn.Module, fmt: str) -> Layer:
    p = {"weight": _param(m, "weight", m.weight)}
    if m.bias is not None:
        p["bias"] = _param(m, "bias", m.bias)
    return Layer(n.name, "linear", [_src(n)], {}, p, _prec(n))  # type: ignore[arg-type]


@register_ir(nn.Conv1d, nn.Conv2d)
def _conv(n: fx.Node, m: nn.Module, fmt: str) -> Layer:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise _unsupported(n, f"conv padding {m.padding!r}/{m.padding_mode}", fmt)
    p = {"weight": _param(m, "weight", m.weight)}
    if m.bias is not None:
        p["bias"] = _param(m, "bias", m.bias)
    attrs = {"stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups}
    attrs["kernel"] = list(m.kernel_size)
    op = "conv1d" if isinstance(m, nn.Conv1d) else "conv2d"  # the op registry's names (graph.registry)
    return Layer(n.name, op, [_src(n)], attrs, p, _prec(n))  # type: ignore[arg-type]


@register_ir(nn.BatchNorm1d, nn.BatchNorm2d)
def _batch_norm(n: fx.Node, m: nn.Module, fmt: str) -> Layer:

    if m.running_mean is None:
        raise _unsupported(n, "batch norm without running statistics", fmt)
    with torch.no_grad():
        scale, shift = fold_batch_norm(m)
    p = {"weight": _param(m, "weight", scale), "bias": _param(m, "bias", shift)}
    return Layer(n.name, "affine", [_src(n)], {}, p, _prec(n))  # type: ignore[arg-type]


@register_ir_op("relu")
def _relu(n: fx.Node, m: nn.Module | None, fmt: str) -> Layer:
    """ReLU quantizes its (non-negative) output: the precision is recorded as data_out."""
    prec = _prec(n)
    out = {"data_out": prec["data_in"]} if "data_in" in prec else {}
    return Layer(n.name, "relu", [_src(n)], {}, {}, out)


@register_ir(nn.MaxPool1d, nn.MaxPool2d)
def _maxpool(n: fx.Node, m: nn.Module, fmt: str) -> Layer:
    if m.dilation not in (1, (1, 1)) or m.ceil_mode or m.return_indices:
        raise _unsupported(n, "max pool with dilation/ceil_mode/indices", fmt)
    nd = 1 if isinstance(m, nn.MaxPool1d) else 2

    def tup(v: Any) -> list[int]:
        return list(v) if isinstance(v, tuple) else [v] * nd

    attrs = {"kernel": tup(m.kernel_size), "stride": tup(m.stride or m.kernel_size), "padding": tup(m.padding)}
    return Layer(n.name, f"max_pool{nd}d", [_src(n)], attrs)


@register_ir(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
def _global_avgpool(n: fx.Node, m: nn.Module, fmt: str) -> Layer:
    if m.output_size not in (1, (1,), (1, 1)):
        raise _unsupported(n, f"adaptive average pool to {m.output_size}", fmt)
    return Layer(n.name, "global_avgpool", [_src(n)])


@register_ir_op(*sorted(OP_TRAITS["reshape"]))  # views that keep the data's order: a batch-first reshape
def _reshape(n: fx.Node, m: nn.Module | None, fmt: str) -> Layer:
    return Layer(n.name, "reshape", [_src(n)])


@register_ir_op("dropout", "identity")
def _identity(n: fx.Node, m: nn.Module | None, fmt: str) -> Layer:
    return Layer(n.name, "identity", [_src(n)])


@register_ir_op("add", "sub", "mul")
def _arith(n: fx.Node, m: nn.Module | None, fmt: str) -> Layer:
    t = get_meta(n).op_type
    lay = Layer(n.name, t, _input_names(n, fmt), {}, {}, _prec(n))
    if len(lay.inputs) != 2 or n.kwargs:
        raise _unsupported(n, f"{t} with arguments {n.args} {dict(n.kwargs)}", fmt)
    return lay


def build_ir(graph: QGraph, fmt: str) -> list[Layer]:
    """The graph as a list of :class:`Layer` (requires the shapes analysis)."""
    if SHAPES not in graph.analyses:
        ShapePass()(graph)
    modules = dict(graph.gm.named_modules())
    layers: list[Layer] = []
    # in-place ops (relu_, x += y, ReLU(inplace=True)) overwrite their first argument: a later reader of
    # that value reads the in-place node's output, as the model computes it
    alias: dict[str, str] = {}
    for n in graph.gm.graph.nodes:
        lay = _layer_of(n, modules, fmt)
        lay.inputs = [alias.get(i, i) if isinstance(i, str) else i for i in lay.inputs]
        layers.append(lay)
        if n.op != "output" and is_inplace(n, modules) and n.args and isinstance(n.args[0], fx.Node):
            alias[alias.get(n.args[0].name, n.args[0].name)] = n.name
            alias[n.args[0].name] = n.name
    _check_reshapes(layers, fmt)
    return layers


# back ends (the ``fmt`` they build the IR for) that express rounding/overflow modes and per-channel/element maps
# on activations; the others get weights and biases in their enclosing per-tensor format (the same values) and
# refuse such activations naming the node
FULL_PRECISION = frozenset({"da4ml", "ebops", "verify"})
_CONSTANT_ROLES = ("weight", "bias")


def _plain_precision(n: fx.Node, prec: dict[str, TensorPrecision], fmt: str) -> dict[str, TensorPrecision]:
    """``prec`` as a back end outside :data:`FULL_PRECISION` can express it (see there)."""
    out = dict(prec)
    for r, p in prec.items():
        if p.plain:
            continue
        if r in _CONSTANT_ROLES:  # quantized constants are exact in the enclosing format under any mode
            out[r] = TensorPrecision(p.fmt, p.width, p.frac)
        else:
            raise ExportError(
                f"{fmt}: node {n.name!r} quantizes {r} as {p} (rounding {p.round}, overflow {p.overflow}, per "
                f"{p.granularity}); {fmt} expresses only per-tensor half-to-even saturating activations: export "
                "to verilog, vhdl or da4ml-hls"
            )
    return out


def _layer_of(n: fx.Node, modules: dict[str, nn.Module], fmt: str) -> Layer:
    """The IR layer of node ``n`` (its rule from :data:`IR_RULES`)."""
    meta = get_meta(n)
    bad = {r: str(p) for r, p in meta.precision.items() if code_range(p) is None}
    if bad:
        raise ExportError(f"{fmt}: node {n.name!r} uses {bad}; only integer fixed point can be exported")
    for r, p in meta.precision.items():
        if code_range(p)[0] < 0 and p.width < 2:
            raise ExportError(f"{fmt}: node {n.name!r} {r} is a 1-bit signed integer; exports need width >= 2")
    if n.op == "placeholder":
        return Layer(n.name, "input", [], out_shape=meta.out_shape)
    if n.op == "output":
        outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
        if not all(isinstance(o, fx.Node) for o in outs):
            raise _unsupported(n, "non-tensor or nested outputs", fmt)
        return Layer(n.name, "output", [o.name for o in outs])
    if n.op == "get_attr":
        raise _unsupported(n, "a tensor attribute used as data", fmt)
    m = modules[n.target] if n.op == "call_module" else None  # type: ignore[index]
    rule = IR_RULES.lookup(n, modules)
    if rule is None:
        what = f"module {type(m).__name__}" if m is not None and getattr(m, "node_op", None) is None else None
        raise _unsupported(n, what or f"op type {meta.op_type!r} ({meta.target})", fmt)
    lay = rule(n, m, fmt)
    lay.out_shape = meta.out_shape
    if fmt not in FULL_PRECISION:
        lay.precision = _plain_precision(n, lay.precision, fmt)
        return lay
    maps = map_quantizers(m)
    if lay.op == "relu" and "data_in" in maps:  # a ReLU's quantizer is its output's
        maps = {"data_out": maps["data_in"]}
    lay.quantizers = maps
    return lay


def _check_reshapes(layers: list[Layer], fmt: str) -> None:
    batch = next((lay.out_shape[0] for lay in layers if lay.op == "input" and lay.out_shape), None)
    for lay in layers:
        if lay.op == "reshape" and (not isinstance(lay.out_shape, tuple) or lay.out_shape[:1] != (batch,)):
            raise ExportError(f"{fmt}: node {lay.name!r}: only reshapes that keep the batch dimension first export")
