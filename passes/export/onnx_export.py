"""ONNX exports of a quantized graph: QONNX ``Quant`` nodes or standard QuantizeLinear/DequantizeLinear.

Both write the same float graph (MatMul/Add, Conv, Mul/Add for folded batch norm, Relu, ...) and
differ only in how a quantized tensor is expressed:

- ``qonnx``: ``Quant(x, scale=2^-f, zeropt=0, bitwidth=w)`` with ``signed``, ``narrow=0``,
  ``rounding_mode="ROUND"`` (numpy round = half to even) on every quantized input, weight, bias
  and ReLU output; executed by ``qonnx.core.onnx_exec.execute_onnx``.
- ``onnx-qdq``: ``QuantizeLinear(x, 2^-f, 0)`` -> ``DequantizeLinear`` (opset 21) into int4/uint4
  (w <= 4), int8/uint8 (w <= 8) or int16/uint16 (w <= 16), followed by a ``Clip`` to
  [lo, hi] * 2^-f when w is narrower than the type; wider widths are refused. Executed by onnxruntime.
Weights/biases are stored as the exact values the graph computes with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qfx.graph.meta import TensorPrecision
from qfx.graph.trace import QGraph
from qfx.passes.export.ir import ExportError, Layer, OpTable, build_ir
from qfx.passes.transforms.quantize.formats import code_range

QONNX_DOMAIN = "qonnx.custom_op.general"


NODE_OUTPUTS = "qfx.node_outputs"


def node_values_onnx(path: str | Path, x: np.ndarray, fmt: str) -> dict[str, np.ndarray]:
    """Every graph node's value as the target executor computes it (qonnx's ``execute_onnx`` with its full
    context, or onnxruntime with the node tensors added as outputs), keyed by node name."""
    model = onnx.load(str(path))
    names = json.loads(next(p.value for p in model.metadata_props if p.key == NODE_OUTPUTS))
    if fmt == "qonnx":
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx

        mw = ModelWrapper(model)
        iname = mw.graph.input[0].name
        rows = [execute_onnx(mw, {iname: x[i : i + 1]}, return_full_exec_context=True) for i in range(len(x))]
        return {n: np.concatenate([r[t] for r in rows]) for n, t in names.items() if t in rows[0]}
    have = {o.name for o in model.graph.output}
    for t in dict.fromkeys(names.values()):
        if t not in have:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    outs = run_onnxruntime(model, x, all_outputs=True)
    return {n: outs[t] for n, t in names.items() if t in outs}


def _range(p: TensorPrecision) -> tuple[int, int, bool]:
    """Integer code range and signedness, from the format registry (never from the format's name)."""
    lo, hi = code_range(p)  # type: ignore[misc] - build_ir admits fixed-point formats only
    return lo, hi, lo < 0


class _Builder:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def const(self, hint: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op: str, inputs: list[str], hint: str, domain: str = "", out: str | None = None, **attrs: Any) -> str:
        out = out or self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(f"{hint}_{op}"), domain=domain, **attrs))
        return out

    def quant(self, x: str, p: TensorPrecision | None, hint: str, where: str) -> str:
        if p is None:
            return x
        lo, hi, signed = _range(p)
        scale = 2.0 ** -(p.frac or 0)
        if self.fmt == "qonnx":
            return self.op(
                "Quant",
                [x, self.const("scale", scale), self.const("zeropt", 0.0), self.const("bitwidth", float(p.width))],
                hint,
                domain=QONNX_DOMAIN,
                signed=int(signed),
                narrow=0,
                rounding_mode="ROUND",
            )
        if p.width <= 4:
            qt, native = (TensorProto.INT4, 4) if signed else (TensorProto.UINT4, 4)
        elif p.width <= 8:
            qt, native = (TensorProto.INT8, 8) if signed else (TensorProto.UINT8, 8)
        elif p.width <= 16:
            qt, native = (TensorProto.INT16, 16) if signed else (TensorProto.UINT16, 16)
        else:
            raise ExportError(
                f"onnx-qdq: {where} is quantized to {p.width} bits; QuantizeLinear has integer types up to "
                "16 bits (use --format qonnx, or quantize it to <= 16 bits)"
            )
        zp = self.fresh("zp")
        self.inits.append(helper.make_tensor(zp, qt, [], [0]))
        s = self.const("scale", scale)
        q = self.op("QuantizeLinear", [x, s, zp], hint)
        y = self.op("DequantizeLinear", [q, s, zp], hint)
        if p.width < native:
            y = self.op("Clip", [y, self.const("lo", lo * scale), self.const("hi", hi * scale)], hint)
        return y


