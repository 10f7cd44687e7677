"""The FPGA back end: a quantized graph traced into da4ml's fixed-point IR, with LUT cost and latency.

da4ml (the distributed-arithmetic back end hls4ml uses) represents every value as an exact fixed-point
interval and compiles each constant matrix-vector product (CMVM) into an adder graph. This module
traces the deployment IR (:func:`~qfx.passes.export.ir.build_ir`) with the semantics of QuantizePass:

- a quantized tensor is ``clamp(round_half_even(x * 2**frac), lo, hi) * 2**-frac`` with ``lo``/``hi``
  from the format's code range (:func:`code_range`, so signedness comes from the format registry).
  da4ml rounds half up or truncates; half-to-even is built exactly from its primitives (:func:`fixed`):
  add ``2**-(f+1) - eps`` plus ``eps`` when the kept LSB is odd (``eps`` the value's own step), truncate,
  saturate;
- linear/conv/affine compute exactly (weights and biases are the quantized constants), ReLU then its
  output quantization, add/sub/mul after their inputs' quantization, views reshape.

Every tensor a MAC reads must be quantized (a float MAC has no fixed-point circuit): such a graph is
refused naming the node, as is any op outside :data:`DA4ML_OPS`. The network input arrives as the
codes of the format of its first reader (the host quantizes it; all readers must agree).

Costs are da4ml's: ``cost`` is its LUT estimate of the combinational logic (adder graphs, ReLUs,
quantizers, muxes), ``latency`` its adder depth; no control logic, registers or I/O. Each CMVM is solved
once per (matrix, input intervals) and cached (:data:`CMVM_CACHE`), so a search pays each distinct layer
configuration once.
"""

from __future__ import annotations

import contextvars
import ctypes
import decimal
import functools
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from qfx.graph.cache import LockedLRU
from qfx.graph.meta import TensorPrecision
from qfx.graph.safeio import out_path
from qfx.graph.trace import QGraph
from qfx.passes.export.ir import ExportError, Layer, OpTable, build_ir
from qfx.passes.export.tools import Progress, run_tool
from qfx.passes.transforms.quantize.formats import code_range
from qfx.passes.transforms.quantize.quantizers import integer_quantize, make_quantizer

FMT = "da4ml"
CACHE_SIZE = 4096
P = ParamSpec("P")
R = TypeVar("R")


# da4ml keeps a value as Decimals scaled by a power-of-two factor that shrinks layer by layer (2^-62 after five
# 12-bit jsc-s layers); at Python's default 28 significant digits such a factor is rounded, a constant's raw value
# with it, and the circuit comes out 1 LSB off (a batch norm's shift: 1 row in 1,000 of uniform 12-bit jsc-s
# differed at the output, identically in the Python executor, the C++ one and Verilator). 2^-n needs ~0.7n digits.
DECIMAL_DIGITS = 400


