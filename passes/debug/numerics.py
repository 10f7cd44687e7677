"""Per-node numerics of a quantized graph against its float source (what torch.ao's Numeric Suite
reports, per FX node): output SQNR, max abs / relative error, cosine similarity, and for every
quantized tensor the fraction of values that saturate at the range limits and that round to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from qfx.graph.meta import NUMERICS, TensorPrecision, annotate, get_meta
from qfx.graph.trace import QGraph
from qfx.passes.base import Pass, PassResult
from qfx.passes.transforms.quantize.formats import code_range
from qfx.passes.transforms.quantize.modules import QReLU


def quant_stats(x: torch.Tensor, p: TensorPrecision) -> dict[str, float]:
    """``saturated``: fraction of values clipped to the range limits; ``zeroed``: fraction of nonzero
    values that round to 0 (fixed-point formats; others report nothing)."""
    codes = code_range(p)
    if codes is None or x.numel() == 0:
        return {}
    lo, hi = codes
    t = torch.round(x.detach().double() * 2.0 ** (p.frac or 0))
    n = x.numel()
    return {
        "saturated": float(((t > hi) | (t < lo)).sum()) / n,
        "zeroed": float(((t == 0) & (x != 0)).sum()) / n,
    }


def error_stats(ref: torch.Tensor, q: torch.Tensor) -> dict[str, Any]:
    """SQNR in dB (``None`` with ``exact: True`` when identical), max abs/relative error, cosine."""
    r, d = ref.detach().double().flatten(), (q.detach().double() - ref.detach().double()).flatten()
    noise, signal = float((d * d).sum()), float((r * r).sum())
    denom = float(r.abs().max()) if r.numel() else 0.0
    cos = torch.nn.functional.cosine_similarity(r, q.detach().double().flatten(), dim=0, eps=1e-30)
    return {
        "sqnr_db": None if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf),
        "exact": noise == 0,
        "max_abs_err": float(d.abs().max()) if d.numel() else 0.0,
        "max_rel_err": float(d.abs().max()) / denom if denom > 0 else 0.0,
        "cosine": float(cos),
    }


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, keep_inputs: bool) -> None:
        super().__init__(gm)
        self.outs: dict[str, Any] = {}
        self.ins: dict[str, list[Any]] = {}
        self.keep_inputs = keep_inputs

    def run_node(self, n: fx.Node) -> Any:
        if self.keep_inputs:
            self.ins[n.name] = [
                self.env[a].clone() if isinstance(a, fx.Node) and isinstance(self.env.get(a), torch.Tensor) else None
                for a in n.args
            ]
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.outs[n.name] = out.detach().clone()
        return out


def record(gm: fx.GraphModule, inputs: tuple[Any, ...], keep_inputs: bool = False) -> _Recorder:
    """Run ``gm`` in eval mode, recording every float tensor output (and node inputs)."""
    was = gm.training
    gm.eval()
    try:
        rec = _Recorder(gm, keep_inputs)
        with torch.no_grad():
            rec.run(*[x.clone() if isinstance(x, torch.Tensor) else x for x in inputs])
    finally:
        gm.train(was)
    return rec


def _role_tensors(n: fx.Node, module: nn.Module | None, ins: list[Any]) -> dict[str, torch.Tensor]:
    """The float values each quantized role of node ``n`` quantizes."""
    out: dict[str, torch.Tensor] = {}
    if module is not None and hasattr(module, "folded"):  # batch norm: folded scale / shift
        s, t = module.folded()
        out["weight"], out["bias"] = s, t
    elif module is not None and getattr(module, "weight", None) is not None and hasattr(module, "qw"):
        out["weight"] = module.weight
        if getattr(module, "bias", None) is not None:
            out["bias"] = module.bias

    roles = getattr(module, "arg_roles", None)
    if getattr(module, "unsigned_out", False) or isinstance(module, QReLU):
        if ins and ins[0] is not None:
            out["data_in"] = torch.relu(ins[0])  # ReLU quantizes its non-negative output
        return out
    if roles:
        for a, r in zip(ins, roles, strict=False):
            if a is not None and r is not None:
                out[r] = a if r not in out else torch.cat([out[r].flatten(), a.flatten()])
    elif ins and ins[0] is not None:
        out["data_in"] = ins[0]
    return out


@dataclass(frozen=True)
class NumericsPass(Pass):
    """Reads: a quantized graph, the float graph it was derived from (same node names) and inputs.
    Writes: ``numerics`` of every node: output error vs the float node (``sqnr_db``, ``exact``,
    ``max_abs_err``, ``max_rel_err``, ``cosine``) and, per quantized role, ``saturated``/``zeroed``.
    Info: ``worst`` (nodes by ascending SQNR) and ``rows`` (a table).
    """

    name = NUMERICS
    provides = (NUMERICS,)

    reference: QGraph
    inputs: tuple[Any, ...] | torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.inputs, torch.Tensor):
            object.__setattr__(self, "inputs", (self.inputs,))

    def run(self, graph: QGraph) -> PassResult:
        inputs = self.inputs if self.inputs is not None else graph.example_inputs
        ref = record(self.reference.gm, inputs).outs
        rec = record(graph.gm, inputs, keep_inputs=True)
        modules = dict(graph.gm.named_modules())
        ranked = []
        for n in graph.gm.graph.nodes:
            meta = get_meta(n)
            if n.op in ("placeholder", "output", "get_attr"):
                annotate(n, NUMERICS)
                continue
            stats: dict[str, Any] = {}
            if n.name in ref and n.name in rec.outs and ref[n.name].shape == rec.outs[n.name].shape:
                stats.update(error_stats(ref[n.name], rec.outs[n.name]))
            if meta.precision:
                module = modules.get(n.target) if n.op == "call_module" else None
                with torch.no_grad():
                    values = _role_tensors(n, module, rec.ins.get(n.name, []))
                for role, p in meta.precision.items():
                    if role in values:
                        for k, v in quant_stats(values[role], p).items():
                            stats[f"{role}_{k}"] = v
            annotate(n, NUMERICS, numerics=stats or None)
            if stats:
                if "sqnr_db" in stats:
                    ranked.append((math.inf if stats["exact"] else stats["sqnr_db"], n.name))
        ranked.sort()
        return PassResult(graph, False, {"worst": [(name, s) for s, name in ranked], "rows": numerics_rows(graph)})


def saturation(stats: dict[str, Any]) -> float:
    return max((v for k, v in stats.items() if k.endswith("_saturated")), default=0.0)


def numerics_rows(graph: QGraph) -> list[list[Any]]:
    """One row per node with numerics: name, op type, precision, SQNR, max abs err, cosine, saturation, zeroed."""
    rows = []
    for m in graph.metas():
        s = m.numerics
        if not s:
            continue
        sq = "exact" if s.get("exact") else (f"{s['sqnr_db']:.1f}" if s.get("sqnr_db") is not None else "-")
        prec = ", ".join(f"{k}={v}" for k, v in m.precision.items()) or "fp32"
        zeroed = max((v for k, v in s.items() if k.endswith("_zeroed")), default=0.0)
        rows.append(
            [
                m.name,
                m.op_type,
                prec,
                sq,
                f"{s['max_abs_err']:.3g}" if "max_abs_err" in s else "-",
                f"{s['cosine']:.6f}" if "cosine" in s else "-",
                f"{100 * saturation(dict(s)):.2f}%" if m.precision else "-",
                f"{100 * zeroed:.2f}%" if m.precision else "-",
            ]
        )
    return rows


NUMERICS_COLUMNS = ["node", "op", "precision", "SQNR dB", "max |err|", "cosine", "saturated", "to zero"]


def numerics_table(graph: QGraph) -> str:
    from tabulate import tabulate

    return tabulate(numerics_rows(graph), headers=NUMERICS_COLUMNS, tablefmt="github")


def debug_against_float(graph: QGraph, inputs: tuple[Any, ...] | None = None) -> QGraph:
    """``graph`` (quantized, e.g. ``QGraph.load``-ed) analysed and annotated by :class:`NumericsPass` against its
    own float version (every node restored to its float op) on ``inputs`` (default: its example inputs): what
    ``qfx debug`` and ``qfx view`` report. Raises ValueError when no node is quantized."""
    from qfx.passes.analysis import analyze
    from qfx.passes.transforms.quantize import QuantizePass

    g = analyze(graph)
    if not any(m.quantized for m in g.metas()):
        raise ValueError("no quantized node: nothing to compare")
    ref = QuantizePass({"by": "type"})(g).graph
    NumericsPass(ref, inputs if inputs is not None else g.example_inputs)(g)
    return g
