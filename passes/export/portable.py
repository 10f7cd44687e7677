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

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qfx.graph.meta import TensorPrecision
from qfx.graph.schema import error_line
from qfx.graph.trace import SAVE_HOOKS, QGraph
from qfx.passes.export.ir import ExportError, OpTable, build_ir
from qfx.passes.transforms.quantize.formats import code_range

FORMAT = "qfx-portable/1"


def _signed(p: TensorPrecision) -> bool:
    """Signedness from the format registry's code range (never from the format's name)."""
    r = code_range(p)
    return r is not None and r[0] < 0


def _int_dtype(p: TensorPrecision) -> torch.dtype:
    bits = p.width + (0 if _signed(p) else 1)  # unsigned codes need one more bit in a signed type
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def _prec(p: TensorPrecision) -> dict[str, Any]:
    return {"format": p.fmt, "width": p.width, "frac": p.frac or 0, "signed": _signed(p)}


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

    if not any(m.quantized for m in graph.metas()):
        return
    try:
        export_portable(graph, directory / "quantized.pt")
    except ExportError as e:
        (directory / "quantized.pt.txt").write_text(f"no portable checkpoint: {e}\n")


if save_beside not in SAVE_HOOKS:
    SAVE_HOOKS.append(save_beside)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PortablePrecision(_Strict):
    format: Annotated[str, Field(max_length=64)]
    width: Annotated[int, Field(ge=1, le=32)]
    frac: Annotated[int, Field(ge=-32, le=64)]
    signed: bool


Ints = list[Annotated[int, Field(ge=0, le=1 << 16)]]


class PortableAttrs(_Strict):
    stride: Ints | None = None
    padding: Ints | None = None
    dilation: Ints | None = None
    groups: Annotated[int, Field(ge=1, le=1 << 16)] | None = None
    kernel: Ints | None = None
    shape: list[Annotated[int, Field(ge=-1, le=1 << 31)]] | None = None


class PortableLayer(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    op: Annotated[str, Field(max_length=64)]  # one of PORTABLE_RUNNERS (checked below)
    inputs: list[Annotated[str, Field(max_length=200)] | float]
    attrs: PortableAttrs
    tensors: dict[Literal["weight", "bias"], Annotated[str, Field(max_length=400)]]
    precision: dict[Literal["data_in", "weight", "bias", "data_out"], PortablePrecision]

    @model_validator(mode="after")
    def _needs(self) -> PortableLayer:
        if self.op not in PORTABLE_RUNNERS:
            raise ValueError(f"layer {self.name!r}: op {self.op!r} is not one of {', '.join(PORTABLE_RUNNERS)}")
        arity, need, weight = _SIGNATURE[self.op]
        missing = [k for k in need if getattr(self.attrs, k) is None]
        if missing:
            raise ValueError(f"layer {self.name!r} ({self.op}) needs attrs {missing}")
        if weight and "weight" not in self.tensors:
            raise ValueError(f"layer {self.name!r} ({self.op}) needs a weight tensor")
        if not weight and self.tensors:
            raise ValueError(f"layer {self.name!r} ({self.op}) takes no tensors")
        if len(self.inputs) != arity:
            raise ValueError(f"layer {self.name!r} ({self.op}) takes {arity} input(s), got {len(self.inputs)}")
        return self


class PortableManifest(_Strict):
    inputs: Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=1)]
    outputs: Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1)]
    layers: list[PortableLayer]


class PortableError(ValueError):
    """A portable checkpoint this reader refuses; the message names the file, the layer and the rule."""


def read_portable(path: str | Path) -> tuple[dict[str, torch.Tensor], PortableManifest]:
    """Load and validate a portable checkpoint: format version, ops, widths 1-32, fracs, and that every
    input, output and tensor reference names something defined before it."""
    try:
        ck = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler raises several types
        raise PortableError(f"{path}: not a readable plain-tensor file ({str(e).splitlines()[0][:200]})") from e
    if not isinstance(ck, dict) or set(ck) != {"format", "tensors", "manifest"}:
        raise PortableError(f"{path}: not a portable checkpoint (keys format, tensors, manifest)")
    if ck["format"] != FORMAT:
        raise PortableError(f"{path}: format {str(ck['format'])[:40]!r} is not supported; this reader reads {FORMAT}")
    t = ck["tensors"]
    if not isinstance(t, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in t.items()):
        raise PortableError(f"{path}: 'tensors' is not a {{name: tensor}} table")
    try:
        man = PortableManifest.model_validate(ck["manifest"])
    except ValueError as e:
        raise PortableError(f"{path}: manifest {error_line(e)}") from e
    defined = set(man.inputs)
    for lay in man.layers:
        refs = [i for i in lay.inputs if isinstance(i, str)]
        bad = [i for i in refs if i not in defined] + [k for k in lay.tensors.values() if k not in t]
        if bad or lay.name in defined:
            why = f"refers to {bad[0][:80]!r}, not defined before it" if bad else "is defined twice"
            raise PortableError(f"{path}: layer {lay.name!r} {why}")
        defined.add(lay.name)
    if not set(man.outputs) <= defined:
        raise PortableError(f"{path}: outputs {man.outputs} are not all layers")
    return t, man