def exact_decimals(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run with DECIMAL_DIGITS-digit Decimals (a local context: this thread/task only, restored after)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with decimal.localcontext() as ctx:
            ctx.prec = DECIMAL_DIGITS
            return fn(*args, **kwargs)

    return run


def _da4ml() -> Any:
    try:
        import da4ml.trace as trace
    except ImportError as e:  # pragma: no cover - da4ml is a declared dependency of the deploy extra
        raise ExportError("the FPGA back end needs da4ml: pip install 'qfx[deploy]'") from e
    return trace


def kif(p: TensorPrecision) -> tuple[int, int, int]:
    """da4ml's (sign bit, integer bits, fraction bits) of a fixed-point precision."""
    lo, hi = code_range(p)  # type: ignore[misc]  # build_ir refused non fixed-point precisions
    k = int(lo < 0)
    f = p.frac or 0
    return k, p.width - k - f, f


def _fit_trn(v: Any, k: int, i: int, f: int, overflow: str = "SAT") -> Any:
    """``v`` truncated to ``f`` fraction bits and saturated (``"SAT"``) or wrapped (``"WRAP"``) to (k, i, f).

    da4ml carries constant shifts as a power-of-two ``_factor`` on a variable; a saturation multiplexer on a
    value whose factor is far from 1 gets operands at shifts its interpreter and Verilog generator reject (or
    order its constant wrongly). The value is therefore fitted in units of its factor (``v * 2**e`` is the
    same wires, a relabelling) and scaled back afterwards."""
    e = -round(math.log2(abs(float(v._factor)))) if v.low != v.high else 0
    if e:
        return (v * 2.0**e).quantize(k, i + e, f - e, overflow, "TRN") * 2.0**-e
    return v.quantize(k, i, f, overflow, "TRN")


def _const(v: Any, value: float) -> Any:
    from da4ml.trace import FixedVariable

    return FixedVariable.from_const(value, hwconf=v.hwconf)


def _fixed_var(v: Any, k: int, i: int, f: int, rnd: str = "half_even", overflow: str = "saturate") -> Any:
    """``v`` rounded to ``f`` fraction bits (half to even, half up or truncated) and saturated or wrapped to
    (k, i, f), exactly as QuantizePass computes it. A constant is computed here (da4ml does not wrap constants,
    which the half-to-even construction below relies on) and a zero-width format is the constant 0."""
    if k + i + f <= 0:
        return _const(v, 0.0)
    if v.low == v.high:
        t = torch.tensor([float(v.low)], dtype=torch.float64)
        return _const(v, float(integer_quantize(t, k + i + f, f, bool(k), rnd, overflow)[0]))
    ovf = "SAT" if overflow == "saturate" else "WRAP"
    e = -round(math.log2(abs(float(v._factor))))
    if e:
        return _fixed_var(v * 2.0**e, k, i + e, f - e, rnd, overflow) * 2.0**-e
    if v.kif[2] <= f or rnd == "trunc":
        return _fit_trn(v, k, i, f, ovf)
    step, eps = 2.0**-f, 2.0 ** -v.kif[2]
    if rnd == "half_up":
        return _fit_trn(v + step / 2, k, i, f, ovf)
    lsb = v.quantize(0, 1 - f, f, "WRAP", "TRN")  # the kept LSB: 0 or 2**-f
    return _fit_trn(v + (step / 2 - eps) + lsb * (eps / step), k, i, f, ovf)


def _kif_maps(p: TensorPrecision, q: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-element (k, i, f) arrays of ``shape``: from a map quantizer's maps, else the precision's one format."""
    if q is None or getattr(q, "widths", None) is None:
        k, i, f = kif(p)
        return tuple(np.full(shape, v, dtype=np.int64) for v in (k, i, f))  # type: ignore[return-value]
    w, f = (t.numpy().astype(np.int64) for t in (q.widths, q.fracs))
    if w.size == math.prod(shape) and w.shape != shape:  # maps of a reader behind a reshape (flatten)
        w, f = w.reshape(shape), f.reshape(shape)
    w, f = np.broadcast_to(w, shape), np.broadcast_to(f, shape)
    k = np.full(shape, int(q.signed), dtype=np.int64)
    live = w > 0
    return np.where(live, k, 0), np.where(live, w - k - f, 0), np.where(live, f, 0)


def fixed(x: Any, p: TensorPrecision | None, q: Any = None) -> Any:
    """``x`` (a FixedVariableArray) quantized as QuantizePass does for precision ``p`` (None: unchanged); ``q``:
    the quantizer when it holds per-element maps."""
    if p is None:
        return x
    trace = _da4ml()
    ks, is_, fs = _kif_maps(p, q, x._vars.shape)
    out = np.array(
        [_fixed_var(v, int(k), int(i), int(f), p.round, p.overflow)
         for v, k, i, f in zip(x._vars.ravel(), ks.ravel(), is_.ravel(), fs.ravel(), strict=True)],
        dtype=object,
    ).reshape(x._vars.shape)  # fmt: skip
    return trace.FixedVariableArray(out, x.solver_options, hwconf=x.hwconf)


# (matrix bytes, shape, input intervals, quick) -> da4ml solution; LRU
CMVM_CACHE: LockedLRU[Any] = LockedLRU(CACHE_SIZE)
# True while estimating (hw.fpga): da4ml tries one decomposition of each matrix instead of all of them, about
# 4x faster and within ~1% of the LUTs; exports always search them all
QUICK: contextvars.ContextVar[bool] = contextvars.ContextVar("qfx_da4ml_quick", default=False)


def cmvm(x: Any, mat: np.ndarray) -> Any:
    """``x @ mat`` for a vector FixedVariableArray and a constant matrix, through a cached CMVM solution."""
    from da4ml.cmvm import solve

    trace = _da4ml()
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    qint = tuple((float(v.low), float(v.high), float(v.step)) for v in x._vars)
    quick = QUICK.get()
    key = (mat.tobytes(), mat.shape, qint, quick)
    sol = CMVM_CACHE.get_or(
        key, lambda: solve(mat, qintervals=list(qint), latencies=[0.0] * len(qint), search_all_decompose_dc=not quick)
    )
    return trace.FixedVariableArray(np.asarray(sol(x._vars), dtype=object), x.solver_options, hwconf=x.hwconf)


def _exact(w: torch.Tensor, lay: Layer, role: str) -> np.ndarray:
    """Constant ``role`` of ``lay`` as float64; refused when float32 (da4ml's kernel type) changes it."""
    a = w.detach().double().numpy()
    if role in ("weight",) and not np.array_equal(a.astype(np.float32).astype(np.float64), a):
        raise ExportError(f"{FMT}: node {lay.name!r} {role} is not exact in float32 (da4ml's constant type)")
    return a


# deployment-IR op -> fn(layer, input arrays (FixedVariableArray | float), env) -> FixedVariableArray
DA4ML_OPS = OpTable("da4ml")
register_da4ml = DA4ML_OPS.register


def _needs(lay: Layer, *roles: str) -> None:
    missing = [r for r in roles if r not in lay.precision]
    if missing:
        raise ExportError(
            f"{FMT}: node {lay.name!r} ({lay.op}) does not quantize {', '.join(missing)}; a fixed-point circuit "
            "needs every MAC operand quantized (quantize the node, or export to onnx/torch)"
        )


def _affine_out(lay: Layer, acc: Any, channels_first: bool) -> Any:
    b = lay.params.get("bias")
    if b is None:
        return acc
    bias = _exact(b, lay, "bias")
    if channels_first and acc.ndim > 1:
        bias = bias.reshape((-1,) + (1,) * (acc.ndim - 1))
    return acc + bias


@register_da4ml("linear")
def _linear(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    _needs(lay, "data_in", "weight", *(("bias",) if "bias" in lay.params else ()))
    x = fixed(ins[0], lay.precision["data_in"], lay.quantizers.get("data_in"))
    w = _exact(lay.params["weight"], lay, "weight").T  # (in, out)
    flat = x.reshape((-1, x.shape[-1]))
    rows = [cmvm(flat[r], w) for r in range(flat.shape[0])]
    acc = _stack(rows).reshape((*x.shape[:-1], w.shape[1]))
    b = lay.params.get("bias")
    return acc if b is None else acc + _exact(b, lay, "bias")


def _stack(arrs: list[Any]) -> Any:
    trace = _da4ml()
    return trace.FixedVariableArray(np.stack([a._vars for a in arrs]), arrs[0].solver_options, hwconf=arrs[0].hwconf)


def _zero(x: Any) -> Any:
    from da4ml.trace import FixedVariable

    return FixedVariable.from_const(0.0, hwconf=x.hwconf)


@register_da4ml("conv1d", "conv2d")
def _conv(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    """Conv1d/2d unrolled over output positions: one CMVM per (position, group), solutions shared."""
    _needs(lay, "data_in", "weight", *(("bias",) if "bias" in lay.params else ()))
    trace = _da4ml()
    x = fixed(ins[0], lay.precision["data_in"], lay.quantizers.get("data_in"))
    a = lay.attrs
    nd = len(a["kernel"])
    xv = x._vars.reshape((x.shape[0],) + x.shape[1:] + (1,) * (2 - nd))  # (C, H, W) with W=1 for 1-d
    pad = list(a["padding"]) + [0] * (2 - nd)
    dil = list(a["dilation"]) + [1] * (2 - nd)
    st = list(a["stride"]) + [1] * (2 - nd)
    kern = list(a["kernel"]) + [1] * (2 - nd)
    c, h, wd = xv.shape
    padded = np.full((c, h + 2 * pad[0], wd + 2 * pad[1]), _zero(x), dtype=object)
    padded[:, pad[0] : pad[0] + h, pad[1] : pad[1] + wd] = xv
    oh = (h + 2 * pad[0] - dil[0] * (kern[0] - 1) - 1) // st[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kern[1] - 1) - 1) // st[1] + 1
    wt = _exact(lay.params["weight"], lay, "weight")
    cout, groups = wt.shape[0], a["groups"]
    cin_g, cout_g = c // groups, cout // groups
    wt = wt.reshape(cout, cin_g, kern[0], kern[1])
    out = np.empty((cout, oh, ow), dtype=object)
    for g in range(groups):
        mat = wt[g * cout_g : (g + 1) * cout_g].reshape(cout_g, -1).T  # (cin_g*kh*kw, cout_g)
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * st[0], j * st[1]
                patch = padded[
                    g * cin_g : (g + 1) * cin_g,
                    hs : hs + dil[0] * (kern[0] - 1) + 1 : dil[0],
                    ws : ws + dil[1] * (kern[1] - 1) + 1 : dil[1],
                ].ravel()
                vec = trace.FixedVariableArray(patch, x.solver_options, hwconf=x.hwconf)
                out[g * cout_g : (g + 1) * cout_g, i, j] = cmvm(vec, mat)._vars
    res = trace.FixedVariableArray(out if nd == 2 else out.reshape(cout, oh), hwconf=x.hwconf)
    return _affine_out(lay, res, channels_first=True)


@register_da4ml("affine")
def _affine(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    _needs(lay, "data_in", "weight", "bias")
    x = fixed(ins[0], lay.precision["data_in"], lay.quantizers.get("data_in"))
    w = _exact(lay.params["weight"], lay, "weight")
    w = w.reshape((-1,) + (1,) * (x.ndim - 1))
    return _affine_out(lay, x * w, channels_first=True)


@register_da4ml("relu")
def _relu(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    return fixed(ins[0].relu(), lay.precision.get("data_out"), lay.quantizers.get("data_out"))


def _dyadic(v: float, lay: Layer) -> float:
    if not math.isfinite(v) or v * 2.0**24 != math.floor(v * 2.0**24) or abs(v) > 2.0**24:
        raise ExportError(f"{FMT}: node {lay.name!r} uses the constant {v!r}, not an exact fixed-point value")
    return v


@register_da4ml("add", "sub", "mul")
def _arith(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    p = lay.precision.get("data_in")
    u, v = (fixed(i, p, lay.quantizers.get("data_in")) if not isinstance(i, float) else _dyadic(i, lay) for i in ins)
    if lay.op == "mul" and not (isinstance(u, float) or isinstance(v, float)):
        _needs(lay, "data_in")
    return u + v if lay.op == "add" else u - v if lay.op == "sub" else u * v


@register_da4ml("reshape")
def _reshape(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    return ins[0].reshape(tuple(lay.out_shape[1:]))  # type: ignore[index]


@register_da4ml("identity")
def _identity(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    return ins[0]


@register_da4ml("max_pool1d", "max_pool2d")
def _maxpool(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    trace = _da4ml()
    a = lay.attrs
    if any(a["padding"]):
        raise ExportError(f"{FMT}: node {lay.name!r}: max pool with padding is not supported")
    x = ins[0]._vars
    nd = len(a["kernel"])
    xv = x.reshape(x.shape + (1,) * (2 - nd))
    k = list(a["kernel"]) + [1] * (2 - nd)
    s = list(a["stride"]) + [1] * (2 - nd)
    oh, ow = (xv.shape[1] - k[0]) // s[0] + 1, (xv.shape[2] - k[1]) // s[1] + 1
    out = np.empty((xv.shape[0], oh, ow), dtype=object)
    for idx in np.ndindex(out.shape):
        c, i, j = idx
        win = xv[c, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]].ravel()
        m = win[0]
        for v in win[1:]:
            m = m.max_of(v)
        out[idx] = m
    return trace.FixedVariableArray(out.reshape(out.shape[: 1 + nd]), hwconf=ins[0].hwconf)


@register_da4ml("global_avgpool")
def _gap(lay: Layer, ins: list[Any], env: dict[str, Any]) -> Any:
    trace = _da4ml()
    x = ins[0]._vars
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[1]
    if n & (n - 1):
        raise ExportError(f"{FMT}: node {lay.name!r}: average over {n} positions is not a power of two (inexact)")
    out = np.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=object)
    for c in range(x.shape[0]):
        s = flat[c, 0]
        for v in flat[c, 1:]:
            s = s + v
        out.reshape(-1)[c] = s * (1.0 / n)
    return trace.FixedVariableArray(out, hwconf=ins[0].hwconf)


@dataclass
class Traced:
    """A graph as one da4ml combinational logic: ``comb`` (cost, latency, predict), the input precision
    (the host feeds its codes) and the per-sample input/output shapes."""

    comb: Any
    input_precision: TensorPrecision
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    interpreter: str = "da4ml interpreter"  # which executor :meth:`predict` last used
    input_quantizer: Any = None  # the input's reader's quantizer when it holds per-element maps
    pipeline: Any = None  # the Pipelined record of a clocked RTL export (None: combinational)

    @property
    def luts(self) -> float:
        return float(self.comb.cost)

    @property
    def latency(self) -> float:
        return float(self.comb.latency[1])

    def quantize_input(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The float64 fixed-point values the host feeds for float inputs ``x`` (QuantizePass semantics)."""

        t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        q = self.input_quantizer or make_quantizer(self.input_precision)
        return q(t).numpy().reshape(len(t), -1)

    @exact_decimals
    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """da4ml's bit-exact interpreter on float inputs (quantized to the input precision first): its C++ one, or
        where that rejects a multiplexer's operand shift (da4ml 0.6, widely different scales between layers) its
        Python reference executor, row by row (~10 ms a row); :attr:`interpreter` says which ran."""
        xq = self.quantize_input(x)
        try:
            out = np.asarray(self.comb.predict(xq, n_threads=1), dtype=np.float64).reshape(len(xq), -1)
            self.interpreter = "da4ml interpreter"
        except RuntimeError as e:
            if "msb_mux" not in str(e):
                raise ExportError(f"{FMT}: da4ml's interpreter failed on this logic: {e}") from e
            self.interpreter = "da4ml Python interpreter (its C++ one rejects a multiplexer shift here)"
            return self._python(xq)
        # da4ml 0.6's C++ interpreter is wrong on some wide logic (uniform 12-bit jsc-s: every row); its Python
        # executor is the reference: rows spread over the batch are checked against it, and on any difference
        # the Python one computes every row
        idx = np.unique(np.linspace(0, len(xq) - 1, min(CROSS_CHECK_ROWS, len(xq))).astype(int))
        bad = int((~(self._python(xq[idx]) == out[idx]).all(1)).sum()) if len(xq) else 0
        if bad:
            self.interpreter = (f"da4ml Python interpreter (its C++ one differed from it on {bad} of {len(idx)} "
                                "cross-checked rows)")  # fmt: skip
            return self._python(xq)
        return out

    def _python(self, xq: np.ndarray) -> np.ndarray:
        """da4ml's Python reference executor, row by row."""
        rows = [np.asarray(self.comb(row), dtype=np.float64).reshape(-1) for row in xq]
        return np.stack(rows) if rows else np.zeros((0, int(np.prod(self.out_shape))))


def _input_precision(layers: list[Layer]) -> tuple[TensorPrecision, Any]:
    """The precision every reader of the input quantizes it to (through reshapes): the port's format."""
    front = [next(lay.name for lay in layers if lay.op == "input")]
    readers: list[Layer] = []
    while front:
        name = front.pop()
        for lay in layers:
            if name in lay.inputs:
                (front.append(lay.name) if lay.op in ("reshape", "identity") else readers.append(lay))
    precs = {str(lay.precision.get("data_in")): lay.precision.get("data_in") for lay in readers}
    maps = next((lay.quantizers["data_in"] for lay in readers if "data_in" in lay.quantizers), None)
    for lay in readers:
        if "weight" in lay.params:
            _needs(lay, "data_in")  # a MAC reading the input unquantized: name it and what it lacks
    if len(precs) != 1 or None in precs.values():
        who = ", ".join(f"{lay.name} ({lay.precision.get('data_in') or 'float'})" for lay in readers)
        raise ExportError(
            f"{FMT}: the input must be read at one fixed-point precision (the RTL's input port); "
            f"its readers read it as: {who}"
        )
    return next(iter(precs.values())), maps  # type: ignore[return-value]


@exact_decimals
def trace_graph(graph: QGraph) -> Traced:
    """The graph traced into one da4ml combinational logic (raises :class:`ExportError` naming a node it
    cannot express)."""
    trace = _da4ml()
    layers = build_ir(graph, FMT)
    if sum(lay.op == "input" for lay in layers) != 1:
        raise ExportError(f"{FMT}: the RTL back end takes graphs with exactly one input")
    p_in, q_in = _input_precision(layers)
    env: dict[str, Any] = {}
    inp = None
    out_name = None
    for lay in layers:
        if lay.op == "input":
            inp = trace.FixedVariableArrayInput(tuple(lay.out_shape[1:]))  # type: ignore[index]
            shape = tuple(lay.out_shape[1:])  # type: ignore[index]
            env[lay.name] = inp.quantize(*_kif_maps(p_in, q_in, shape), "WRAP", "TRN")  # the port carries the codes
            continue
        if lay.op == "output":
            if len(lay.inputs) != 1:
                raise ExportError(f"{FMT}: the RTL back end takes graphs with exactly one output")
            out_name = lay.inputs[0]
            continue
        fn = DA4ML_OPS.get(lay.op)
        if fn is None:
            raise ExportError(
                f"{FMT}: node {lay.name!r} ({lay.op}) has no fixed-point circuit; supported: {', '.join(DA4ML_OPS)}"
            )
        env[lay.name] = fn(lay, [env[i] if isinstance(i, str) else i for i in lay.inputs], env)
    out = env[out_name]  # type: ignore[index]
    if not hasattr(out, "_vars"):
        raise ExportError(f"{FMT}: the output {out_name!r} is not a tensor computed from the input")
    comb = trace.comb_trace(inp, out)
    return Traced(comb, p_in, tuple(inp.shape), tuple(out.shape), input_quantizer=q_in)  # type: ignore[union-attr]


# ---------------------------------------------------------------- projects, simulation, synthesis

TOP = "qfx_model"
STATIC_SOURCES = ("binop.v", "multiplier.v", "mux.v", "negative.v", "shift_adder.v")  # no lookup tables


# The delay model that turns a clock period into a pipeline stage's adder depth. A MODEL, not a measurement:
# one adder level of da4ml's logic (a LUT6 + carry-chain adder of ~8-16 bits with local routing) is taken as
# 0.6 ns and a stage's fixed cost (clock-to-out, setup, clock skew and uncertainty) as 0.5 ns, figures of the
# order AMD documents for UltraScale+ -2 parts (DS923 switching characteristics: LUT ~0.1 ns, CARRY8 ~0.1-0.3 ns,
# FF clock-to-out + setup ~0.2 ns; routing dominates). Calibrate against your tool's timing report: qfx's own
# timing truth is `qfx synth --clock-ns` (Yosys cell counts; no place and route here).
ADDER_LEVEL_NS = 0.6
STAGE_OVERHEAD_NS = 0.5


def stage_levels(clock_ns: float) -> int:
    """Adder levels one pipeline stage may hold at ``clock_ns`` under the delay model above (at least 1)."""
    if not (math.isfinite(clock_ns) and 0 < clock_ns <= 1000):
        raise ExportError(f"clock period {clock_ns!r} ns: give a number in (0, 1000]")
    return max(1, int((clock_ns - STAGE_OVERHEAD_NS) // ADDER_LEVEL_NS))


CROSS_CHECK_ROWS = 4  # rows of every C++ interpreter run recomputed by da4ml's Python executor


@dataclass
class Pipelined:
    """What a clocked export wrote: the period, levels per stage, stages and latency (II = 1)."""

    clock_ns: float
    levels_per_stage: int
    stages: int
    ffs: int = 0  # register bits of the pipeline (da4ml's Pipeline.reg_bits)

    @property
    def latency_cycles(self) -> int:
        """Clock edges from the one that registers an input to the one that registers its output (a register at
        each stage's input and one at the output: ``stages`` cycles apart, da4ml's binder's latency)."""
        return self.stages

    @property
    def latency_ns(self) -> float:
        return self.latency_cycles * self.clock_ns


@exact_decimals
def write_project(traced: Traced, out: str | Path, flavor: str, clock_ns: float | None = None) -> Pipelined | None:
    """Write da4ml's project for ``traced`` into directory ``out``: ``verilog``/``vhdl`` (RTL with
    Vivado/Quartus scripts, ``src/qfx_model.v``) or ``hls`` (da4ml's HLS C++). With ``clock_ns`` (RTL only) the
    logic is cut into an initiation-interval-1 pipeline of :func:`stage_levels` adder levels per stage
    (da4ml's ``to_pipeline``; registers at each stage's input and at the output) and its timing constraint
    files name the period; returns the :class:`Pipelined` record then, else None."""
    from da4ml.codegen import HLSModel, RTLModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if traced.comb.lookup_tables:
        raise ExportError(f"{FMT}: the traced logic uses lookup tables, which qfx does not emit")
    if clock_ns is not None and flavor == "hls":
        raise ExportError(f"{FMT}: a clock target applies to verilog and vhdl, not to HLS C++ (its tool schedules it)")
    try:
        if flavor == "hls":
            HLSModel(traced.comb, TOP, out).write()
            return None
        if clock_ns is None:
            RTLModel(traced.comb, TOP, out, flavor=flavor).write()
            _size_wide_literals(out)
            return None
        from da4ml.trace.pipeline import to_pipeline

        levels = stage_levels(clock_ns)
        pipe = to_pipeline(traced.comb, levels, verbose=False)
        RTLModel(pipe, TOP, out, flavor=flavor, clock_period=clock_ns).write()
        _size_wide_literals(out)
        return Pipelined(clock_ns, levels, len(pipe.solutions), int(pipe.reg_bits))
    except AssertionError as e:  # da4ml's generators assert on logic they cannot express
        raise ExportError(f"{FMT}: da4ml cannot write this logic as {flavor} ({str(e)[:200]})") from e


_WIDE_LITERAL = re.compile(r"(?<![\w'])'b([01]{33,})\b")


def _size_wide_literals(project: Path) -> int:
    """da4ml writes constants wider than 32 bits as unsized binary literals (``'b1000...0``, 33+ digits), which
    Verilator rejects ("Too many digits for 32 bit number") while Icarus and Yosys read them at their digit count:
    give each its digit count as its size (the same value, unsigned, in every tool). Returns how many."""
    n = 0
    for f in sorted((project / "src").glob("*.v")):
        text = f.read_text()
        new, k = _WIDE_LITERAL.subn(lambda m: f"{len(m.group(1))}'b{m.group(1)}", text)
        if k:
            f.write_text(new)
            n += k
    return n


def tools() -> dict[str, str | None]:
    """The external tools the RTL checks use, with their paths (None: not on PATH)."""
    return {t: shutil.which(t) for t in ("verilator", "yosys", "g++", "iverilog", "vvp", "ghdl", "nextpnr-ice40")}


def _verilator_include() -> Path:
    """Verilator's include directory (``verilator --getenv VERILATOR_ROOT``)."""
    r = subprocess.run(["verilator", "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True, check=True)
    return Path(r.stdout.strip()) / "include"


class RTLSimulator:
    """The Verilog of a project compiled by Verilator into a shared library, run on batches of inputs.

    Built here (not with da4ml's makefile) so that it works with the Verilator of the Debian/Ubuntu
    package as well: ``verilator --cc --build`` then g++ links da4ml's binder with Verilator's runtime."""

    def __init__(self, project: Path, traced: Traced, jobs: int = 2, progress: Progress | None = None) -> None:
        self.traced = traced
        self._progress = progress
        # Built in a private temporary copy: GNU make (which Verilator drives) cannot build in a directory
        # whose path holds a space, and the export directory keeps only what it ships. Every path is absolute.
        with tempfile.TemporaryDirectory(prefix="qfx-rtl-") as tmp:
            build = Path(tmp)
            shutil.copytree(Path(project) / "src", build / "src")
            shutil.copytree(Path(project) / "sim", build / "sim", ignore=shutil.ignore_patterns("obj_dir", "*.so"))
            self._lib = self._build(build, jobs)  # loaded: the file may go with the directory

    def _build(self, project: Path, jobs: int) -> ctypes.CDLL:
        sim = project / "sim"
        obj = sim / "obj_dir"
        wrapper = f"{TOP}_wrapper"
        inc = _verilator_include()
        compat = sim / "static_compat"  # lint pragmas older Verilators (Debian's 5.006) reject: same logic
        compat.mkdir(exist_ok=True)
        for f in (project / "src" / "static").glob("*.v"):
            (compat / f.name).write_text(re.sub(r"lint_(off|on) WIDTH(TRUNC|EXPAND)", r"lint_\1 WIDTH", f.read_text()))
        self._run(
            [
                "verilator",
                "--cc",
                "--build",
                "-j",
                str(jobs),
                f"{wrapper}.v",
                "--prefix",
                f"V{wrapper}",
                "-CFLAGS",
                "-std=c++17 -fPIC -O0",
                "-MAKEFLAGS",
                "OPT_FAST=-O0",
                "-MAKEFLAGS",
                "OPT_SLOW=-O0",
                "-I../src",
                "-Istatic_compat",
                "-I../src/static",
            ],
            sim,
        )  # fmt: skip  -O0: -Os takes minutes
        lib = sim / f"lib{wrapper}.so"
        self._run(
            ["g++", "-std=c++17", "-fPIC", "-O", "-shared", "-pthread", f"-I{obj}", f"-I{inc}", f"-I{inc / 'vltstd'}",
             "-I../src", "-o", str(lib), f"{wrapper}_binder.cc", str(obj / f"V{wrapper}__ALL.a"),
             str(inc / "verilated.cpp"), str(inc / "verilated_threads.cpp"), "-Wl,--no-undefined"], sim)  # fmt: skip
        return ctypes.CDLL(str(lib))

    def _run(self, cmd: list[str], cwd: Path) -> None:
        run_tool(cmd, cwd, f"{cmd[0]} build of the RTL simulator", self._progress)

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The RTL's outputs for float inputs ``x`` (quantized to the input precision first)."""
        from da4ml.codegen.rtl.rtl_model import get_io_kifs

        comb = self.traced.comb
        data = self.traced.quantize_input(x)
        n_in, n_out = comb.shape
        kin, kout = get_io_kifs(comb)
        w_in, w_out = int(sum(map(np.max, kin))), int(sum(map(np.max, kout)))
        if max(w_in, w_out) > 32:
            raise ExportError(f"{FMT}: ports of {w_in}/{w_out} bits do not fit the simulator's int32 words")
        f_in = int(np.max(kin[2]))
        inp = np.ascontiguousarray(np.floor(data.ravel() * 2.0**f_in), dtype=np.int32)
        out = np.empty(len(data) * n_out, dtype=np.int32)
        ptr = ctypes.POINTER(ctypes.c_int32)
        self._lib.inference(
            inp.ctypes.data_as(ptr), out.ctypes.data_as(ptr), ctypes.c_size_t(len(data)), ctypes.c_size_t(1)
        )
        k, i, f = (int(np.max(a)) for a in kout)
        span, off = 2.0 ** (k + i + f), k * 2.0 ** (i + f)
        return ((out.reshape(len(data), n_out).astype(np.float64) + off) % span - off) * 2.0**-f


def synth(project: Path, timeout: float = 1800, progress: Progress | None = None) -> dict[str, int]:
    """Yosys ``synth_xilinx`` of the project's Verilog: cell counts ``LUT`` (all LUT1-6), ``FF``, ``CARRY``
    (CARRY4/8), ``DSP`` (DSP48*), ``MUXF`` and each raw cell type, and ``LTP``: Yosys ``ltp`` over the mapped
    netlist without its flip-flops, the longest path between registers or ports in cells (a LUT or CARRY4 level
    each; a structural depth, not a timing analysis). Raises RuntimeError when yosys fails.

    Yosys reads a script file ``synth.ys`` that we write, naming only our own relative file names; the
    project directory reaches it as its working directory, so no path text is ever parsed by Yosys."""
    project = Path(project).resolve()
    stages = sorted(f"src/{p.name}" for p in (project / "src").glob(f"{TOP}_stage*.v"))  # a pipelined design's
    files = [f"src/static/{s}" for s in STATIC_SOURCES] + stages + [f"src/{TOP}.v"]
    script = out_path(project, "synth.ys")
    # ltp over every cell but the flip-flops: the longest register-to-register (or port) path, in cells
    script.write_text(
        f"read_verilog -sv {' '.join(files)}\nsynth_xilinx -top {TOP} -flatten\ntee -q -o yosys_stat.txt stat\n"
        "tee -q -o yosys_ltp.txt ltp * t:FD* %d\n"
    )
    stat = out_path(project, "yosys_stat.txt")
    stat.unlink(missing_ok=True)
    run_tool(["yosys", "-q", "-s", "synth.ys"], project, "yosys synth_xilinx", progress, timeout)
    ltp = re.search(r"\(length=(\d+)\)", out_path(project, "yosys_ltp.txt").read_text())
    cells: dict[str, int] = {}
    for line in stat.read_text().splitlines():
        m = re.match(r"^\s+(\w+)\s+(\d+)$", line)
        if m:
            cells[m.group(1)] = int(m.group(2))
    total = {
        "LUT": sum(v for c, v in cells.items() if re.fullmatch(r"LUT\d", c)) + cells.get("INV", 0),
        "FF": sum(v for c, v in cells.items() if re.fullmatch(r"FD\w*", c)),
        "CARRY": sum(v for c, v in cells.items() if c.startswith("CARRY")),
        "DSP": sum(v for c, v in cells.items() if c.startswith("DSP")),
        "MUXF": sum(v for c, v in cells.items() if c.startswith("MUXF")),
        "LTP": int(ltp.group(1)) if ltp else 0,  # longest path between registers/ports, in cells (LUT, CARRY)
    }
    return {**total, **{f"cell:{c}": v for c, v in sorted(cells.items())}}
