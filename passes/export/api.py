"""One entry point per export format, and verification by the target tool's own executor."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qfx.graph.safeio import check_out_dir
from qfx.graph.trace import QGraph
from qfx.passes.export.portable import export_portable, run_portable
from qfx.passes.export.tools import Ticker, ToolError
from qfx.passes.export.verify import FLOAT_ROWS, FLOAT_TOLERANCE, float_nodes, locate


@dataclass
class Exported:
    """What an export wrote and, after :func:`verify`, how the target tool's outputs compare."""

    fmt: str
    path: Path
    notes: list[str] = field(default_factory=list)
    handle: Any = None  # hls4ml model (for predict) where the format has one
    agreement: dict[str, Any] = field(default_factory=dict)


def _qonnx(graph: QGraph, out: Path, batch: int | None) -> Exported:
    from qfx.passes.export.onnx_export import export_onnx

    p = export_onnx(graph, out, "qonnx", batch)
    note = "model.onnx as written; model_clean.onnx after qonnx's cleanup (what FINN/hls4ml read)"
    return Exported("qonnx", p.parent / "model_clean.onnx", [note])


def _qdq(graph: QGraph, out: Path, batch: int | None) -> Exported:
    from qfx.passes.export.onnx_export import export_onnx

    return Exported("onnx-qdq", export_onnx(graph, out, "onnx-qdq", batch))


def _hls(graph: QGraph, out: Path, batch: int | None) -> Exported:
    from qfx.passes.export.hls4ml_export import export_hls4ml

    hm, pl = export_hls4ml(graph, out)
    return Exported("hls4ml", out, pl.notes, hm)


def _torch(graph: QGraph, out: Path, batch: int | None) -> Exported:

    return Exported("torch", export_portable(graph, out))


def _da4ml(flavor: str) -> Callable[..., Exported]:
    def write(graph: QGraph, out: Path, batch: int | None, clock_ns: float | None = None) -> Exported:
        from qfx.passes.export.da4ml_backend import trace_graph, write_project
        from qfx.passes.export.testbench import write_ports

        tr = trace_graph(graph)
        tr.pipeline = write_project(tr, out, flavor, clock_ns)
        fmt = {"hls": "da4ml-hls"}.get(flavor, flavor)
        if flavor != "hls":
            write_ports(out, tr.comb, tr.pipeline)
        p = tr.pipeline
        timing = (
            "combinational; no control logic or registers"
            if p is None
            else f"II = 1 pipeline at {p.clock_ns:g} ns: {p.stages} stages of <= {p.levels_per_stage} adder levels "
            f"(delay model), latency {p.latency_cycles} cycles = {p.latency_ns:g} ns; {p.ffs:,} register bits "
            "(flip-flops before synthesis trims constant ones: qfx synth counts them)"
        )
        note = (
            f"da4ml estimate: {tr.luts:,.0f} LUTs, adder depth {tr.latency:g} ({timing}); input port: "
            f"{tr.input_precision} codes of {tr.in_shape} (per element: ports.json)"
        )
        return Exported(fmt, out, [note], tr)

    return write


