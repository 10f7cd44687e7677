"""MACs/FLOPs per node through a registry keyed by op target.

Convention (what ``torch.utils.flop_counter.FlopCounterMode`` counts):
linear / matmul / bmm / conv / transposed conv: FLOPs = 2 x MACs, bias not counted.
Other ops (documented counts, MACs = 0 unless stated):
  batch norm: 1 MAC, 2 FLOPs per output element (inference scale + shift);
  layer norm: 5 FLOPs per element (mean, subtract, variance, normalise, affine);
  relu / add / sub / mul / div: 1 FLOP per output element; gelu: 8; softmax: 3 (exp, sum, div);
  max/avg pool: one FLOP per window element per output; adaptive avg pool / mean: one per input element;
  embedding, views, reshapes, dropout, getitem, placeholders, output: 0.
Ops with no rule get ``flops=None`` and are listed in the pass info (never a silent zero).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from graph.meta import NodeMeta, get_meta
from graph.registry import OpRegistry, op_key
from graph.trace import QGraph
from passes.base import Pass, PassResult


@dataclass
class FlopCtx:
    meta: NodeMeta
    module: nn.Module | None

    @property
    def out_numel(self) -> int:
        s = self.meta.out_shape
        return math.prod(s) if isinstance(s, tuple) else 0

    def in_shape(self, i: int = 0) -> tuple[int, ...]:
        return self.meta.in_shapes[i]  # type: ignore[return-value]


Rule = Callable[[FlopCtx], tuple[int, int]]
FLOP_RULES: OpRegistry[Rule] = OpRegistry("flops")


def _mac(macs: int) -> tuple[int, int]:
    return macs, 2 * macs


@FLOP_RULES.register(nn.Linear, F.linear)
def _linear(c: FlopCtx) -> tuple[int, int]:
    return _mac(c.out_numel * c.in_shape(0)[-1])


@FLOP_RULES.register(operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm", torch.mm, "mm")
def _matmul(c: FlopCtx) -> tuple[int, int]:
    a = c.in_shape(0)
    k = a[-1] if a else 1
    return _mac(max(c.out_numel, 1) * k)


@FLOP_RULES.register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_module(c: FlopCtx) -> tuple[int, int]:
    m = c.module
    assert isinstance(m, nn.modules.conv._ConvNd)
    return _mac(c.out_numel * (m.in_channels // m.groups) * math.prod(m.kernel_size))


@FLOP_RULES.register(F.conv1d, F.conv2d, F.conv3d)
def _conv_fn(c: FlopCtx) -> tuple[int, int]:
    w = c.in_shape(1)  # (out, in/groups, *k)
    return _mac(c.out_numel * w[1] * math.prod(w[2:]))


@FLOP_RULES.register(nn.ConvTranspose1d, nn.ConvTranspose2d)
def _conv_t(c: FlopCtx) -> tuple[int, int]:
    m = c.module
    assert isinstance(m, nn.modules.conv._ConvTransposeNd)
    x = c.in_shape(0)
    per_pos = m.in_channels * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    return _mac(x[0] * math.prod(x[2:]) * per_pos)


@FLOP_RULES.register(nn.BatchNorm1d, nn.BatchNorm2d, F.batch_norm)
def _bn(c: FlopCtx) -> tuple[int, int]:
    return c.out_numel, 2 * c.out_numel


def _per_element(k: int) -> Rule:
    return lambda c: (0, k * c.out_numel)


FLOP_RULES.register(nn.LayerNorm, F.layer_norm)(_per_element(5))
FLOP_RULES.register(
    nn.ReLU,
    F.relu,
    torch.relu,
    "relu",
    operator.add,
    torch.add,
    "add",
    operator.iadd,
    operator.sub,
    torch.sub,
    "sub",
    operator.mul,
    torch.mul,
    "mul",
    operator.truediv,
    torch.div,
    "div",
)(_per_element(1))
FLOP_RULES.register(nn.GELU, F.gelu)(_per_element(8))
FLOP_RULES.register(nn.Softmax, F.softmax, torch.softmax, "softmax")(_per_element(3))


@FLOP_RULES.register(nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
def _pool(c: FlopCtx) -> tuple[int, int]:
    k = c.module.kernel_size  # type: ignore[union-attr]
    ks = math.prod(k) if isinstance(k, tuple) else k ** (len(c.meta.out_shape) - 2)  # type: ignore[arg-type]
    return 0, c.out_numel * ks


@FLOP_RULES.register(F.max_pool2d, F.avg_pool2d)
def _pool_fn(c: FlopCtx) -> tuple[int, int]:
    return 0, math.prod(c.in_shape(0))


@FLOP_RULES.register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, torch.mean, "mean")
def _reduce(c: FlopCtx) -> tuple[int, int]:
    return 0, math.prod(c.in_shape(0))


FLOP_RULES.register(
    "placeholder",
    "output",
    "get_attr",
    nn.Embedding,
    F.embedding,
    nn.Flatten,
    torch.flatten,
    "flatten",
    nn.Unflatten,
    nn.Dropout,
    F.dropout,
    nn.Identity,
    "view",
    "reshape",
    torch.reshape,
    "transpose",
    torch.transpose,
    "permute",
    "contiguous",
    "size",
    operator.getitem,
    getattr,
)(lambda c: (0, 0))


class FlopsPass(Pass):
    """Requires: shapes. Writes: ``macs`` and ``flops`` of every node with a rule.

    Info: totals and ``no_rule`` (names of nodes whose op has no FLOP rule).
    """

    name = "flops"
    requires = ("shapes",)
    provides = ("flops",)

    def run(self, graph: QGraph) -> PassResult:
        modules = graph.modules
        no_rule: list[str] = []
        macs = flops = 0
        for n in graph.gm.graph.nodes:
            m = get_meta(n)
            key = op_key(n, modules)
            rule = FLOP_RULES.get(key)
            if rule is None and hasattr(key, "__mro__"):  # subclasses of known modules
                rule = next((FLOP_RULES.get(b) for b in key.__mro__[1:] if b in FLOP_RULES), None)
            if rule is None:
                m.macs = m.flops = None
                no_rule.append(n.name)
                continue
            m.macs, m.flops = rule(FlopCtx(m, modules.get(n.target) if n.op == "call_module" else None))
            macs += m.macs
            flops += m.flops
        return PassResult(graph, False, {"macs": macs, "flops": flops, "no_rule": no_rule})