Src = Callable[[int], str]  # input i of a layer as an ONNX tensor name (scalars become constants)
# deployment-IR op -> the function writing its ONNX nodes (both flavours); one registration per op
ONNX_EMITTERS = OpTable("ONNX export")
register_onnx = ONNX_EMITTERS.register


def _emit(b: _Builder, lay: Layer, env: dict[str, str]) -> str:
    def src(i: int) -> str:
        v = lay.inputs[i]
        return b.const("scalar", v) if isinstance(v, float) else env[v]

    fn = ONNX_EMITTERS.get(lay.op)
    if fn is None:
        raise ExportError(f"{b.fmt}: no ONNX form for layer op {lay.op!r} (node {lay.name!r})")
    return fn(b, lay, src)


@register_onnx("linear", "conv1d", "conv2d", "affine")
def _mac(b: _Builder, lay: Layer, src: Src) -> str:
    p, where = lay.precision, f"node {lay.name!r}"
    x = b.quant(src(0), p.get("data_in"), lay.name, f"{where} data_in")
    w = lay.params["weight"].numpy()
    bias = lay.params.get("bias")
    if lay.op == "linear":
        wq = b.quant(b.const(f"{lay.name}_weight", w.T), p.get("weight"), lay.name, f"{where} weight")
        y = b.op("MatMul", [x, wq], lay.name)
    elif lay.op in ("conv1d", "conv2d"):
        wq = b.quant(b.const(f"{lay.name}_weight", w), p.get("weight"), lay.name, f"{where} weight")
        a = lay.attrs
        y = b.op("Conv", [x, wq], lay.name, kernel_shape=a["kernel"], strides=a["stride"],
                 pads=a["padding"] + a["padding"], dilations=a["dilation"], group=a["groups"])  # fmt: skip
        if bias is not None:
            bias = bias.reshape(-1, *([1] * len(a["kernel"])))
    else:
        rank = len(lay.out_shape or (0, 0))
        shape = (-1, *([1] * (rank - 2)))
        wq = b.quant(b.const(f"{lay.name}_scale", w.reshape(shape)), p.get("weight"), lay.name, f"{where} weight")
        y = b.op("Mul", [x, wq], lay.name)
        bias = bias.reshape(shape) if bias is not None else None
    if bias is not None:
        bq = b.quant(b.const(f"{lay.name}_bias", bias.numpy()), p.get("bias"), lay.name, f"{where} bias")
        y = b.op("Add", [y, bq], lay.name)
    return y


@register_onnx("relu")
def _relu(b: _Builder, lay: Layer, src: Src) -> str:
    return b.quant(b.op("Relu", [src(0)], lay.name), lay.precision.get("data_out"), lay.name,
                   f"node {lay.name!r} output")  # fmt: skip


@register_onnx("add", "sub", "mul")
def _arith(b: _Builder, lay: Layer, src: Src) -> str:
    p = lay.precision.get("data_in")
    ins = [b.quant(src(i), p, lay.name, f"node {lay.name!r} input {i}") if isinstance(lay.inputs[i], str)
           else src(i) for i in range(2)]  # fmt: skip
    return b.op(lay.op.capitalize(), ins, lay.name)


@register_onnx("reshape")
def _reshape(b: _Builder, lay: Layer, src: Src) -> str:
    shape = b.const("shape", [-1, *lay.out_shape[1:]], np.int64)  # type: ignore[index]
    return b.op("Reshape", [src(0), shape], lay.name)


@register_onnx("max_pool1d", "max_pool2d")
def _maxpool(b: _Builder, lay: Layer, src: Src) -> str:
    a = lay.attrs
    return b.op("MaxPool", [src(0)], lay.name, kernel_shape=a["kernel"], strides=a["stride"], pads=a["padding"] * 2)


@register_onnx("global_avgpool")
def _gap(b: _Builder, lay: Layer, src: Src) -> str:
    return b.op("GlobalAveragePool", [src(0)], lay.name)


@register_onnx("identity")
def _identity(b: _Builder, lay: Layer, src: Src) -> str:
    return b.op("Identity", [src(0)], lay.name)