def export(
    graph: QGraph, fmt: str, out: str | Path, batch: int | None = None, clock_ns: float | None = None
) -> Exported:
    """Write ``graph`` in ``fmt`` under ``out``; raises ``ExportError`` naming an unsupported node. ``clock_ns``:
    an II = 1 pipeline at that clock period (formats with ``clocked``: verilog, vhdl)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    f = EXPORT_FORMATS[fmt]
    if clock_ns is None:
        return f.write(graph, Path(out), batch)
    if not f.clocked:
        clocked = ", ".join(n for n, x in EXPORT_FORMATS.items() if x.clocked)
        raise ValueError(f"a clock target applies to {clocked}, not to {fmt}")
    return f.write(graph, Path(out), batch, clock_ns=clock_ns)


def _qonnx_rows(e: Exported, x: np.ndarray) -> np.ndarray:
    import onnx

    from qfx.passes.export.onnx_export import run_qonnx

    m = onnx.load(str(e.path))
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    b = dim.dim_value or len(x)
    return np.concatenate([run_qonnx(m, x[i : i + b]) for i in range(0, len(x), b)]).reshape(len(x), -1)


def _qdq_rows(e: Exported, graph: QGraph, x: np.ndarray) -> np.ndarray:
    from qfx.passes.export.onnx_export import run_onnxruntime

    return run_onnxruntime(e.path, x).reshape(len(x), -1)


def _hls_rows(e: Exported, graph: QGraph, x: np.ndarray) -> np.ndarray:
    from qfx.passes.export.hls4ml_export import predict

    return predict(e.handle, x)


def _torch_rows(e: Exported, graph: QGraph, x: np.ndarray) -> np.ndarray:
    return run_portable(e.path, torch.from_numpy(x)).numpy().reshape(len(x), -1)


QONNX_ROWWISE = 8  # rows the shipped batch-1 qonnx file runs one by one; the rest run batched in a twin


def _qonnx_outputs(e: Exported, graph: QGraph, x: np.ndarray) -> np.ndarray:
    """qonnx's ``execute_onnx`` on every row in one call, on a twin of the export written with the rows' batch
    (the same writer and cleanup; only the batch dimension differs), plus the shipped batch-1
    ``model_clean.onnx`` run row by row on the first :data:`QONNX_ROWWISE` rows, which must agree with the twin
    exactly (else the twin's outputs are not what ships, and verification fails there)."""
    import onnx

    from qfx.passes.export.onnx_export import export_onnx, run_qonnx

    m = onnx.load(str(e.path))
    if (m.graph.input[0].type.tensor_type.shape.dim[0].dim_value or len(x)) == len(x) or len(x) <= QONNX_ROWWISE:
        return _qonnx_rows(e, x)
    with tempfile.TemporaryDirectory(prefix="qfx-qonnx-") as d:
        export_onnx(graph, d, "qonnx", len(x))
        got = run_qonnx(onnx.load(str(Path(d) / "model_clean.onnx")), x).reshape(len(x), -1)
    k = QONNX_ROWWISE
    shipped = np.concatenate([run_qonnx(m, x[i : i + 1]) for i in range(k)]).reshape(k, -1)
    if not np.array_equal(shipped, got[:k], equal_nan=True):
        e.notes.append("the batch-1 model_clean.onnx differs from its batched twin: its own rows are reported")
        got = got.copy()
        got[:k] = shipped
    e.agreement["checked_by"] = f"qonnx execute_onnx (batched twin; model_clean.onnx on {k} rows)"
    return got


def _da4ml_outputs(e: Exported, graph: QGraph, x: np.ndarray) -> np.ndarray:
    """da4ml's interpreter; for Verilog also the RTL compiled by Verilator where it is on PATH (the
    outputs returned are the RTL's then, and the interpreter's must equal them)."""
    from qfx.passes.export.da4ml_backend import RTLSimulator, tools

    tr = e.handle
    got = tr.predict(x)
    e.agreement["checked_by"] = tr.interpreter
    if e.fmt != "verilog":
        return got
    missing = [t for t in ("verilator", "g++") if tools()[t] is None]
    if missing:
        e.notes.append(f"{' and '.join(missing)} not on PATH: the Verilog was checked by da4ml's interpreter only")
        return got
    rtl = RTLSimulator(Path(e.path), tr).predict(x)
    e.agreement["checked_by"] = f"{tr.interpreter} + Verilator"
    e.agreement["interpreter_vs_rtl_identical"] = bool(np.array_equal(rtl, got))
    if not np.array_equal(rtl, got):
        return np.where(rtl == got, rtl, np.nan)  # a disagreement between the two is a difference too
    return rtl


@dataclass(frozen=True)
class ExportFormat:
    """One export format, said once: its writer, its tool's executor (``run(exported, graph, rows)`` returns the
    tool's outputs), what checks it (the "checked by" column), a description (``qfx export --help``), the
    extras it needs, and whether its reference is the graph in float64 (fixed-point RTL: exact accumulators)."""

    name: str
    write: Callable[..., Exported]  # (graph, out, batch[, clock_ns= for clocked formats])
    run: Callable[[Exported, QGraph, np.ndarray], np.ndarray]
    checked_by: str
    description: str
    extras: tuple[str, ...] = ("deploy",)
    exact_reference: bool = False
    clocked: bool = False  # takes a clock target (an II = 1 pipeline)
    testbench: str | None = None  # the HDL of the self-checking testbench it ships (tb/), run by verify()


EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(f: ExportFormat) -> ExportFormat:
    """Add an export format (a second one under the same name raises)."""
    if f.name in EXPORT_FORMATS:
        raise ValueError(f"export format {f.name!r} is already registered")
    EXPORT_FORMATS[f.name] = f
    return f


for _f in (
    ExportFormat("qonnx", _qonnx, _qonnx_outputs, "qonnx execute_onnx",
                 "ONNX with QONNX Quant nodes; executed by qonnx's execute_onnx"),
    ExportFormat("onnx-qdq", _qdq, _qdq_rows, "onnxruntime",
                 "standard QuantizeLinear/DequantizeLinear (opset 21, <= 16 bits); executed by onnxruntime"),
    ExportFormat("hls4ml", _hls, _hls_rows, "hls4ml C simulation",
                 "hls4ml project with per-layer ap_fixed precisions; C simulation via compile()/predict()"),
    ExportFormat("torch", _torch, _torch_rows, "plain-torch reader",
                 "portable checkpoint: integer codes + manifest, torch.load(weights_only=True)", extras=()),
    ExportFormat("verilog", _da4ml("verilog"), _da4ml_outputs, "da4ml interpreter + Verilator",
                 "Verilog from da4ml (adder graphs; --clock-ns: an II = 1 pipeline), ports.json and a self-checking "
                 "testbench; da4ml's interpreter + Verilator + iverilog", exact_reference=True, clocked=True,
                 testbench="verilog"),
    ExportFormat("vhdl", _da4ml("vhdl"), _da4ml_outputs, "da4ml interpreter",
                 "the same logic as VHDL, ports.json and a self-checking VHDL-2008 testbench; da4ml's interpreter "
                 "+ GHDL", exact_reference=True, clocked=True, testbench="vhdl"),
    ExportFormat("da4ml-hls", _da4ml("hls"), _da4ml_outputs, "da4ml interpreter",
                 "the same logic as HLS C++ (Vitis/Vivado HLS); checked by da4ml's interpreter", exact_reference=True),
):  # fmt: skip
    register_export_format(_f)


def _reference(e: Exported, graph: QGraph, x: torch.Tensor) -> np.ndarray:
    """The graph's outputs; float64 for the fixed-point RTL formats, whose accumulators are exact (float32
    rounds sums wider than 24 bits, the RTL does not)."""
    import copy

    with torch.no_grad():
        if EXPORT_FORMATS[e.fmt].exact_reference:
            return copy.deepcopy(graph.gm).double().eval()(x.double()).numpy().reshape(len(x), -1)
        return graph.gm.eval()(x).detach().float().numpy().reshape(len(x), -1)


MAX_VERIFY_ROWS = 1_000_000  # rows an export is verified on: beyond this the executors' batches stop fitting memory


def verification_inputs(x: torch.Tensor, rows: int = 1000, seed: int = 0) -> torch.Tensor:
    """``x`` followed by rows that reach and pass every saturation bound: normal noise at the data's own
    scale and at 4x, 16x and 64x it (seeded), ``rows`` in all (at least ``len(x)``)."""
    g = torch.Generator().manual_seed(seed)
    x = x.detach().float()
    scale = float(x.std()) if x.numel() > 1 and float(x.std()) > 0 else 1.0
    extra = max(rows - len(x), 0)
    k = torch.arange(extra) % 4
    noise = torch.randn((extra, *x.shape[1:]), generator=g) * scale * (4.0**k).reshape(-1, *[1] * (x.dim() - 1))
    return torch.cat([x, noise])


def verify(e: Exported, graph: QGraph, x: torch.Tensor) -> dict[str, Any]:
    """Run the export with its own executor on ``x`` and compare with the graph's outputs.

    A fully quantized graph must be bit-identical; a graph with float nodes (:func:`float_nodes`) within
    ``FLOAT_TOLERANCE`` x max|output| on at least ``FLOAT_ROWS`` of the rows (``required`` says which): float
    arithmetic differs by an ulp between executors (fused multiply-adds, folded batch norms), and a float value
    on a downstream quantizer's rounding boundary then moves one code (seen on 1 row of 1,000). ``ok`` is the
    verdict; on a difference ``first_difference`` names the node where the outputs part
    (see :mod:`qfx.passes.export.verify`)."""

    ref = _reference(e, graph, x)
    xs = x.numpy().astype(np.float32)
    got = EXPORT_FORMATS[e.fmt].run(e, graph, xs)
    same = (got == ref).all(1) if ref.size else np.ones(len(x), bool)
    floats = float_nodes(graph)
    diff = float(np.nan_to_num(np.abs(got - ref), nan=np.inf).max()) if ref.size else 0.0
    tol = FLOAT_TOLERANCE * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)
    within = (np.nan_to_num(np.abs(got - ref), nan=np.inf) <= tol).all(1) if ref.size else same
    e.agreement = {
        "checked_by": e.agreement.get("checked_by", EXPORT_FORMATS[e.fmt].checked_by),
        **{k: v for k, v in e.agreement.items() if k == "interpreter_vs_rtl_identical"},
        "samples": len(x),
        "max_abs_diff": diff,
        "bit_identical": bool(same.all()),
        "identical_rows": float(same.mean()) if len(x) else 1.0,
        "same_class": float(np.mean(got.argmax(1) == ref.argmax(1))),
        "required": (
            f"|diff| <= {tol:.3g} on >= {FLOAT_ROWS:.0%} of rows (float nodes: {', '.join(floats[:4])})"
            if floats
            else "bit-identical"
        ),
        "rows_within_tolerance": float(within.mean()) if len(x) else 1.0,
        "ok": bool(same.all()) if not floats else bool(within.mean() >= FLOAT_ROWS),
    }
    lang = EXPORT_FORMATS[e.fmt].testbench
    if lang is not None:
        _testbench(e, x, ref, lang)
    if not same.all():
        e.agreement["first_difference"] = locate(e.fmt, e.path, graph, x, np.flatnonzero(~same))
    return e.agreement


