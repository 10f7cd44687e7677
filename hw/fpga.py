"""FPGA cost of a quantized graph: EBOPs (cheap, every trial) and da4ml's LUTs and latency of its RTL.

- ``ebops`` (effective BOPs, in HGQ's sense): over every MAC of the deployment IR (linear, conv, folded
  batch norm), the bits of the quantized constant that are really used — the span from its lowest to its
  highest set bit of ``|code|`` (0 for a zero weight) — times the width of the input it multiplies; a
  conv counts each weight once per output position. Float operands count 32 bits.
- ``fpga_luts`` / ``fpga_latency``: the graph traced by da4ml (:mod:`qfx.passes.export.da4ml_backend`,
  the same logic ``qfx export --format verilog`` writes), its LUT estimate and adder depth. Estimated:
  the combinational datapath (CMVM adder graphs, biases, ReLUs, rounding/saturation); not estimated:
  control logic, pipeline registers, I/O. Each CMVM is solved once per (matrix, input intervals) and
  whole configurations are memoised, so a search pays each distinct layer configuration once.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from qfx.graph.trace import QGraph

FLOAT_BITS = 32
_MAC_OPS = ("linear", "conv", "affine")


def effective_bits(codes: np.ndarray) -> np.ndarray:
    """Per integer code: bit length of ``|code|`` without its trailing zeros (0 for 0)."""
    a = np.abs(codes.astype(np.int64))
    out = np.zeros(a.shape, dtype=np.int64)
    nz = a > 0
    v = a[nz]
    while True:  # strip trailing zeros (at most 63 rounds)
        even = (v & 1) == 0
        if not even.any():
            break
        v = np.where(even, v >> 1, v)
    out[nz] = np.floor(np.log2(v)).astype(np.int64) + 1
    return out


def ebops(graph: QGraph) -> float:
    """Effective bit operations per sample (see the module docstring)."""
    from qfx.passes.export.ir import build_ir

    total = 0.0
    for lay in build_ir(graph, "ebops"):
        if lay.op not in _MAC_OPS:
            continue
        w = lay.params["weight"].detach().double().numpy()
        pw, pin = lay.precision.get("weight"), lay.precision.get("data_in")
        bits = effective_bits(np.round(w * 2.0 ** (pw.frac or 0))) if pw else np.full(w.shape, FLOAT_BITS)
        b_in = pin.width if pin else FLOAT_BITS
        out = lay.out_shape or ()
        if lay.op == "linear":
            reuse = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        elif lay.op == "conv":
            reuse = int(np.prod(out[2:])) if len(out) > 2 else 1
        else:  # affine: one multiply per element of the channel
            reuse = int(np.prod(out[2:])) if len(out) > 2 else 1
        total += float(bits.sum()) * b_in * reuse
    return total


_MEMO: OrderedDict[tuple[Any, ...], tuple[float, float]] = OrderedDict()
_BY_GRAPH: weakref.WeakKeyDictionary[QGraph, tuple[float, float]] = weakref.WeakKeyDictionary()
MEMO_SIZE = 4096


def _config_key(graph: QGraph) -> tuple[Any, ...]:
    """The graph's identity for the memo: nodes with their targets and precisions, and a digest of the
    parameters' bytes (a search rebuilds every trial from the same weights)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in graph.gm.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    nodes = tuple(
        (n.name, str(n.target), tuple(sorted((r, str(p)) for r, p in graph.meta(n.name).precision.items())))
        for n in graph.gm.graph.nodes
    )
    return nodes, h.hexdigest()


def fpga_cost(graph: QGraph) -> tuple[float, float]:
    """``(LUTs, latency)`` of the graph's RTL as da4ml estimates them (see the module docstring)."""
    if graph in _BY_GRAPH:
        return _BY_GRAPH[graph]
    key = _config_key(graph)
    hit = _MEMO.get(key)
    if hit is None:
        from qfx.passes.export.da4ml_backend import trace_graph

        tr = trace_graph(graph)
        hit = (tr.luts, tr.latency)
        _MEMO[key] = hit
        if len(_MEMO) > MEMO_SIZE:
            _MEMO.popitem(last=False)
    _BY_GRAPH[graph] = hit
    return hit


def fpga_luts(graph: QGraph) -> float:
    return fpga_cost(graph)[0]


def fpga_latency(graph: QGraph) -> float:
    return fpga_cost(graph)[1]