def to_onnx(graph: QGraph, fmt: str = "qonnx", batch: int | None = None) -> onnx.ModelProto:
    """Build the ONNX model (``fmt``: ``qonnx`` or ``onnx-qdq``); inputs keep the node names.

    ``batch``: a fixed batch size (QONNX tools, FINN and hls4ml want one; default 1 for qonnx) or
    ``None`` for a symbolic ``N`` (default for onnx-qdq).
    """
    if batch is None and fmt == "qonnx":
        batch = 1
    n_dim: int | str = "N" if batch is None else batch
    if fmt not in ("qonnx", "onnx-qdq"):
        raise ValueError(f"unknown ONNX flavour {fmt!r}")
    layers = build_ir(graph, fmt)
    b = _Builder(fmt)
    env: dict[str, str] = {}
    inputs, outputs = [], []
    shapes = {lay.name: lay.out_shape for lay in layers}
    for lay in layers:
        if lay.op == "input":
            dims = [n_dim, *lay.out_shape[1:]] if lay.out_shape else None  # type: ignore[index]
            inputs.append(helper.make_tensor_value_info(lay.name, TensorProto.FLOAT, dims))
            env[lay.name] = lay.name
        elif lay.op == "output":
            for i, o in enumerate(lay.inputs):
                name = o if len(lay.inputs) == 1 else f"{o}_out{i}"
                b.op("Identity", [env[o]], name, out=f"output_{i}" if len(lay.inputs) > 1 else "output")
                s = shapes.get(o)
                dims = [n_dim, *s[1:]] if isinstance(s, tuple) and s else None
                outputs.append(helper.make_tensor_value_info(b.nodes[-1].output[0], TensorProto.FLOAT, dims))
        else:
            env[lay.name] = _emit(b, lay, env)
    g = helper.make_graph(b.nodes, type(graph.gm).__name__, inputs, outputs, b.inits)
    if fmt == "qonnx":
        opsets = [helper.make_opsetid("", 13), helper.make_opsetid(QONNX_DOMAIN, 1)]
        model = helper.make_model(g, opset_imports=opsets, producer_name="qfx")
        model.ir_version = 8
    else:
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], producer_name="qfx")
        model.ir_version = 10
    # which ONNX tensor holds each graph node's output: verification names the node where outputs part
    helper.set_model_props(model, {NODE_OUTPUTS: json.dumps(env)})
    return model


def export_onnx(graph: QGraph, out: str | Path, fmt: str = "qonnx", batch: int | None = None) -> Path:
    """Write ``model.onnx`` (checked with ``onnx.checker``) into ``out``; for qonnx also run qonnx's
    shape inference and cleanup (``model_clean.onnx``), as FINN/hls4ml expect."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    model = to_onnx(graph, fmt, batch)
    if fmt == "onnx-qdq":
        onnx.checker.check_model(model, full_check=True)
    path = d / "model.onnx"
    onnx.save(model, path)
    if fmt == "qonnx" and len(model.graph.node) > CLEANUP_LIMIT:
        onnx.save(shapes_inferred(model), d / "model_clean.onnx")
    elif fmt == "qonnx":
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.util.cleanup import cleanup_model

        clean = cleanup_model(ModelWrapper(model))
        clean.save(str(d / "model_clean.onnx"))
    return path


# qonnx's cleanup looks tensors up by scanning every node (quadratic: 1,401 nodes took minutes); above this many
# ONNX nodes the clean model is ours: already unique names and no foldable constants, plus every tensor's shape
CLEANUP_LIMIT = 2000


def shapes_inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a shape (``value_info``) for every tensor, in linear time: onnx's own shape inference on a
    copy whose qonnx ``Quant`` nodes read as ``Identity`` (a Quant's output has its input's shape)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for n in probe.graph.node:
        if n.domain == QONNX_DOMAIN and n.op_type == "Quant":
            del n.input[1:]
            del n.attribute[:]
            n.op_type, n.domain = "Identity", ""
    del probe.opset_import[:]
    probe.opset_import.extend([helper.make_opsetid("", 13)])
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    return out


def run_qonnx(model: onnx.ModelProto | str | Path, x: np.ndarray) -> np.ndarray:
    """Execute with qonnx's own executor (``execute_onnx``) and return the first output."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    mw = ModelWrapper(str(model) if isinstance(model, Path) else model)
    name = mw.graph.input[0].name
    out = execute_onnx(mw, {name: x.astype(np.float32)})
    return out[mw.graph.output[0].name]


def run_onnxruntime(model: onnx.ModelProto | str | Path, x: np.ndarray, all_outputs: bool = False) -> Any:
    """Execute with onnxruntime (single thread, graph optimisations off) and return the first output
    (``all_outputs``: ``{name: array}`` of every graph output)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    res = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})
    return dict(zip((o.name for o in sess.get_outputs()), res, strict=True)) if all_outputs else res[0]
