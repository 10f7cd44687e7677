"""Batch norms folded into the MAC before them, as hardware builds them (hls4ml, HGQ2, da4ml).

An inference batch norm right after a linear or conv (and its only reader) is the per-channel affine map
``y = x * s + t`` with ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``; the MAC's weight becomes
``W * s`` (per output channel) and its bias ``b * s + t``, and the batch-norm node goes. The float outputs
agree to rounding (tested with ``assert_close``); quantizing afterwards quantizes the folded weights, which
is what the circuit multiplies by. The input graph is never modified.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from qfx.graph.trace import QGraph
from qfx.passes.analysis import analyze
from qfx.passes.transforms.quantize.modules import fold_batch_norm

_MACS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def foldable(graph: QGraph) -> list[tuple[str, str]]:
    """``(mac node, batch-norm node)`` pairs that fold: a float batch norm with running statistics whose
    input is a float linear/conv read by nothing else (and whose module no other node calls)."""
    mods = graph.modules
    calls = [n.target for n in graph.gm.graph.nodes if n.op == "call_module"]
    out = []
    for n in graph.gm.graph.nodes:
        m = mods.get(n.target) if n.op == "call_module" else None  # type: ignore[arg-type]
        if type(m) not in _NORMS or m.running_mean is None or not n.args:  # type: ignore[union-attr]
            continue
        src = n.args[0]
        sm = mods.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None  # type: ignore[arg-type]
        if type(sm) in _MACS and len(src.users) == 1 and calls.count(src.target) == 1:  # type: ignore[union-attr]
            out.append((src.name, n.name))  # type: ignore[union-attr]
    return out


def fold_batch_norms(graph: QGraph) -> QGraph:
    """A new graph with every :func:`foldable` batch norm folded into its MAC (analyses re-run)."""
    g = graph.copy()  # private modules: folding writes into the copy's MAC parameters only
    mods = g.modules
    for mac_name, bn_name in foldable(g):
        mac, bn = g.node(mac_name), g.node(bn_name)
        lin, norm = mods[mac.target], mods[bn.target]  # type: ignore[index]
        with torch.no_grad():
            s, t = fold_batch_norm(norm)
            shape = (-1,) + (1,) * (lin.weight.dim() - 1)
            lin.weight = nn.Parameter(lin.weight * s.reshape(shape))
            b = lin.bias if lin.bias is not None else torch.zeros_like(s)
            lin.bias = nn.Parameter(b * s + t)
        bn.replace_all_uses_with(mac)
        g.gm.graph.erase_node(bn)
        if not any(n.op == "call_module" and n.target == bn.target for n in g.gm.graph.nodes):
            g.gm.delete_submodule(bn.target)  # type: ignore[arg-type]
    g.gm.graph.lint()
    g.gm.recompile()
    g.analyses.clear()
    return analyze(g)
