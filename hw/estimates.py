"""Hardware estimates from a quantized graph's metadata: pure functions, no model execution.

Definitions (per sample, element-weighted):
- tensors: every parameter tensor of the graph (weights, biases, norm affine parameters,
  get_attr parameters) at its width — the quantized width (``width``, never width + frac)
  where the config quantizes it, else its float width (32); with ``activations=True``
  also the input activation of every quantizable node (per sample), at its data_in width
  if quantized, else 32.
- average bitwidth = sum(numel * bits) / sum(numel).
- memory density = compare_to / average bitwidth (compare_to defaults to 32 = FP32).
- memory bytes = sum(numel * bits) / 8 (bit-packed); model size = the same over parameters only.
- BOPs = sum over MAC ops of MACs(per sample) * weight-or-second-operand bits * data_in bits.
A tensor quantized with per-channel/element maps counts each element at its own width (a pruned element at
0 bits); BOPs read the mean widths of the maps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from qfx.graph.meta import get_meta, is_tensor_shape
from qfx.graph.registry import OP_TRAITS
from qfx.graph.trace import QGraph, node_parameters
from qfx.passes.analysis.flops import FLOP_RULES
from qfx.passes.export.ir import map_quantizers
from qfx.passes.transforms.quantize.quantize_pass import QUANT_RULES, quantizable_nodes

FLOAT_BITS = 32


@dataclass(frozen=True)
class TensorBits:
    node: str
    role: str  # weight / bias / param / data_in
    numel: int
    bits: float  # the width, or the mean width of a per-channel/element map


def average_bitwidth(tensors: Iterable[TensorBits]) -> float:
    """Element-weighted mean width; raises on an empty set (never a made-up default)."""
    ts = list(tensors)
    n = sum(t.numel for t in ts)
    if n == 0:
        raise ValueError("average_bitwidth: no tensors to average")
    return sum(t.numel * t.bits for t in ts) / n


def memory_density(avg_bitwidth: float, compare_to: float = 32) -> float:
    return compare_to / avg_bitwidth


def memory_bytes(tensors: Iterable[TensorBits]) -> float:
    return sum(t.numel * t.bits for t in tensors) / 8


def _batch(g: QGraph) -> int:
    for n in g.gm.graph.nodes:
        if n.op == "placeholder":
            s = get_meta(n).out_shape
            if is_tensor_shape(s) and s:
                return s[0]
    return 1


_VIEW_TYPES = OP_TRAITS["view"]


def _map_bits(modules: dict[str, nn.Module], n: fx.Node, role: str, shape: tuple[int, ...]) -> float | None:
    """Mean width of the map quantizer ``n``'s module applies to ``role`` over a tensor of ``shape``."""
    if n.op != "call_module":
        return None
    q = map_quantizers(modules[n.target]).get(role)  # type: ignore[index]
    if q is None:
        return None
    w = q.widths.to(torch.float64)
    if w.numel() == math.prod(shape):
        return float(w.mean())
    return float(w.expand(shape).mean())


def _use_bits(g: QGraph, consumer: fx.Node, value: fx.Node, modules: dict[str, nn.Module]) -> int:
    """Width at which ``consumer`` reads the parameter flowing in as ``value`` (32 if it reads floats)."""

    m = get_meta(consumer)
    if get_meta(consumer).op_type in _VIEW_TYPES:  # follow views of the parameter (w.t() into addmm)
        return max((_use_bits(g, u, consumer, modules) for u in consumer.users), default=FLOAT_BITS)
    rule = QUANT_RULES.lookup(consumer, modules)
    if rule is None or not m.quantized or not rule.arg_roles:
        return FLOAT_BITS
    roles = [r for a, r in zip(consumer.args, rule.arg_roles, strict=False) if a is value]
    widths = [m.precision[r].width if r in m.precision else FLOAT_BITS for r in roles if r]
    return max(widths, default=FLOAT_BITS)


