"""FPGA cost of a quantized graph: EBOPs (cheap, every trial) and da4ml's LUTs and latency of its RTL.

- ``ebops`` (effective BOPs, in HGQ's sense): over every MAC of the deployment IR (linear, conv, folded
  batch norm), the bits of the quantized constant that are really used — the span from its lowest to its
  highest set bit of ``|code|`` (0 for a zero weight) — times the width of the input it multiplies; a
  conv counts each weight once per output position. Float operands count 32 bits.
- ``fpga_luts``: the whole network's LUT estimate of the logic the export writes (:func:`fpga_timing`, memoised per
  configuration and shared with ``fpga_latency``/``fpga_ffs``; a trace with one CMVM decomposition per matrix would
  be ~5x faster but was 4% off in LUTs and 5 adder levels shallower on random configurations). :func:`layer_costs`
  keeps each MAC layer traced alone (with its input in its ``data_in`` format or its ReLU producer's), cached per
  layer configuration; its sum is *not* the network's (it leaves out ReLUs and accumulator re-quantization and
  counts logic the whole trace prunes downstream: 0.73-1.53x on random jsc-s configurations), so no search metric
  reads it; :attr:`Timing.layers` gives each layer's share of the whole network's figures instead.
- :func:`fpga_timing`: the whole network at a clock: da4ml's pipeline of it at ``clock_ns`` (stages of
  :func:`~qfx.passes.export.da4ml_backend.stage_levels` adder levels, II = 1, exactly what
  ``qfx export --clock-ns`` writes): LUTs, adder depth, flip-flops (da4ml's register bits), stages, latency in
  cycles and ns (combinational: 0 flip-flops, latency = depth x the delay model's adder level). Composed from
  per-layer traces cached by (layer, exact input intervals) (:mod:`qfx.hw.fpga_compose`: the same figures as the
  whole trace and ``to_pipeline``, retiming included, tested on random jsc-tiny/jsc-s/cnn configurations; a
  configuration whose layers were all seen costs ~3 ms for jsc-s instead of a 0.2-0.6 s trace), memoised per
  configuration and clock; the search metrics ``fpga_latency`` (the whole network's adder depth, what the
  export writes: a sum of layer depths fell 1.03-2.3x short of it), ``fpga_ffs``, ``fpga_latency_cycles`` and
  ``fpga_latency_ns`` read it (clock: ``[fpga] clock_ns``).
- :func:`fpga_cost`: ``(LUTs, adder depth)`` of the combinational whole network (what ``qfx export --format
  verilog`` writes and ``qfx synth`` synthesizes), from :func:`fpga_timing`.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from qfx.graph.cache import LockedLRU
from qfx.graph.meta import get_meta
from qfx.graph.registry import OP_TRAITS, has_trait
from qfx.graph.trace import QGraph, target_value
from qfx.hw.fpga_compose import composed_timing
from qfx.hw.fpga_compose import layer_key as _layer_key
from qfx.passes.export.da4ml_backend import exact_decimals
from qfx.passes.export.ir import ExportError, Layer, OpTable, build_ir

FLOAT_BITS = 32

# IR op -> the number of times each weight is used per sample (its reuse), for the MAC IR ops the cost metrics
# count; a node whose op type has the "mac" trait must lower to one of these (else the metrics raise naming it)
MAC_COSTS = OpTable("fpga cost")


@MAC_COSTS.register("linear")
def _linear_reuse(lay: Layer) -> int:
    out = lay.out_shape or ()
    return int(np.prod(out[1:-1])) if len(out) > 2 else 1


@MAC_COSTS.register("conv1d", "conv2d", "affine")
def _channel_reuse(lay: Layer) -> int:
    """A conv weight is used once per output position; an affine (batch norm) scale once per element."""
    out = lay.out_shape or ()
    return int(np.prod(out[2:])) if len(out) > 2 else 1


def mac_layers(graph: QGraph, layers: list[Layer]) -> list[Layer]:
    """The IR layers the cost metrics count: each node whose op type has the "mac" trait, which must lower to an
    IR op of :data:`MAC_COSTS` (a MAC op without a cost rule raises naming it: it never costs 0)."""
    out = []
    for lay in layers:
        if lay.op in MAC_COSTS:
            out.append(lay)
        elif lay.op not in ("input", "output") and has_trait(graph.meta(lay.name).op_type, "mac"):
            raise ExportError(
                f"node {lay.name!r} ({graph.meta(lay.name).op_type}) is a MAC, but its IR op {lay.op!r} has no FPGA "
                f"cost rule; lower it to one of {', '.join(MAC_COSTS)} in its IR rule, or register one with "
                "qfx.hw.fpga.MAC_COSTS.register"
            )
    return out


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

    total = 0.0
    for lay in mac_layers(graph, build_ir(graph, "ebops")):
        w = lay.params["weight"].detach().double().numpy()
        pw, pin = lay.precision.get("weight"), lay.precision.get("data_in")
        bits = effective_bits(np.round(w * 2.0 ** (pw.frac or 0))) if pw else np.full(w.shape, FLOAT_BITS)
        b_in: Any = pin.width if pin else FLOAT_BITS
        qin = lay.quantizers.get("data_in")
        if qin is not None:  # per-element input widths: each weight times the width of the input it multiplies
            win = qin.widths.double().numpy()
            if lay.op == "linear" and win.size == w.shape[1]:
                bits, b_in = bits * win.reshape(1, -1), 1
            elif lay.op == "affine" and win.size == w.size:
                bits, b_in = bits * win.reshape(w.shape), 1
            else:
                b_in = float(win.mean())
        reuse = MAC_COSTS[lay.op](lay)
        total += float(bits.sum()) * b_in * reuse
    return total


MEMO_SIZE = 4096
# process-wide memos shared by a search's worker threads: each read and write holds its lock (graph/cache.py)
_BY_GRAPH: weakref.WeakKeyDictionary[QGraph, tuple[float, float]] = weakref.WeakKeyDictionary()
_BY_GRAPH_LOCK = threading.Lock()


def _config_key(graph: QGraph) -> tuple[Any, ...]:
    """The graph's identity for the memo: nodes with their targets and precisions, and a digest of the
    parameters' bytes (a search rebuilds every trial from the same weights)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in graph.gm.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    nodes = tuple(
        (n.name, str(n.target), tuple(sorted((r, p.key()) for r, p in get_meta(n).precision.items())))
        for n in graph.gm.graph.nodes
    )
    return nodes, h.hexdigest()


