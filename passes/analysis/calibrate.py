"""Calibration: the fractional width that fits each quantizable tensor, for ``*_frac_width = "auto"``.

For every quantizable node and role (``data_in``, ``weight``, ``bias``) the pass looks at the float values
that role quantizes (inputs recorded on calibration batches; weights/biases as the quantized modules see
them, batch norm folded) and writes a table ``frac[width]`` for widths 1..32 into the node's
``calibration`` record, so a search over widths resolves "auto" by lookup, once per search:

- ``max``: the fewest integer bits that hold max|x|: frac = w - 1 - ceil(log2 max|x|) (signed; one bit more
  for unsigned ReLU outputs), like torch.ao's MinMax observer restricted to power-of-two scales.
- ``percentile``: the same from the ``percentile``-th percentile of |x| (clips rare outliers).
- ``mse``: the frac minimising the mean squared quantization error of the calibration values (Brevitas/
  torch.ao MSE observers, over power-of-two scales); widths above 16 use ``max``.
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


def _mse_fracs(v: torch.Tensor, signed: bool) -> tuple[int, ...]:
    from qfx.passes.transforms.quantize.quantizers import integer_quantize

    v = v.double()
    table = list(_from_magnitude(float(v.abs().max()), signed))
    for w in range(1, MSE_MAX_WIDTH + 1):
        errs = [float(((integer_quantize(v, w, f, signed) - v) ** 2).mean()) for f in range(w + 1)]
        table[w] = min(range(w + 1), key=lambda f: (errs[f], -f))  # ties: the finer step
    return tuple(table)


def frac_table(values: torch.Tensor, signed: bool, method: str = "max", percentile: float = 99.99) -> tuple[int, ...]:
    """``frac[width]`` for widths 0..32 for these values (see the module docstring)."""
    v = values.detach().flatten().float()
    if v.numel() > _SAMPLE:
        v = v[torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:_SAMPLE]]
    if v.numel() == 0:
        return _from_magnitude(0.0, signed)
    if method == "percentile":
        return _from_magnitude(float(torch.quantile(v.abs().double(), percentile / 100)), signed)
    if method == "mse":
        return _mse_fracs(v, signed)
    return _from_magnitude(float(v.abs().max()), signed)


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

    def run(self, graph: QGraph) -> PassResult:
        from qfx.passes.debug.numerics import _role_tensors, record
        from qfx.passes.transforms.quantize.quantize_pass import QUANT_RULES

        inputs = self.inputs if self.inputs is not None else graph.example_inputs
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        rec = record(graph.gm, inputs, keep_inputs=True)
        modules = graph.modules
        probe = TensorPrecision("integer", 32, 16)  # any precision: the probe module only exposes the roles
        done = 0
        for n in graph.gm.graph.nodes:
            rule = QUANT_RULES.lookup(n, modules) if n.op in ("call_module", "call_function", "call_method") else None
            if rule is None or n.name not in rec.ins:
                annotate(n, CALIBRATION, calibration=None)
                continue
            source = modules[n.target] if n.op == "call_module" else n.target
            module = rule.build(source, n, {r: probe for r in rule.roles})
            with torch.no_grad():
                values = _role_tensors(n, module, rec.ins[n.name])
            table = {
                r: frac_table(
                    v, signed=not rule.unsigned_out, method=self.method, percentile=self.percentile
                )  # fmt: skip
                for r, v in values.items()
                if r in rule.roles
            }
            annotate(n, CALIBRATION, calibration=table)
            done += 1
        return PassResult(graph, False, {"nodes": done, "method": self.method})
