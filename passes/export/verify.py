"""Where an export parts from the graph: per-node values from the target executor, compared in graph order.

:func:`locate` is called once a verification found outputs that are not bit-identical. It re-runs the
first differing rows (at most ``rows``) and compares node by node:

- the deployment IR (what every exporter reads: exact parameters and the precisions of ``meta``)
  against the graph — a difference here means the saved metadata or the IR disagrees with the modules;
- the target tool's own per-node values against the graph where the tool exposes them (onnxruntime with
  the node tensors added as outputs, qonnx's full execution context, the portable reader's layers).
It returns the first node (in graph order) whose values differ, with the largest difference there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from qfx.graph.trace import QGraph
from qfx.passes.export.ir import build_ir
from qfx.passes.export.portable import portable_state, read_portable, run_manifest, state_manifest

VerificationInputs = torch.Tensor


FLOAT_TOLERANCE = 1e-5  # relative to the output's scale, for graphs that keep float nodes
FLOAT_ROWS = 0.99  # share of rows that must be within it (a float value on a rounding boundary moves one code)


def float_nodes(graph: QGraph) -> list[str]:
    """Compute nodes that keep float arithmetic (a MAC/affine/arithmetic node with an unquantized role):
    their exports run float or wide fixed point, so the check is a stated tolerance, not bit identity."""

    out = []
    for lay in build_ir(graph, "verify"):
        need = {op: ("data_in", "weight") for op in ("linear", "conv1d", "conv2d", "affine")}
        roles = need.get(lay.op, ("data_in",) if lay.op in ("add", "sub", "mul") else ())
        roles += ("bias",) if "bias" in lay.params else ()
        if any(r not in lay.precision for r in roles):
            out.append(lay.name)
    return out


class VerificationError(RuntimeError):
    """An export is not bit-identical to the graph; the message names the format and the first node."""


def node_values(graph: QGraph, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every node's tensor output on ``x`` (copied when produced, so later in-place ops do not alter it)."""
    out: dict[str, np.ndarray] = {}

    class _Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            v = super().run_node(n)
            if isinstance(v, torch.Tensor):
                out[n.name] = v.detach().float().numpy().copy()
            return v

    with torch.no_grad():
        _Rec(graph.gm.eval()).run(x)
    return out


def ir_values(graph: QGraph, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every IR layer's output on ``x``, run by the portable reader on the in-memory IR."""

    t, man = state_manifest(portable_state(graph))
    with torch.no_grad():
        return {k: v.detach().float().numpy() for k, v in run_manifest(t, man, x).items()}


def first_difference(
    graph: QGraph, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], floats: frozenset[str] = frozenset()
) -> tuple[str, float] | None:
    """``(node, max |diff|)`` of the first node in graph order present in both whose values differ (for a
    float node in ``floats``: by more than ``FLOAT_TOLERANCE`` x its max |value|)."""
    for n in graph.gm.graph.nodes:
        a, b = ref.get(n.name), got.get(n.name)
        if a is None or b is None or a.size != b.size:
            continue
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        d = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
        tol = FLOAT_TOLERANCE * max(1.0, float(np.abs(a).max())) if n.name in floats and a.size else 0.0
        if not np.array_equal(a, b) and not d <= tol:
            return n.name, d
    return None


def tool_values(fmt: str, path: Any, x: torch.Tensor) -> dict[str, np.ndarray] | None:
    """Per-node values as the target tool computes them, or None where the tool exposes none."""
    xs = x.numpy().astype(np.float32)
    if fmt in ("qonnx", "onnx-qdq"):
        from qfx.passes.export.onnx_export import node_values_onnx

        src = path.parent / "model.onnx" if fmt == "qonnx" else path  # before qonnx's cleanup renames tensors
        return node_values_onnx(src, xs, fmt)
    if fmt == "torch":
        t, man = read_portable(path)
        return {k: v.numpy() for k, v in run_manifest(t, man, x).items()}
    return None


def locate(fmt: str, path: Any, graph: QGraph, x: torch.Tensor, rows: np.ndarray, limit: int = 8) -> str:
    """One line: the first node where ``fmt``'s export parts from the graph on the differing ``rows``."""
    xb = x[torch.as_tensor(rows[:limit])]
    ref = node_values(graph, xb)
    floats = frozenset(float_nodes(graph))
    hit = first_difference(graph, ref, ir_values(graph, xb), floats)
    if hit:
        return (
            f"first at node {hit[0]!r} (max |diff| {hit[1]:.4g}): the deployment IR every exporter reads (built from "
            "the graph's metadata and modules) differs from the graph there (metadata that does not describe the "
            "modules, or an op the IR does not reproduce)"
        )
    got = tool_values(fmt, path, xb)
    hit = first_difference(graph, ref, got, floats) if got else None
    if hit:
        return f"first at node {hit[0]!r} (max |diff| {hit[1]:.4g}) in {fmt}'s own execution"
    last = [n.name for n in graph.gm.graph.nodes if n.op == "output"][0]
    return f"at node {last!r} (the output); {fmt} exposes no per-node values to narrow it down"