def fpga_cost(graph: QGraph) -> tuple[float, float]:
    """``(LUTs, latency)`` of the graph's RTL as da4ml estimates them (see the module docstring)."""
    with _BY_GRAPH_LOCK:
        hit = _BY_GRAPH.get(graph)
    if hit is not None:
        return hit

    t = fpga_timing(graph)  # the same memoised trace the search metrics read: one per configuration
    hit = (t.luts, t.depth)
    with _BY_GRAPH_LOCK:
        _BY_GRAPH[graph] = hit
    return hit


@dataclass(frozen=True)
class Timing:
    """The whole network's RTL at a clock (None: combinational), as :func:`fpga_timing` estimates it."""

    clock_ns: float | None
    luts: float
    depth: float  # adder levels of the whole logic (the network's depth, not a sum of layers): fpga_latency
    ffs: int  # register bits of the pipeline (da4ml's ``Pipeline.reg_bits``; 0 combinational)
    stages: int  # 0 combinational
    latency_ns: float
    # per deployment-IR layer (name, LUTs, register bits, latest output latency in adder levels): its share of the
    # whole network's figures (they sum to them); empty where the whole trace was needed (hw.fpga_compose)
    layers: tuple[tuple[str, float, int, float], ...] = ()

    @property
    def latency_cycles(self) -> int:
        return self.stages

    def metrics(self) -> dict[str, float]:
        return {"fpga_luts": self.luts, "fpga_latency": self.depth, "fpga_ffs": float(self.ffs),
                "fpga_latency_cycles": float(self.stages), "fpga_latency_ns": self.latency_ns}  # fmt: skip


