"""MACs/FLOPs per node through a registry keyed by op target (``FLOP_RULES``).

Convention (what ``torch.utils.flop_counter.FlopCounterMode`` counts on the op's math path):
MAC ops — linear, addmm, matmul/mm/bmm/baddbmm, two-operand einsum, conv and transposed conv,
scaled_dot_product_attention (QK^T and AV), nn.MultiheadAttention (q/k/v/out projections plus QK^T
and AV), nn.GRU (gate matmuls): FLOPs = 2 x MACs, bias and elementwise work not counted.
nn.LSTM uses the same formula (4 gates x H x (input + H) MACs per step, layer and direction),
which is what FlopCounterMode counts on the decomposed path (its CPU kernel reports 0).
Other ops (documented counts, MACs = 0 unless stated):
  batch norm: 1 MAC, 2 FLOPs per output element (inference scale + shift);
  layer / group norm: 5 FLOPs per element (mean, subtract, variance, normalise, affine);
  relu / relu6 / hardtanh / add / sub / mul / div / neg / sqrt / floordiv / masked_fill: 1 FLOP per
  output element (0 when they act on Python numbers such as sizes);
  gelu: 8; silu / sigmoid / tanh: 4; softmax: 3 (exp, sum, div);
  max/avg pool: one FLOP per window element per output; adaptive avg pool / mean / sum: one per input
  element; embedding, views, reshapes, cat/split/expand/squeeze/triu, factories (arange ...),
  dropout, getitem, placeholders, output: 0.
Ops with no rule get ``flops=None`` and are listed in the pass info (never a silent zero).
In-place forms (``add_``, ``relu_``, ``x += y``) count as their out-of-place op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from qfx.graph.meta import FLOPS, SHAPES, NodeMeta, annotate, get_meta, is_tensor_shape
from qfx.graph.registry import OpKey, OpRegistry
from qfx.graph.trace import QGraph
from qfx.passes.base import Pass, PassResult


@dataclass(frozen=True)
class FlopCtx:
    meta: NodeMeta
    module: nn.Module | None
    node: fx.Node | None = None

    @property
    def out_numel(self) -> int:
        s = self.meta.out_shape
        if is_tensor_shape(s):
            return math.prod(s)
        return math.prod(s[0]) if isinstance(s, tuple) and s and is_tensor_shape(s[0]) else 0

    def in_shape(self, i: int = 0) -> tuple[int, ...]:
        """Shape of positional argument ``i`` (inputs are recorded once per distinct node)."""
        if self.node is not None and i < len(self.node.args) and isinstance(self.node.args[i], fx.Node):
            return self.meta.in_shapes[self.node.all_input_nodes.index(self.node.args[i])]
        return self.meta.in_shapes[i]


@dataclass(frozen=True)
class FlopRule:
    """``count(ctx) -> (macs, flops)`` (or ``None`` when the node cannot be counted).

    ``mac``: the op is a multiply-accumulate op (FLOPs = 2 x MACs, as FlopCounterMode counts);
    BOPs and the FlopCounterMode oracle tests use exactly these.
    """

    count: Callable[[FlopCtx], tuple[int, int] | None]
    mac: bool = False


FLOP_RULES: OpRegistry[FlopRule] = OpRegistry("flops")


def _mac(macs: int) -> tuple[int, int]:
    return macs, 2 * macs


def mac_rule(*types: str, keys: tuple[OpKey, ...] = ()) -> Callable[[Callable[[FlopCtx], int | None]], FlopRule]:
    """Register ``macs(ctx)`` for op types (or the given targets) whose FLOPs are 2 x MACs."""

    def deco(fn: Callable[[FlopCtx], int | None]) -> FlopRule:
        def count(c: FlopCtx) -> tuple[int, int] | None:
            m = fn(c)
            return None if m is None else _mac(m)

        reg = FLOP_RULES.register(*keys) if keys else FLOP_RULES.register_op(*types)
        return reg(FlopRule(count, mac=True))

    return deco


def flop_rule(*types: str) -> Callable[[Callable[[FlopCtx], tuple[int, int] | None]], FlopRule]:
    """Register ``count(ctx) -> (macs, flops)`` for op types that are not MAC ops."""

    def deco(fn: Callable[[FlopCtx], tuple[int, int] | None]) -> FlopRule:
        return FLOP_RULES.register_op(*types)(FlopRule(fn))

    return deco


@mac_rule(keys=(nn.Linear, F.linear))
def _linear(c: FlopCtx) -> int:
    return c.out_numel * c.in_shape(0)[-1]


@mac_rule(keys=(torch.addmm, "addmm"))
def _addmm(c: FlopCtx) -> int:  # addmm(bias, a, b): bias not counted
    return c.out_numel * c.in_shape(1)[-1]


@mac_rule("matmul", "bmm")
def _matmul(c: FlopCtx) -> int:
    a = c.in_shape(0)
    return max(c.out_numel, 1) * (a[-1] if a else 1)


@mac_rule("baddbmm")
def _baddbmm(c: FlopCtx) -> int:
    return c.out_numel * c.in_shape(1)[-1]


@mac_rule("einsum")
def _einsum(c: FlopCtx) -> int | None:
    """Two-operand einsum: product of the sizes of all distinct indices (what its bmm path counts)."""
    if c.node is None:
        return None
    eq, *ops = c.node.args
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    inputs = c.node.all_input_nodes
    shapes = [c.meta.in_shapes[inputs.index(o)] if isinstance(o, fx.Node) else None for o in ops]
    if not isinstance(eq, str) or "..." in eq or len(shapes) != 2 or not all(map(is_tensor_shape, shapes)):
        return None
    ins = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for sub, shape in zip(ins, shapes, strict=True):
        sizes.update(zip(sub, shape, strict=True))
    return math.prod(sizes.values())


@mac_rule("conv1d", "conv2d", "conv3d")
def _conv(c: FlopCtx) -> int:
    m = c.module
    if isinstance(m, nn.modules.conv._ConvNd):
        return c.out_numel * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    w = c.in_shape(1)  # functional form: weight (out, in/groups, *k)
    return c.out_numel * w[1] * math.prod(w[2:])


@mac_rule("conv_transpose1d", "conv_transpose2d")
def _conv_t(c: FlopCtx) -> int:
    x, m = c.in_shape(0), c.module
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        per_pos = m.in_channels * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    else:
        w = c.in_shape(1)  # (in, out/groups, *k)
        per_pos = w[0] * w[1] * math.prod(w[2:])
    return x[0] * math.prod(x[2:]) * per_pos


@mac_rule("scaled_dot_product_attention")
def _sdpa(c: FlopCtx) -> int:
    q, k, v = c.in_shape(0), c.in_shape(1), c.in_shape(2)
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


@mac_rule("multihead_attention")
def _mha(c: FlopCtx) -> int:
    """Math path: q/k/v projections, QK^T, AV, out projection (batch_first or not)."""
    m = c.module
    assert isinstance(m, nn.MultiheadAttention)
    q, k = c.in_shape(0), c.in_shape(1)
    if len(q) == 2:  # unbatched (L, E)
        n, lq, lk = 1, q[0], k[0]
    elif m.batch_first:
        n, lq, lk = q[0], q[1], k[1]
    else:
        n, lq, lk = q[1], q[0], k[0]
    e = m.embed_dim
    proj = lq * e * e + lk * m.kdim * e + lk * m.vdim * e + lq * e * e
    return n * (proj + 2 * lq * lk * e)


@mac_rule("lstm", "gru")
def _rnn(c: FlopCtx) -> int:
    m = c.module
    assert isinstance(m, nn.RNNBase)
    x = c.in_shape(0)
    steps = math.prod(x[:-1])  # (L, N) or (N, L) or (L,) unbatched
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    h, dirs = m.hidden_size, 2 if m.bidirectional else 1
    hout = m.proj_size or h
    total = 0
    for layer in range(m.num_layers):
        fan_in = m.input_size if layer == 0 else hout * dirs
        total += dirs * gates * h * (fan_in + hout) + (dirs * h * m.proj_size if m.proj_size else 0)
    return steps * total


@flop_rule("batch_norm1d", "batch_norm2d", "batch_norm")
def _bn(c: FlopCtx) -> tuple[int, int]:
    return c.out_numel, 2 * c.out_numel


def _per_element(k: int) -> FlopRule:
    return FlopRule(lambda c: (0, k * c.out_numel))


FLOP_RULES.register_op("layer_norm", "group_norm")(_per_element(5))
FLOP_RULES.register_op(
    "relu", "relu6", "hardtanh", "add", "sub", "mul", "div", "neg", "floordiv", "sqrt", "masked_fill"
)(_per_element(1))
FLOP_RULES.register_op("gelu")(_per_element(8))
FLOP_RULES.register_op("silu", "sigmoid", "tanh")(_per_element(4))
FLOP_RULES.register_op("softmax")(_per_element(3))


@flop_rule("max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d")
def _pool(c: FlopCtx) -> tuple[int, int]:
    if c.module is None:  # functional form: one FLOP per input element (documented bound)
        return 0, math.prod(c.in_shape(0))
    k = c.module.kernel_size  # type: ignore[union-attr]
    ks = math.prod(k) if isinstance(k, tuple) else k ** (len(c.meta.out_shape) - 2)
    return 0, c.out_numel * ks


@flop_rule("adaptive_avg_pool1d", "adaptive_avg_pool2d", "mean", "sum")
def _reduce(c: FlopCtx) -> tuple[int, int]:
    return 0, math.prod(c.in_shape(0))


FLOP_RULES.register("placeholder", "output", "get_attr")(FlopRule(lambda c: (0, 0)))
FLOP_RULES.register_op(
    "embedding",
    "flatten",
    "unflatten",
    "dropout",
    "identity",
    "view",
    "reshape",
    "transpose",
    "permute",
    "contiguous",
    "squeeze",
    "expand",
    "cat",
    "split",
    "triu",
    "arange",
    "type_as",
    "size",
    "getitem",
    "getattr",
)(FlopRule(lambda c: (0, 0)))


def node_flop_rule(
    node: fx.Node, modules: dict[str, nn.Module], extra: OpRegistry[FlopRule] | None = None
) -> FlopRule | None:
    """The FLOP rule for what ``node`` computes (extra rules first), through the one registry lookup."""
    if extra is not None:
        r = extra.lookup(node, modules)
        if r is not None:
            return r
    return FLOP_RULES.lookup(node, modules)


@dataclass(frozen=True)
class FlopsPass(Pass):
    """Requires: shapes. Writes: ``macs`` and ``flops`` of every node with a rule.

    ``rules``: extra rules for this instance only ({target: FlopRule or ``ctx -> (macs, flops)``}),
    consulted before ``FLOP_RULES`` (like FlopCounterMode's ``custom_mapping``).
    Info: totals and ``no_rule`` (names of nodes whose op has no FLOP rule).
    """

    name = FLOPS
    requires = (SHAPES,)
    provides = (FLOPS,)

    rules: Mapping[OpKey, FlopRule | Callable[[FlopCtx], tuple[int, int]]] | None = None
    extra: OpRegistry[FlopRule] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rules:
            extra: OpRegistry[FlopRule] = OpRegistry("flops (extra)")
            for k, r in self.rules.items():
                extra.register(k)(r if isinstance(r, FlopRule) else FlopRule(r))
            object.__setattr__(self, "extra", extra)

    def run(self, graph: QGraph) -> PassResult:
        modules = graph.modules
        no_rule: list[str] = []
        macs = flops = 0
        for n in graph.gm.graph.nodes:
            rule = node_flop_rule(n, modules, self.extra)
            counted = None
            if rule is not None:
                counted = rule.count(FlopCtx(get_meta(n), modules.get(n.target) if n.op == "call_module" else None, n))
            if counted is None:
                annotate(n, FLOPS, macs=None, flops=None)
                no_rule.append(n.name)
                continue
            annotate(n, FLOPS, macs=counted[0], flops=counted[1])
            macs += counted[0]
            flops += counted[1]
        return PassResult(graph, False, {"macs": macs, "flops": flops, "no_rule": no_rule})
