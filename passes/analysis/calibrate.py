"""Calibration: the fractional width that fits each quantizable tensor, for ``*_frac_width = "auto"``.

For every quantizable node and role (``data_in``, ``weight``, ``bias``) the pass looks at the float values
that role quantizes (inputs recorded on calibration batches; weights/biases as the quantized modules see
them, batch norm folded) and writes a table ``frac[width]`` for widths 1..32 into the node's
``calibration`` record, so a search over widths resolves "auto" by lookup, once per search:

- ``max``: the fewest integer bits that hold max|x|: frac = w - 1 - ceil(log2 max|x|) (signed; one bit more
  for unsigned ReLU outputs), like torch.ao's MinMax observer restricted to power-of-two scales.
- ``percentile``: the same from the ``percentile``-th percentile of |x| (clips rare outliers).
- ``mse``: the frac minimising the squared quantization error *as the layer's output sees it* (Brevitas/
  torch.ao MSE observers, over power-of-two scales, weighted like GPTQ/HAWQ's diagonal proxy): a weight
  element's error counts by the mean square of the input channel it multiplies (E[x_c^2]), an input
  channel's error by the squared norm of the weights it meets (for batch norm: its folded scale^2); so a
  folded batch-norm scale of 300 on a pixel that is always 0 no longer dictates the whole tensor's range.
  Roles without a partner (biases, ReLU outputs, add/mul inputs) use the plain mean. Widths above 16 use
  ``max``.

With labels (``targets``), a loss-aware refinement follows (as HAWQ/AdaQuant-style PTQ does with its
calibration set), per width in ``refine_widths`` with every quantizable node at that width: start from the
table above or from "NA" (width // 2) everywhere, whichever gives the lower calibration loss, then one
sweep in graph order moves each role's frac by -1/+1 where that lowers the cross-entropy on the calibration
samples. Per-tensor error is not what classification cares about (clipping a few large logit-driving
activations costs more than their MSE says); the loss is. Cost: about 2 + 2 x roles quantized forward
passes per refined width.
Fracs are clamped to 0..w (the range the config accepts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from qfx.graph.meta import CALIBRATION, SHAPES, TensorPrecision, annotate
from qfx.graph.trace import QGraph
from qfx.passes.base import Pass, PassResult
from qfx.passes.debug.numerics import _role_tensors, record
from qfx.passes.transforms.quantize.quantize_pass import QUANT_RULES, QuantizePass
from qfx.passes.transforms.quantize.quantizers import integer_quantize

MAX_WIDTH = 32
MSE_MAX_WIDTH = 16
_SAMPLE = 1 << 20  # values per role used for percentiles and MSE (a seeded subsample above this)


def _int_bits(m: float, signed: bool) -> int | None:
    """Integer bits (sign included when signed) so that ``m`` fits: None when every value is 0."""
    if not m > 0:
        return None
    return math.ceil(math.log2(m)) + (1 if signed else 0)


def _from_magnitude(m: float, signed: bool) -> tuple[int, ...]:
    bits = _int_bits(m, signed)
    return tuple(0 if w == 0 else w if bits is None else min(max(w - bits, 0), w) for w in range(MAX_WIDTH + 1))


def _mse_fracs(v: torch.Tensor, signed: bool, weights: torch.Tensor | None) -> tuple[int, ...]:

    v = v.double()
    wt = None if weights is None or not float(weights.sum()) > 0 else weights.double()
    table = list(_from_magnitude(float(v.abs().max()), signed))
    for w in range(1, MSE_MAX_WIDTH + 1):
        sq = [(integer_quantize(v, w, f, signed) - v) ** 2 for f in range(w + 1)]
        errs = [float(e.mean() if wt is None else (e * wt).sum()) for e in sq]
        table[w] = min(range(w + 1), key=lambda f: (errs[f], -f))  # ties: the finer step
    return tuple(table)


def frac_table(
    values: torch.Tensor,
    signed: bool,
    method: str = "max",
    percentile: float = 99.99,
    weights: torch.Tensor | None = None,
) -> tuple[int, ...]:
    """``frac[width]`` for widths 0..32 for these values (see the module docstring). ``weights``
    (broadcastable to ``values``, non-negative) weights each value's squared error for ``mse``."""
    v = values.detach().float()
    wt = None if weights is None else torch.broadcast_to(weights.detach().float(), v.shape).flatten()
    v = v.flatten()
    if v.numel() > _SAMPLE:
        keep = torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:_SAMPLE]
        v, wt = v[keep], None if wt is None else wt[keep]
    if v.numel() == 0:
        return _from_magnitude(0.0, signed)
    if method == "percentile":
        return _from_magnitude(float(torch.quantile(v.abs().double(), percentile / 100)), signed)
    if method == "mse":
        return _mse_fracs(v, signed, wt)
    return _from_magnitude(float(v.abs().max()), signed)