_TIMING: LockedLRU[Timing] = LockedLRU(MEMO_SIZE)


def fpga_timing(graph: QGraph, clock_ns: float | None = None) -> Timing:
    """The graph's RTL as ``qfx export --format verilog [--clock-ns]`` writes it, costed by da4ml (see the module
    docstring); raises ExportError naming a node da4ml cannot express, or a clock outside (0, 1000] ns."""
    from qfx.passes.export.da4ml_backend import ADDER_LEVEL_NS, stage_levels

    levels = None if clock_ns is None else stage_levels(clock_ns)  # the clock checked before any trace

    def build() -> Timing:
        from da4ml.trace.pipeline import to_pipeline

        from qfx.passes.export.da4ml_backend import FMT, trace_graph

        layers = build_ir(graph, FMT)
        mac_layers(graph, layers)  # a MAC op without a cost rule raises naming it, never costs 0
        c = composed_timing(layers, levels)  # the whole trace's figures from cached per-layer traces
        if c is not None:
            ns = c.depth * ADDER_LEVEL_NS if clock_ns is None else c.stages * float(clock_ns)
            return Timing(clock_ns, c.luts, c.depth, c.ffs, c.stages, ns, c.layers)
        tr = trace_graph(graph)
        if levels is None:
            return Timing(None, tr.luts, tr.latency, 0, 0, tr.latency * ADDER_LEVEL_NS)
        pipe = to_pipeline(tr.comb, levels, verbose=False)
        stages = len(pipe.solutions)
        return Timing(clock_ns, tr.luts, tr.latency, int(pipe.reg_bits), stages, stages * float(clock_ns))

    return _TIMING.get_or((_config_key(graph), clock_ns), build)


_LAYERS: LockedLRU[tuple[float, float]] = LockedLRU(MEMO_SIZE)


@exact_decimals
def _trace_layer(lay: Any, in_shape: tuple[int, ...], src: Any, src_q: Any = None) -> tuple[float, float]:
    from da4ml.trace import FixedVariableArrayInput, comb_trace

    from qfx.passes.export.da4ml_backend import DA4ML_OPS, QUICK, _kif_maps

    inp = FixedVariableArrayInput(in_shape)
    # the value arrives in its producer's format when a ReLU quantized it (the layer's data_in quantization of
    # it is then part of the layer's logic), else in the layer's own data_in format
    p, q = (src, src_q) if src is not None else (lay.precision["data_in"], lay.quantizers.get("data_in"))
    x = inp.quantize(*_kif_maps(p, q, in_shape), "WRAP", "TRN")
    token = QUICK.set(True)  # an estimate: one CMVM decomposition, not all
    try:
        comb = comb_trace(inp, DA4ML_OPS[lay.op](lay, [x], {}))
    finally:
        QUICK.reset(token)
    return float(comb.cost), float(comb.latency[1])


_TOKENS: dict[int, tuple[weakref.ref[torch.Tensor], int, str]] = {}  # id -> (tensor, version, digest)
_TOKENS_LOCK = threading.Lock()
_BY_KEY: LockedLRU[dict[str, tuple[float, float]]] = LockedLRU(MEMO_SIZE)
_LOOK_THROUGH = OP_TRAITS["reshape"] | {"dropout", "identity", "max_pool1d", "max_pool2d"}


def _token(t: torch.Tensor) -> str:
    """A digest of a tensor's values, computed once per tensor object and in-place version (a search rebuilds
    every trial around the pristine graph's own parameter tensors)."""
    with _TOKENS_LOCK:
        hit = _TOKENS.get(id(t))
    if hit is None or hit[0]() is not t or hit[1] != t._version:
        raw = t.detach().cpu().contiguous().numpy().tobytes()
        hit = (weakref.ref(t), t._version, hashlib.blake2b(raw, digest_size=16).hexdigest())
        with _TOKENS_LOCK:
            _TOKENS[id(t)] = hit
            if len(_TOKENS) > 4 * MEMO_SIZE:  # ids of dead tensors
                for k in [k for k, v in _TOKENS.items() if v[0]() is None]:
                    del _TOKENS[k]
    return hit[2]


