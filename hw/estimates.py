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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from graph.meta import get_meta
from graph.trace import QGraph, node_parameters

FLOAT_BITS = 32
MAC_TYPES = {"linear", "conv1d", "conv2d", "conv_transpose2d", "matmul", "bmm"}


@dataclass(frozen=True)
class TensorBits:
    node: str
    role: str  # weight / bias / param / data_in
    numel: int
    bits: int


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
            if isinstance(s, tuple) and s:
                return s[0]
    return 1


def tensor_bits(g: QGraph, activations: bool = False) -> list[TensorBits]:
    """Every parameter tensor (and optionally each quantizable node's input) with its width."""
    from passes.transforms.quantize.quantize_pass import quantizable_nodes

    out: list[TensorBits] = []
    seen: set[int] = set()
    gm = g.gm
    for n in gm.graph.nodes:
        m = get_meta(n)
        params = node_parameters(gm, n)
        for pname, p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            role = pname if pname in ("weight", "bias") else "param"
            prec = m.precision.get(role)
            out.append(TensorBits(n.name, role, p.numel(), prec.width if prec else FLOAT_BITS))
    if activations:
        if "shapes" not in g.analyses:
            raise ValueError("activation bits need the shapes analysis (run ShapePass first)")
        b = _batch(g)
        for name in quantizable_nodes(g):
            m = g.meta(name)
            prec = m.precision.get("data_in")
            for s in m.in_shapes:
                if isinstance(s, tuple):
                    out.append(TensorBits(name, "data_in", math.prod(s) // b, prec.width if prec else FLOAT_BITS))
    return out


def bops(g: QGraph) -> int:
    """Bit operations per sample of MAC ops: MACs x operand bits (float operands count 32)."""
    if "flops" not in g.analyses:
        raise ValueError("BOPs need the flops analysis (run ShapePass and FlopsPass first)")
    b = _batch(g)
    total = 0
    for m in g.metas():
        if m.op_type in MAC_TYPES and m.macs:
            a = m.precision.get("data_in")
            w = m.precision.get("weight", a)
            total += (m.macs // b) * (a.width if a else FLOAT_BITS) * (w.width if w else FLOAT_BITS)
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
