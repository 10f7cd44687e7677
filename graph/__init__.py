"""Graph IR: torch.fx tracing with one typed metadata record per node."""

from qfx.graph.meta import META_KEY, NodeMeta, TensorPrecision, get_meta
from qfx.graph.registry import OpRegistry, op_key, op_type
from qfx.graph.trace import QGraph, TracingError, trace

__all__ = [
    "META_KEY",
    "NodeMeta",
    "OpRegistry",
    "QGraph",
    "TensorPrecision",
    "TracingError",
    "get_meta",
    "op_key",
    "op_type",
    "trace",
]
