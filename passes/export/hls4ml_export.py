"""hls4ml export: per-layer ``ap_fixed`` precisions from the graph's metadata, built by hls4ml's own
PyTorch converter and checked with its C simulation (``compile()`` + ``predict()``, g++ only).

The deployment IR (a chain of linear / folded batch norm / relu layers) becomes a plain
``nn.Sequential`` whose parameters are the exact quantized values; every quantized tensor gets
``fixed<w, w-f, RND_CONV, SAT>`` (``ufixed`` for ReLU outputs): weights/biases/scales as they are,
and a layer's *result* type is the ``data_in`` precision of the layer that reads it (that cast is our
input quantization, convergent rounding = half to even, saturating). Where the reader does not
quantize, the result type is wide enough to hold the exact value (accumulators sized from the
fan-in and the operand formats), so nothing is rounded that the graph does not round.
A ReLU whose unsigned output feeds a layer quantizing its input at the same frac width gets the
narrower of the two ranges (exactly the composition); at a different frac width the double
rounding cannot be one cast, so an extra cast layer follows (and ``notes`` says so).
Each IR op's hls4ml form is one registration in :data:`HLS_MODULES` (``@register_hls("op")``): a function of
an :class:`HlsStep` returning the plain torch layer(s) hls4ml converts, their precision keys and result types.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from qfx.graph.meta import TensorPrecision
from qfx.graph.trace import QGraph
from qfx.passes.export.ir import ExportError, Layer, OpTable, build_ir
from qfx.passes.transforms.quantize.formats import code_range

PASS_THROUGH = ("input", "output", "reshape", "identity")  # no hls4ml layer: the chain reads through them


@dataclass(frozen=True)
class Fx:
    """An ap_fixed / ap_ufixed type: ``width`` bits, ``frac`` fractional bits."""

    width: int
    frac: int
    signed: bool = True
    exact: bool = False  # a wide type that never rounds (accumulators): TRN/WRAP is fine

    @property
    def integer(self) -> int:
        return self.width - self.frac

    def __str__(self) -> str:
        base = "fixed" if self.signed else "ufixed"
        if self.exact:
            return f"{base}<{self.width},{self.integer}>"
        return f"{base}<{self.width},{self.integer},RND_CONV,SAT>"


def _fx(p: TensorPrecision) -> Fx:
    lo, _ = code_range(p)  # type: ignore[misc] - build_ir admits fixed-point formats only
    return Fx(p.width, p.frac or 0, lo < 0)


def _wide(int_bits: int, frac: int) -> Fx:
    return Fx(int_bits + frac, frac, True, exact=True)


def _mag_bits(t: torch.Tensor) -> int:
    """Integer bits (with sign) needed for the largest magnitude in ``t``."""
    m = float(t.abs().max()) if t.numel() else 0.0
    return max(1, math.ceil(math.log2(m + 1e-30)) + 2) if m > 0 else 1


@dataclass
class HlsPlan:
    model: nn.Sequential
    precisions: list[dict[str, str]]  # one per Sequential layer, hls4ml precision keys
    input_type: Fx
    in_features: int
    notes: list[str] = field(default_factory=list)


def _chain(layers: list[Layer]) -> list[Layer]:
    body = [lay for lay in layers if lay.op not in PASS_THROUGH]
    inputs = [lay for lay in layers if lay.op == "input"]
    outputs = [lay for lay in layers if lay.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1 or len(outputs[0].inputs) != 1:
        raise ExportError("hls4ml: export needs one input and one output")
    for lay in body:
        if lay.op not in HLS_MODULES:
            raise ExportError(
                f"hls4ml: node {lay.name!r} ({lay.op}) cannot be exported; the hls4ml export supports chains of "
                f"the IR ops {', '.join(HLS_MODULES)} and reshape/identity (use qonnx/onnx-qdq for convs, adds)"
            )
    prev = inputs[0].name
    alias = {}
    for lay in layers:
        if lay.op in ("reshape", "identity"):
            alias[lay.name] = alias.get(lay.inputs[0], lay.inputs[0])  # type: ignore[arg-type]
    for lay in body:
        src = alias.get(lay.inputs[0], lay.inputs[0])  # type: ignore[arg-type]
        if src != prev:
            raise ExportError(f"hls4ml: node {lay.name!r} does not read the previous layer: only chains export")
        prev = lay.name
    return body


@dataclass
class HlsStep:
    """What an hls4ml rule sees for one IR layer of the chain: the layer, the next one (``None`` at the end), the
    type of the value coming in, and the notes to add to."""

    lay: Layer
    nxt: Layer | None
    cur: Fx
    notes: list[str]

    def reader(self) -> Fx | None:
        """The type the next layer quantizes its input to (the cast this layer's result type must be), or None."""
        p = self.nxt.precision.get("data_in") if self.nxt is not None else None
        return _fx(p) if p else None


HlsLayer = tuple[nn.Module, dict[str, str], Fx]  # plain torch layer, hls4ml precision keys, result type
# deployment-IR op -> fn(HlsStep) -> the hls4ml layer(s) for it, in order; one registration per op
HLS_MODULES = OpTable("hls4ml export")
register_hls = HLS_MODULES.register


def _copy_into(m: nn.Module, **values: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        for k, v in values.items():
            getattr(m, k).copy_(v)
    return m


@register_hls("linear")
def _linear(s: HlsStep) -> list[HlsLayer]:
    w = s.lay.params["weight"]
    m = nn.Linear(w.shape[1], w.shape[0], bias="bias" in s.lay.params)
    p, exact = _mac_types(s.lay, s.cur, s.notes)
    return [(_copy_into(m, weight=w, **({"bias": s.lay.params["bias"]} if m.bias is not None else {})), p,
             s.reader() or exact)]  # fmt: skip


@register_hls("affine")
def _affine(s: HlsStep) -> list[HlsLayer]:
    w = s.lay.params["weight"]
    m = nn.BatchNorm1d(w.numel(), eps=0.0)  # scale = gamma / sqrt(1 + 0) exactly
    m = _copy_into(
        m, weight=w, bias=s.lay.params["bias"], running_mean=torch.zeros_like(w), running_var=torch.ones_like(w)
    )
    p, exact = _mac_types(s.lay, s.cur, s.notes)
    return [(m, p, s.reader() or exact)]


@register_hls("relu")
def _relu(s: HlsStep) -> list[HlsLayer]:
    return [(nn.ReLU(), {}, t) for t in _relu_types(s.lay, s.nxt, s.cur, s.notes)]


def _mac_types(lay: Layer, cur: Fx, notes: list[str]) -> tuple[dict[str, str], Fx]:
    """Weight/bias/accumulator types of a linear or affine layer and its exact output type."""
    wp, bp = lay.precision.get("weight"), lay.precision.get("bias")
    wt = _fx(wp) if wp else _wide(_mag_bits(lay.params["weight"]), 24)
    bt = _fx(bp) if bp else _wide(_mag_bits(lay.params["bias"]), 24) if "bias" in lay.params else None
    if not wp or (bt is not None and not bp):
        notes.append(f"{lay.name}: float weight/bias represented as wide fixed point (24 fractional bits)")
    fan = lay.params["weight"].shape[1] if lay.op == "linear" else 1
    grow = math.ceil(math.log2(fan + 1)) + 1
    frac = max(cur.frac + wt.frac, bt.frac if bt else 0)
    exact = _wide(max(cur.integer + wt.integer + grow, (bt.integer + 1) if bt else 0), frac)
    p = {"scale" if lay.op == "affine" else "weight": str(wt)}
    if bt is not None:
        p["bias"] = str(bt)
    if lay.op == "linear":
        p["accum"] = str(exact)
    return p, exact


def _relu_types(lay: Layer, nxt: Layer | None, cur: Fx, notes: list[str]) -> list[Fx]:
    """The type(s) a ReLU's value takes on its way to its reader: one result type, or two when the ReLU's own
    quantization and its reader's differ in frac width (two roundings/saturations cannot be one cast; the
    second is an extra ReLU layer, the identity on non-negative values, whose result type is the reader's)."""
    out = lay.precision.get("data_out")
    rd = nxt.precision.get("data_in") if nxt is not None else None
    if out and rd:
        o, r = _fx(out), _fx(rd)
        if o.frac == r.frac:
            return [Fx(min(o.width, r.width - 1 if r.signed else r.width), o.frac, False)]
        notes.append(f"{lay.name} -> {nxt.name}: ReLU output {o} requantized to {r}: an explicit cast layer")  # type: ignore[union-attr]
        return [o, r]
    if out or rd:
        return [_fx(out or rd)]
    return [Fx(cur.width, cur.frac, cur.signed, exact=True)]  # float relu: the input type holds it exactly


def plan(graph: QGraph) -> HlsPlan:
    """The plain model and the per-layer hls4ml precisions (see the module docstring)."""
    layers = build_ir(graph, "hls4ml")
    body = _chain(layers)
    shape = next(lay.out_shape for lay in layers if lay.op == "input")
    if shape is None or len(shape) != 2:
        raise ExportError(f"hls4ml: the input must be (batch, features); it is {shape}")
    notes: list[str] = []
    first_in = body[0].precision.get("data_in")
    in_type = _fx(first_in) if first_in else Fx(32, 16, exact=True)
    if not first_in:
        notes.append(f"{body[0].name}: the first layer does not quantize its input; hls4ml reads it as fixed<32,16>")
    cur = in_type
    precs: list[dict[str, str]] = []
    mods: list[nn.Module] = []
    for i, lay in enumerate(body):
        for m, p, t in HLS_MODULES[lay.op](HlsStep(lay, body[i + 1] if i + 1 < len(body) else None, cur, notes)):
            precs.append({**p, "result": str(t)})
            mods.append(m.eval())
            cur = t
    return HlsPlan(nn.Sequential(*mods).eval(), precs, in_type, shape[1], notes)


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors, so subprocesses too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def export_hls4ml(graph: QGraph, out: str | Path, backend: str = "Vitis", compile: bool = True) -> tuple[Any, HlsPlan]:
    """Convert with hls4ml into project directory ``out`` and (by default) compile its C simulation.

    Returns ``(hls_model, plan)``; ``hls_model.predict(x)`` runs the bit-accurate C simulation.
    """
    import hls4ml

    pl = plan(graph)
    n_in = pl.in_features
    cfg = hls4ml.utils.config_from_pytorch_model(
        pl.model, input_shape=(n_in,), granularity="name", backend=backend, default_precision="fixed<32,16>"
    )
    names = [k for k in cfg["LayerName"] if k != "input_1"]
    if len(names) != len(pl.precisions):
        raise ExportError(f"hls4ml: expected {len(pl.precisions)} layers, its config lists {names}")
    cfg["LayerName"]["input_1"]["Precision"]["result"] = str(pl.input_type)
    for name, p in zip(names, pl.precisions, strict=True):
        cfg["LayerName"][name]["Precision"].update(p)
    cfg["Model"]["Strategy"] = "Latency"
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    with _output_to(d / "qfx_build.log"):  # hls4ml and g++ print hundreds of lines
        hm = hls4ml.converters.convert_from_pytorch_model(
            pl.model, output_dir=str(d), project_name="qfx", backend=backend, hls_config=cfg, io_type="io_parallel"
        )
        if compile:
            try:
                hm.compile()
            except Exception as e:
                raise ExportError(f"hls4ml: the C simulation did not compile ({e}); see {d / 'qfx_build.log'}") from e
    _write_config(hm, pl, d)
    (d / "qfx_precisions.txt").write_text(
        "\n".join(f"{n}: {p}" for n, p in zip(names, pl.precisions, strict=True)) + "\n" + "\n".join(pl.notes) + "\n"
    )
    return hm, pl


def _plain(v: Any) -> Any:
    """YAML-safe data: tuples as lists, mappings with string keys, scalars as they are."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def _write_config(hm: Any, pl: HlsPlan, d: Path) -> None:
    """``hls4ml_config.yml`` that hls4ml's own ``parse_yaml_config`` (``yaml.safe_load``) reads: hls4ml
    writes the PyTorch model into it as a pickled Python object; here ``PytorchModel`` names
    ``qfx_model.pt`` (the plain ``nn.Sequential`` of torch.nn layers hls4ml converted, written with
    ``torch.save``) and every value is plain YAML."""
    import yaml

    torch.save(pl.model, d / "qfx_model.pt")
    cfg = {k: v for k, v in hm.config.config.items() if k != "PytorchModel"}
    cfg["PytorchModel"] = str(d / "qfx_model.pt")
    (d / "hls4ml_config.yml").write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))


def predict(hm: Any, x: np.ndarray) -> np.ndarray:
    """hls4ml C-simulation outputs for a float batch."""
    return np.asarray(hm.predict(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32).reshape(len(x), -1)