TESTBENCH_ROWS = 32  # rows a testbench runs above its simulator's all-rows size; tb/ holds them all


@dataclass(frozen=True)
class Simulator:
    """The simulator the export runs a testbench language's tb/ with, and up to what design size (da4ml LUTs)."""

    tool: str
    executables: tuple[str, ...]
    max_luts: int  # larger designs: tb/ is written, not run
    all_rows_max_luts: int  # up to this size every row of tb/; above, TESTBENCH_ROWS of them


# measured on this project's 2-core machine: Icarus ~0.1-0.2 s a row at 20k LUTs and minutes to compile a 30k-LUT
# cnn (a 149k-LUT cnn: 92 s for 4 rows); GHDL ~1 s per 1,000 rows at 1.3k LUTs, 3 s for 32 rows of a 49k-LUT
# pipelined jsc-s, 11 s for 32 rows of a 149k-LUT cnn
SIMULATORS = {
    "verilog": Simulator("iverilog", ("iverilog", "vvp"), max_luts=25_000, all_rows_max_luts=0),
    "vhdl": Simulator("GHDL", ("ghdl",), max_luts=200_000, all_rows_max_luts=4_000),
}
TESTBENCH_MAX_LUTS = SIMULATORS["verilog"].max_luts


def _testbench(e: Exported, x: torch.Tensor, ref: np.ndarray, lang: str) -> None:
    """Write the export's ``ports.json`` and self-checking ``tb/`` (inputs as the host feeds them, the graph's
    outputs) in ``lang`` and run it with its simulator where that is on PATH; a FAIL fails the verification."""
    from qfx.passes.export.testbench import run_testbench, write_testbench

    sim = SIMULATORS[lang]
    tool, tr = sim.tool, e.handle
    write_testbench(e.path, tr.comb, tr.quantize_input(x.numpy()), ref, tr.pipeline, lang=lang)
    if any(shutil.which(t) is None for t in sim.executables):
        e.notes.append(f"{'/'.join(sim.executables)} not on PATH: the shipped testbench (tb/) was written, not run")
        return
    if tr.luts > sim.max_luts:
        e.notes.append(f"the shipped testbench (tb/) was written, not run: {tr.luts:,.0f} LUTs is past what {tool} "
                       f"runs in seconds ({sim.max_luts:,}); run it with {tool} (README)")  # fmt: skip
        return
    rows = len(x) if tr.luts <= sim.all_rows_max_luts else min(len(x), TESTBENCH_ROWS)
    try:
        e.agreement["testbench"] = f"{tool.lower()}: {run_testbench(e.path, rows=rows, lang=lang)} (of {len(x)} in tb/)"
        e.agreement["checked_by"] += f" + {tool} testbench"
    except ToolError as err:
        e.agreement["testbench"] = f"{tool.lower()}: {err}"
        e.agreement["ok"] = False
        e.agreement.setdefault("first_difference", f"the shipped testbench fails under {tool}: {err}")


