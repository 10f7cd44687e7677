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

from qfx.graph.meta import TensorPrecision
from qfx.graph.trace import SAVE_HOOKS, QGraph
from qfx.passes.export.ir import build_ir

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


def save_beside(graph: QGraph, directory: Path) -> None:
    """``QGraph.save`` hook: write ``quantized.pt`` for graphs that quantize something and can be exported."""
    from qfx.passes.export.ir import ExportError

    if not any(m.quantized for m in graph.metas()):
        return
    try:
        export_portable(graph, directory / "quantized.pt")
    except ExportError as e:
        (directory / "quantized.pt.txt").write_text(f"no portable checkpoint: {e}\n")


if save_beside not in SAVE_HOOKS:
    SAVE_HOOKS.append(save_beside)


def run_portable(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Reference reader in plain PyTorch (no qfx code): run a portable checkpoint on a float batch.

    Reads the file with ``weights_only=True``, rebuilds every value as ``code * 2**-frac``, and
    applies the activation quantization the manifest names. Returns the first output.
    """
    import torch.nn.functional as F

    ck = torch.load(path, weights_only=True)
    t, man = ck["tensors"], ck["manifest"]

    def deq(key: str, p: dict | None) -> torch.Tensor:
        v = t[key]
        return v.float() if p is None else v.double().mul(2.0 ** -p["frac"]).float()

    def q(v: torch.Tensor, p: dict | None) -> torch.Tensor:
        if p is None:
            return v
        lo, hi = (-(2 ** (p["width"] - 1)), 2 ** (p["width"] - 1) - 1) if p["signed"] else (0, 2 ** p["width"] - 1)
        s = 2.0 ** p["frac"]
        return torch.clamp(torch.round(v * s), lo, hi) / s

    env = {man["inputs"][0]: x.float()}
    for lay in man["layers"]:
        pr, a = lay["precision"], lay["attrs"]
        ins = [env[i] if isinstance(i, str) else i for i in lay["inputs"]]
        w = deq(lay["tensors"]["weight"], pr.get("weight")) if "weight" in lay["tensors"] else None
        b = deq(lay["tensors"]["bias"], pr.get("bias")) if "bias" in lay["tensors"] else None
        op = lay["op"]
        if op in ("linear", "conv", "affine"):
            h = q(ins[0], pr.get("data_in"))
            if op == "linear":
                y = F.linear(h, w, b)
            elif op == "conv":
                conv = F.conv1d if len(a["kernel"]) == 1 else F.conv2d
                y = conv(h, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
            else:
                shape = (1, -1) + (1,) * (h.dim() - 2)
                y = h * w.reshape(shape) + b.reshape(shape)
        elif op == "relu":
            y = q(torch.relu(ins[0]), pr.get("data_out"))
        elif op in ("add", "sub", "mul"):
            u, v = (q(i, pr.get("data_in")) if isinstance(i, torch.Tensor) else i for i in ins)
            y = u + v if op == "add" else u - v if op == "sub" else u * v
        elif op == "reshape":
            y = ins[0].reshape(a["shape"])
        elif op == "maxpool":
            pool = F.max_pool1d if len(a["kernel"]) == 1 else F.max_pool2d
            y = pool(ins[0], a["kernel"], a["stride"], a["padding"])
        elif op == "global_avgpool":
            y = ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)
        else:
            y = ins[0]
        env[lay["name"]] = y
    return env[man["outputs"][0]]
