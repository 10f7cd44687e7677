"""A portable quantized checkpoint: integer tensors plus a plain manifest, readable by plain PyTorch.

``quantized.pt`` is a dict written with ``torch.save`` holding only tensors and plain values, so
``torch.load(path, weights_only=True)`` reads it without this project:

- ``"format"``: ``"qfx-portable/1"``
- ``"tensors"``: ``{"<node>.<role>": tensor}``; quantized roles are **integer codes** (int8 / int16 /
  int32, the smallest type holding the width), float roles float32.
- ``"manifest"``: ``{"inputs": [names], "outputs": [names], "layers": [...]}``; each layer is
  ``{"name", "op", "inputs", "attrs", "tensors": {role: key}, "precision": {role: {"format":
  "integer"|"uinteger", "width": w, "frac": f, "signed": bool}}}`` in topological order.
  ``op`` is one of ``linear``, ``conv`` (attrs stride/padding/dilation/groups), ``affine`` (folded
  batch norm: ``y = x * weight + bias`` per channel, dim 1), ``relu``, ``add``/``sub``/``mul``,
  ``reshape`` (attrs ``shape`` with -1 for the batch), ``maxpool``, ``global_avgpool``, ``identity``.
A quantized value is ``code * 2**-frac``. Activations are quantized where ``precision`` names
``data_in`` (the layer's tensor inputs) or ``data_out`` (a ReLU's output):
``clamp(round_half_even(x * 2**frac), lo, hi) * 2**-frac`` with lo/hi from width and signedness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from graph.meta import TensorPrecision
from graph.trace import QGraph
from passes.export.ir import build_ir

FORMAT = "qfx-portable/1"


def _int_dtype(p: TensorPrecision) -> torch.dtype:
    bits = p.width + (0 if p.fmt == "integer" else 1)  # unsigned codes need one more bit in a signed type
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def _prec(p: TensorPrecision) -> dict[str, Any]:
    return {"format": p.fmt, "width": p.width, "frac": p.frac or 0, "signed": p.fmt == "integer"}


def portable_state(graph: QGraph) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring)."""
    layers = build_ir(graph, "torch")
    tensors: dict[str, torch.Tensor] = {}
    out_layers = []
    inputs, outputs = [], []
    for lay in layers:
        if lay.op == "input":
            inputs.append(lay.name)
            continue
        if lay.op == "output":
            outputs = list(lay.inputs)
            continue
        keys = {}
        for role, v in lay.params.items():
            key = f"{lay.name}.{role}"
            p = lay.precision.get(role)
            if p is not None:
                codes = torch.round(v.double() * 2.0 ** (p.frac or 0))
                tensors[key] = codes.to(_int_dtype(p))
            else:
                tensors[key] = v.float().contiguous()
            keys[role] = key
        attrs = dict(lay.attrs)
        if lay.op == "reshape":
            attrs["shape"] = [-1, *lay.out_shape[1:]]  # type: ignore[index]
        out_layers.append(
            {
                "name": lay.name,
                "op": lay.op,
                "inputs": list(lay.inputs),
                "attrs": attrs,
                "tensors": keys,
                "precision": {r: _prec(p) for r, p in lay.precision.items()},
            }
        )
    manifest = {"inputs": inputs, "outputs": outputs, "layers": out_layers}
    return {"format": FORMAT, "tensors": tensors, "manifest": manifest}


def export_portable(graph: QGraph, out: str | Path) -> Path:
    """Write ``quantized.pt`` into directory ``out`` (or to ``out`` when it ends in ``.pt``)."""
    p = Path(out)
    if p.suffix != ".pt":
        p.mkdir(parents=True, exist_ok=True)
        p = p / "quantized.pt"
    torch.save(portable_state(graph), p)
    return p