def export_all(
    graph: QGraph,
    formats: list[str],
    out: str | Path,
    x: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
    clock_ns: float | None = None,
) -> list[Exported]:
    """Export into ``out/<format>/`` for each format; with ``x``, verify each by its own executor.

    qonnx files have batch 1 (FINN/hls4ml convention; verification runs them row by row),
    onnx-qdq a symbolic batch. Writing is refused when a symlink inside ``out`` leads out of it.
    """

    check_out_dir(out)
    done = []
    for fmt in formats:
        if progress is not None:
            slow = " (hls4ml conversion, then g++ compiles its C simulation: 10-30 s here)" if fmt == "hls4ml" else ""
            if fmt == "qonnx" and len(graph.nodes) > 2000 and x is not None:
                slow = f" ({len(graph.nodes):,} nodes: qonnx's execute_onnx runs node by node, minutes here)"
            progress(f"exporting {fmt}{slow}" + (f", then verifying on {len(x)} rows" if x is not None else ""))
        d = Path(out) / fmt
        _clear_owned(d)
        try:
            with Ticker(f"{fmt}: exporting and verifying", progress):  # a live elapsed line for the compiles
                e = export(graph, fmt, d, clock_ns=clock_ns if EXPORT_FORMATS[fmt].clocked else None)
                if x is not None:
                    verify(e, graph, x)
        except Exception as err:
            _status(d, fmt, "FAILED", f"{type(err).__name__}: {str(err)[:500]}")
            raise
        a = e.agreement
        state = "written, not verified" if x is None else "verified" if a.get("ok") else "FAILED"
        _status(d, fmt, state, a.get("first_difference", ""), a)
        done.append(e)
    return done