def _channel_ms(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean square of ``x`` per index of ``dim`` (a 1-D tensor)."""
    x = x.detach().double().movedim(dim, 0)
    return (x * x).reshape(x.shape[0], -1).mean(1)


def output_weights(values: dict[str, torch.Tensor], groups: int = 1) -> dict[str, torch.Tensor]:
    """Per-element error weights of ``data_in`` and ``weight`` so that the weighted squared error
    approximates the layer output's (diagonal proxy): weight element (o, c, ...) by E[x_c^2], input
    channel c by sum_o w[o, c]^2. Covers linear ([out, in] weights, channels last), convolutions
    ([out, in/groups, *k], channels at dim 1) and batch norm (a per-channel scale, channels at dim 1).
    Roles it cannot pair (no weight, or shapes that do not match) are left out: plain MSE."""
    w, x = values.get("weight"), values.get("data_in")
    if w is None or x is None or x.dim() < 2 or w.dim() < 1:
        return {}
    w = w.detach().double()
    if w.dim() == 1 and x.shape[1] == w.shape[0]:  # batch norm: y_c = x_c * s_c + t_c
        shape = [1] * x.dim()
        shape[1] = -1
        return {"weight": _channel_ms(x, 1), "data_in": (w * w).reshape(shape)}
    if w.dim() == 2 and x.shape[-1] == w.shape[1]:  # linear: y = x W^T
        return {"weight": _channel_ms(x, -1).unsqueeze(0), "data_in": (w * w).sum(0)}
    if w.dim() == x.dim() >= 3 and x.shape[1] == w.shape[1] * groups:  # convolution
        ms = _channel_ms(x, 1).reshape(groups, 1, w.shape[1])  # [g, 1, in/g]
        per_out = ms.expand(groups, w.shape[0] // groups, w.shape[1]).reshape(w.shape[0], w.shape[1])
        col = (w * w).reshape(groups, w.shape[0] // groups, w.shape[1], -1).sum((1, 3)).reshape(-1)
        shape = [1] * x.dim()
        shape[1] = -1
        return {"weight": per_out.reshape(*per_out.shape, *[1] * (w.dim() - 2)), "data_in": col.reshape(shape)}
    return {}


@dataclass(frozen=True)
class CalibrationPass(Pass):
    """Requires: shapes. Reads: calibration inputs (a tuple or a tensor; default the example inputs).
    Writes: ``calibration`` (role -> frac per width) of every quantizable node; other nodes are annotated
    with none. Info: ``nodes`` (how many were calibrated), ``method``."""

    name = CALIBRATION
    requires = (SHAPES,)
    provides = (CALIBRATION,)

    inputs: Any = None
    method: Literal["max", "percentile", "mse"] = "mse"
    percentile: float = 99.99
    targets: torch.Tensor | None = None
    refine_widths: tuple[int, ...] = tuple(range(2, MSE_MAX_WIDTH + 1))

    def run(self, graph: QGraph) -> PassResult:

        inputs = self.inputs if self.inputs is not None else graph.example_inputs
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        rec = record(graph.gm, inputs, keep_inputs=True)
        modules = graph.modules
        probe = TensorPrecision("integer", 32, 16)  # any precision: the probe module only exposes the roles
        tables: dict[str, dict[str, tuple[int, ...]]] = {}
        for n in graph.gm.graph.nodes:
            rule = QUANT_RULES.lookup(n, modules) if n.op in ("call_module", "call_function", "call_method") else None
            if rule is None or n.name not in rec.ins:
                continue
            source = modules[n.target] if n.op == "call_module" else n.target
            module = rule.build(source, n, {r: probe for r in rule.roles})
            with torch.no_grad():
                values = _role_tensors(n, module, rec.ins[n.name])
            weights = output_weights(values, getattr(module, "groups", 1)) if self.method == "mse" else {}
            table = {
                r: frac_table(v, not rule.unsigned_out, self.method, self.percentile, weights.get(r))
                for r, v in values.items()
                if r in rule.roles
            }
            tables[n.name] = table
        refined: dict[int, float] = {}
        if self.targets is not None:
            refined = _refine(graph, tables, inputs, self.targets, self.refine_widths)
        for n in graph.gm.graph.nodes:
            annotate(n, CALIBRATION, calibration=tables.get(n.name))
        return PassResult(graph, False, {"nodes": len(tables), "method": self.method, "refined_loss": refined})


def _refine(
    graph: QGraph,
    tables: dict[str, dict[str, tuple[int, ...]]],
    inputs: tuple[Any, ...],
    targets: torch.Tensor,
    widths: tuple[int, ...],
) -> dict[int, float]:
    """Loss-aware refinement of ``tables`` in place (see the module docstring); width -> final loss."""
    import torch.nn.functional as F

    sites = [(n, r) for n, t in tables.items() for r in t]

    def loss(fr: dict[tuple[str, str], int], w: int) -> float:
        cfg: dict[str, Any] = {"by": "name"}
        for n, t in tables.items():
            c: dict[str, Any] = {"name": "integer"}
            for r in t:
                c[f"{r}_width"], c[f"{r}_frac_width"] = w, fr[n, r]
            cfg[n] = {"config": c}
        gm = QuantizePass(cfg, copy_weights=False)(graph).graph.gm
        with torch.no_grad():
            return float(F.cross_entropy(gm(*inputs), targets))

    out = {}
    for w in widths:
        if not 1 <= w <= MAX_WIDTH:
            raise ValueError(f"refine_widths: {w} is not a width in 1..{MAX_WIDTH}")
        starts = [{s: tables[s[0]][s[1]][w] for s in sites}, {s: w // 2 for s in sites}]
        losses = [loss(f, w) for f in starts]
        best, cur = min(zip(losses, (0, 1), strict=True))
        fr = starts[cur]
        for s in sites:
            for f in (fr[s] - 1, fr[s] + 1):
                if 0 <= f <= w:
                    trial = {**fr, s: f}
                    lo = loss(trial, w)
                    if lo < best - 1e-6:
                        best, fr = lo, trial
                        break
        for n, r in sites:
            tab = list(tables[n][r])
            tab[w] = fr[n, r]
            tables[n][r] = tuple(tab)
        out[w] = best
    return out
