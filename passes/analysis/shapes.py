"""Shape/dtype analysis by interpreting the graph on the example inputs."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.fx as fx

from graph.meta import get_meta
from graph.trace import QGraph, no_gc
from passes.base import Pass, PassResult


def _shape(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)) and any(isinstance(i, torch.Tensor) for i in v):
        return [_shape(i) for i in v]
    return None


def _dtype(v: Any) -> str | None:
    if isinstance(v, torch.Tensor):
        return str(v.dtype).removeprefix("torch.")
    return None


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        m = get_meta(n)
        ins = [self.env[a] for a in n.all_input_nodes]
        m.in_shapes = [_shape(v) for v in ins]
        m.in_dtypes = [_dtype(v) for v in ins]
        m.out_shape = _shape(out)
        m.out_dtype = _dtype(out)
        return out


class ShapePass(Pass):
    """Reads: example inputs. Writes: in/out shapes and dtypes of every node.

    Runs the model in eval mode under ``no_grad`` (BatchNorm statistics are not
    touched) and restores each module's training flag afterwards. ``fake=True``
    interprets on fake (meta) tensors instead: same shapes, no arithmetic, so large
    models and batches cost almost nothing.
    """

    name = "shapes"
    provides = ("shapes",)

    def __init__(self, fake: bool = False) -> None:
        self.fake = fake

    def run(self, graph: QGraph) -> PassResult:
        modes = {m: m.training for m in graph.gm.modules()}
        graph.gm.eval()
        inputs = graph.example_inputs
        ctx: Any = contextlib.nullcontext()
        if self.fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            ctx = FakeTensorMode(allow_non_fake_inputs=True)
            inputs = tuple(ctx.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs)
        try:
            with torch.no_grad(), no_gc(), ctx:
                _Recorder(graph.gm).run(*inputs)
        finally:
            for m, t in modes.items():
                m.training = t
        return PassResult(graph, modified=False, info={"nodes": len(graph.nodes)})