def run_portable(path: str | Path, x: torch.Tensor) -> torch.Tensor:
    """Reference reader in plain PyTorch: run a portable checkpoint on a float batch.

    Reads the file with ``weights_only=True`` and validates it (:func:`read_portable`), rebuilds every
    value as ``code * 2**-frac``, and applies the activation quantization the manifest names. Returns the
    first output. Ops, widths and references outside the format are refused, never guessed.
    """
    t, man = read_portable(path)
    return run_manifest(t, man, x)[man.outputs[0]]


def run_manifest(t: dict[str, torch.Tensor], man: PortableManifest, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output (by layer name, which is the graph's node name) on batch ``x``."""
    env = {man.inputs[0]: x.float()}
    for lay in man.layers:
        env[lay.name] = _run_layer(lay, [env[i] if isinstance(i, str) else i for i in lay.inputs], t)
    return env


def state_manifest(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], PortableManifest]:
    """The tensors and validated manifest of an in-memory :func:`portable_state`."""
    return state["tensors"], PortableManifest.model_validate(state["manifest"])


def _deq(t: dict[str, torch.Tensor], key: str | None, p: PortablePrecision | None) -> torch.Tensor | None:
    if key is None:
        return None
    v = t[key]
    return v.float() if p is None else v.double().mul(2.0**-p.frac).float()


def _q(v: torch.Tensor, p: PortablePrecision | None) -> torch.Tensor:
    if p is None:
        return v
    lo, hi = (-(2 ** (p.width - 1)), 2 ** (p.width - 1) - 1) if p.signed else (0, 2**p.width - 1)
    s = 2.0**p.frac
    return torch.clamp(torch.round(v * s), lo, hi) / s


# manifest op -> how the plain-PyTorch reader computes it; one registration per op (with its arity, the attrs
# it needs and whether it reads a weight tensor: what the reader validates a file's layer against)
PORTABLE_RUNNERS = OpTable("portable reader")
_SIGNATURE: dict[str, tuple[int, tuple[str, ...], bool]] = {}


def register_portable(
    *ops: str, arity: int = 1, attrs: tuple[str, ...] = (), weight: bool = False
) -> Callable[[Runner], Runner]:
    """``fn(layer, inputs, tensors) -> tensor`` computes ``ops``; ``arity`` inputs, ``attrs`` required (fields of
    :class:`PortableAttrs`), ``weight``: the layer reads a weight tensor (and may read a bias)."""
    unknown = [a for a in attrs if a not in PortableAttrs.model_fields]
    if unknown:
        raise ValueError(
            f"portable reader: attrs {unknown} are not fields of the manifest ({', '.join(PortableAttrs.model_fields)})"
        )
    for op in ops:
        _SIGNATURE[op] = (arity, attrs, weight)
    return PORTABLE_RUNNERS.register(*ops)


Runner = Callable[["PortableLayer", list[Any], dict[str, torch.Tensor]], torch.Tensor]


def _run_layer(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    return PORTABLE_RUNNERS[lay.op](lay, ins, t)  # ops are validated against this table when the file is read


@register_portable("conv1d", "conv2d", attrs=("stride", "padding", "dilation", "groups", "kernel"), weight=True)
@register_portable("linear", "affine", weight=True)
def _mac(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    import torch.nn.functional as F

    pr, a = lay.precision, lay.attrs
    h = _q(ins[0], pr.get("data_in"))
    w = _deq(t, lay.tensors["weight"], pr.get("weight"))
    b = _deq(t, lay.tensors.get("bias"), pr.get("bias"))
    if lay.op == "linear":
        return F.linear(h, w, b)
    if lay.op in ("conv1d", "conv2d"):
        conv = F.conv1d if len(a.kernel) == 1 else F.conv2d  # type: ignore[arg-type]
        return conv(h, w, b, a.stride, a.padding, a.dilation, a.groups)
    shape = (1, -1) + (1,) * (h.dim() - 2)
    return h * w.reshape(shape) + (0 if b is None else b.reshape(shape))  # type: ignore[union-attr]


@register_portable("relu")
def _relu(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    return _q(torch.relu(ins[0]), lay.precision.get("data_out"))


@register_portable("add", "sub", "mul", arity=2)
def _arith(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    u, v = (_q(i, lay.precision.get("data_in")) if isinstance(i, torch.Tensor) else i for i in ins)
    return u + v if lay.op == "add" else u - v if lay.op == "sub" else u * v


@register_portable("reshape", attrs=("shape",))
def _reshape(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    return ins[0].reshape(lay.attrs.shape)


@register_portable("max_pool1d", "max_pool2d", attrs=("kernel", "stride", "padding"))
def _maxpool(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    import torch.nn.functional as F

    a = lay.attrs
    pool = F.max_pool1d if len(a.kernel) == 1 else F.max_pool2d  # type: ignore[arg-type]
    return pool(ins[0], a.kernel, a.stride, a.padding)


@register_portable("global_avgpool")
def _gap(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    return ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)


@register_portable("identity")
def _identity(lay: PortableLayer, ins: list[Any], t: dict[str, torch.Tensor]) -> torch.Tensor:
    return ins[0]