def tensor_bits(g: QGraph, activations: bool = False) -> list[TensorBits]:
    """Every parameter tensor (and optionally each quantizable node's input) with its width.

    A parameter used by several nodes (a module called twice, tied embedding/head weights) is
    counted once, at the widest width any use reads it with: the width it must be stored at.
    This does not depend on graph order; the reported node is its first user.
    """

    gm = g.gm
    modules = dict(gm.named_modules())
    first: dict[int, tuple[str, str, int]] = {}  # id -> (node, role, numel)
    bits: dict[int, int] = {}
    for n in gm.graph.nodes:
        m = get_meta(n)
        for pname, p in node_parameters(gm, n):
            if n.op == "get_attr":
                b = max((_use_bits(g, u, n, modules) for u in n.users), default=FLOAT_BITS)
                role = "param"
            else:
                role = pname if pname in ("weight", "bias") else "param"
                prec = m.precision.get(role)
                b = prec.width if prec else FLOAT_BITS
                if prec is not None and prec.granularity != "tensor":
                    b = _map_bits(modules, n, role, tuple(p.shape)) or b
            first.setdefault(id(p), (n.name, role, p.numel()))
            bits[id(p)] = max(bits.get(id(p), 0), b)
    out = [TensorBits(node, role, numel, bits[i]) for i, (node, role, numel) in first.items()]
    if activations:
        if "shapes" not in g.analyses:
            raise ValueError("activation bits need the shapes analysis (run ShapePass first)")
        b = _batch(g)
        by_name = {n.name: n for n in gm.graph.nodes}  # one lookup per node (QGraph.node scans the graph)
        for name in quantizable_nodes(g):
            node = by_name[name]
            m = get_meta(node)
            prec = m.precision.get("data_in")
            for s in m.in_shapes:
                if is_tensor_shape(s):
                    w: float = prec.width if prec else FLOAT_BITS
                    if prec is not None and prec.granularity != "tensor":
                        w = _map_bits(modules, node, "data_in", tuple(s[1:])) or w
                    out.append(TensorBits(name, "data_in", math.prod(s) // b, w))
    return out


def bops(g: QGraph) -> int:
    """Bit operations per sample of MAC ops (FLOP rules marked ``mac``): MACs x operand bits
    (float operands count 32)."""

    if "flops" not in g.analyses:
        raise ValueError("BOPs need the flops analysis (run ShapePass and FlopsPass first)")
    b = _batch(g)
    modules = dict(g.gm.named_modules())
    total = 0
    for n in g.gm.graph.nodes:
        m = get_meta(n)
        rule = FLOP_RULES.lookup(n, modules)
        if rule is not None and rule.mac and m.macs:
            a, w = m.precision.get("data_in"), m.precision.get("weight", m.precision.get("data_in"))
            ba = (_map_bits(modules, n, "data_in", tuple(m.in_shapes[0][1:])) if a and a.maps else None) or (
                a.width if a else FLOAT_BITS)  # fmt: skip
            wt = getattr(modules.get(n.target), "weight", None) if n.op == "call_module" else None  # type: ignore[arg-type]
            bw = (_map_bits(modules, n, "weight", tuple(wt.shape)) if w and w.maps and wt is not None else None) or (
                w.width if w else FLOAT_BITS)  # fmt: skip
            total += round((m.macs // b) * ba * bw)
    return total


def hw_metrics(g: QGraph, compare_to: float = 32, activations: bool = False) -> dict[str, float]:
    """average_bitwidth, memory_density, memory_bytes, model_size (bytes), bops."""
    ts = tensor_bits(g, activations)
    avg = average_bitwidth(ts)
    out = {
        "average_bitwidth": avg,
        "memory_density": memory_density(avg, compare_to),
        "memory_bytes": memory_bytes(ts),
        "model_size": memory_bytes(t for t in ts if t.role != "data_in"),
    }
    if "flops" in g.analyses:
        out["bops"] = float(bops(g))
    return out