def _graph_key(graph: QGraph) -> tuple[Any, ...]:
    """Everything the per-layer costs depend on, without building the IR: per MAC node (op type with the "mac"
    trait) its target, module class and attributes, its tensors' digests (own and ``get_attr`` inputs), its
    precisions, its input shape and its ReLU producer's precision."""
    out = []
    mods = graph.modules
    for n in graph.gm.graph.nodes:
        meta = get_meta(n)  # the node's record directly (QGraph.meta by name scans the graph: per trial, per node)
        if n.op not in ("call_module", "call_function", "call_method") or not has_trait(meta.op_type, "mac"):
            continue
        m = mods[n.target] if n.op == "call_module" else None  # type: ignore[index]
        src = n.args[0] if n.args else None
        while isinstance(src, fx.Node) and get_meta(src).op_type in _LOOK_THROUGH and src.args:
            src = src.args[0]
        relu = get_meta(src).precision if isinstance(src, fx.Node) and get_meta(src).op_type == "relu" else {}
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)] if m is not None else []
        attrs = [(a.name, target_value(graph.gm, a)) for a in n.all_input_nodes if a.op == "get_attr"]
        what = (type(m).__name__, m.extra_repr()) if m is not None else (str(n.target), "")
        tensors = tuple((k, _token(v)) for k, v in own + attrs if isinstance(v, torch.Tensor))
        precs = tuple(sorted((r, p.key()) for r, p in meta.precision.items()))
        out.append(
            (
                n.name,
                *what,
                tensors,
                precs,
                str(meta.in_shapes[:1]),
                tuple(sorted((r, p.key()) for r, p in relu.items())),
            )
        )
    return tuple(out)


def layer_costs(graph: QGraph) -> dict[str, tuple[float, float]]:
    """``{MAC layer: (LUTs, adder depth)}`` of each layer traced alone (see the module docstring); raises
    ExportError naming a layer da4ml cannot express (a float operand, an unsupported op). A graph whose MAC
    layers were all seen before (same modules, tensors, precisions, inputs) is answered without the IR."""
    return dict(_BY_KEY.get_or(_graph_key(graph), lambda: _layer_costs(graph)))


def _layer_costs(graph: QGraph) -> dict[str, tuple[float, float]]:
    from qfx.passes.export.da4ml_backend import FMT, _needs

    out = {}
    layers = build_ir(graph, FMT)
    by_name = {lay.name: lay for lay in layers}
    for lay in mac_layers(graph, layers):
        _needs(lay, "data_in", "weight", *(("bias",) if "bias" in lay.params else ()))
        in_shape = tuple(graph.meta(lay.name).in_shapes[0][1:])
        src = by_name.get(lay.inputs[0]) if isinstance(lay.inputs[0], str) else None
        while src is not None and src.op in _LOOK_THROUGH:  # value-preserving (one op vocabulary): look through
            src = by_name.get(src.inputs[0]) if isinstance(src.inputs[0], str) else None
        relu = src.precision.get("data_out") if src is not None and src.op == "relu" else None
        relu_q = src.quantizers.get("data_out") if relu is not None else None
        key = (*_layer_key(lay, in_shape), relu.key() if relu is not None else None)
        out[lay.name] = _LAYERS.get_or(key, lambda: _trace_layer(lay, in_shape, relu, relu_q))  # noqa: B023
    return out


def fpga_luts(graph: QGraph) -> float:
    """The whole network's da4ml LUT estimate, the logic the export writes (:func:`fpga_timing`: one trace per
    configuration, shared with the latency and register metrics). Not the sum of :func:`layer_costs`: that sum
    misses ReLUs and accumulator re-quantization and counts logic the whole trace prunes downstream (random
    jsc-s configurations: 0.73-1.53x the whole network's LUTs)."""
    return fpga_timing(graph).luts


def fpga_latency(graph: QGraph) -> float:
    """The whole network's adder depth as the export writes it (:func:`fpga_timing`; see the module docstring)."""
    return fpga_timing(graph).depth
