"""Shape/dtype analysis by interpreting the graph on the example inputs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from qfx.graph.meta import SHAPES, annotate
from qfx.graph.trace import QGraph, no_gc
from qfx.passes.base import Pass, PassError, PassResult


def _shape(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)) and any(isinstance(i, (torch.Tensor, tuple, list)) for i in v):
        inner = tuple(_shape(i) for i in v)
        return inner if any(i is not None for i in inner) else None
    return None


def _dtype(v: Any) -> str | None:
    if isinstance(v, torch.Tensor):
        return str(v.dtype).removeprefix("torch.")
    return None


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, fake: bool) -> None:
        super().__init__(gm)
        self.fake = fake

    def run_node(self, n: fx.Node) -> Any:
        ins = [self.env[a] for a in n.all_input_nodes]
        # shapes of the inputs as the node receives them (an in-place op mutates them)
        in_shapes = tuple(_shape(v) for v in ins)
        in_dtypes = tuple(_dtype(v) for v in ins)
        try:
            out = super().run_node(n)
        except Exception as e:
            if not self.fake:
                raise
            raise PassError(
                f"ShapePass(fake=True): node {n.name!r} ({n.op} {n.target}) cannot run on fake tensors "
                f"({type(e).__name__}: {e}); it depends on tensor values: use ShapePass() (real tensors) "
                "or mark it as a leaf with a shape you can compute"
            ) from e
        annotate(n, SHAPES, in_shapes=in_shapes, in_dtypes=in_dtypes, out_shape=_shape(out), out_dtype=_dtype(out))
        return out


@dataclass(frozen=True)
class ShapePass(Pass):
    """Reads: example inputs. Writes: in/out shapes and dtypes of every node.

    Runs the model in eval mode under ``no_grad`` (BatchNorm statistics are not
    touched) and restores each module's training flag afterwards. ``fake=True``
    interprets on fake (meta) tensors instead: same shapes, no arithmetic, so large
    models and batches cost almost nothing.
    """

    name = SHAPES
    provides = (SHAPES,)

    fake: bool = False

    def run(self, graph: QGraph) -> PassResult:
        modes = {m: m.training for m in graph.gm.modules()}
        graph.gm.eval()
        inputs = graph.example_inputs
        ctx: Any = contextlib.nullcontext()
        if self.fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            ctx = FakeTensorMode(allow_non_fake_inputs=True)
            inputs = tuple(ctx.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs)
        fastpath = torch.backends.mha.get_fastpath_enabled()
        try:
            # the fused attention fast path returns empty weights on fake tensors: use the math path
            torch.backends.mha.set_fastpath_enabled(fastpath and not self.fake)
            with torch.no_grad(), no_gc(), ctx:
                _Recorder(graph.gm, self.fake).run(*inputs)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            for m, t in modes.items():
                m.training = t
        return PassResult(graph, modified=False, info={"nodes": len(graph.nodes)})