STATUS = "status.json"  # in each OUT/<format>/: what qfx wrote there and whether it was verified


def _status(d: Path, fmt: str, state: str, why: str, agreement: dict[str, Any] | None = None) -> None:
    """``OUT/<format>/status.json``: ``verified``, ``written, not verified`` or ``FAILED`` (with why): a failed
    export's files stay for debugging, marked, so they never look like a deliverable."""

    from qfx.graph.safeio import out_path

    d.mkdir(parents=True, exist_ok=True)
    rec = {"format": fmt, "state": state, "why": why, "agreement": agreement or {}}
    out_path(d, STATUS).write_text(json.dumps(rec, indent=1, default=str))


def _clear_owned(d: Path) -> None:
    """A previous export in ``d`` (it holds qfx's status.json) is removed first: the files there are this run's."""
    if d.is_dir() and not d.is_symlink() and (d / STATUS).is_file():
        shutil.rmtree(d)


def parse_formats(text: str) -> list[str]:
    """``"qonnx,hls4ml"`` -> validated list (error names the unknown format and the allowed ones)."""
    fmts = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in fmts if f not in EXPORT_FORMATS]
    if bad or not fmts:
        raise ValueError(f"unknown export format(s) {bad or [text]}; formats: {', '.join(EXPORT_FORMATS)}")
    return fmts
