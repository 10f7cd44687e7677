"""Typed per-node metadata: one namespaced record per FX node (``node.meta["qfx"]``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch.fx as fx

META_KEY = "qfx"


@dataclass(frozen=True)
class TensorPrecision:
    """Number format of one tensor role (data_in, weight, bias, data_out).

    ``fmt`` is ``"float32"`` for unquantized tensors, else the quantizer name
    (``"integer"``, ``"minifloat"`` ...). ``width`` is the storage width in bits;
    ``frac`` the fractional bits (integer) or exponent bits (minifloat).
    """

    fmt: str = "float32"
    width: int = 32
    frac: int | None = None

    def __str__(self) -> str:
        if self.fmt == "float32":
            return "fp32"
        if self.fmt == "integer":
            return f"int{self.width}.{self.frac}"
        if self.fmt == "uinteger":
            return f"uint{self.width}.{self.frac}"
        return f"{self.fmt}{self.width}e{self.frac}"


@dataclass
class NodeMeta:
    """Everything the analysis and transform passes know about one node.

    Shapes are tuples of ints (``None`` where a value is not a tensor); no tensors
    are stored. ``macs``/``flops``/``params`` are ``None`` until the pass that
    computes them runs (``flops`` stays ``None`` for ops without a FLOP rule).
    """

    name: str
    op: str
    target: str
    op_type: str
    in_shapes: list[tuple[int, ...] | None] = field(default_factory=list)
    in_dtypes: list[str | None] = field(default_factory=list)
    out_shape: tuple[int, ...] | list | None = None
    out_dtype: str | None = None
    macs: int | None = None
    flops: int | None = None
    params: int | None = None
    precision: dict[str, TensorPrecision] = field(default_factory=dict)
    quantized: str | None = None  # quantized replacement type name, if any

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precision"] = {k: asdict(v) for k, v in self.precision.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeMeta:
        d = dict(d)
        d["precision"] = {k: TensorPrecision(**v) for k, v in d.get("precision", {}).items()}

        def tup(s: Any) -> Any:
            if isinstance(s, list) and all(isinstance(i, int) for i in s):
                return tuple(s)
            if isinstance(s, list):
                return [tup(i) for i in s]
            return s

        d["in_shapes"] = [tup(s) for s in d.get("in_shapes", [])]
        d["out_shape"] = tup(d.get("out_shape"))
        return cls(**d)


def get_meta(node: fx.Node) -> NodeMeta:
    """Return the node's record; raises if the graph was not made by :func:`graph.trace`."""
    try:
        return node.meta[META_KEY]
    except KeyError:
        raise KeyError(f"node {node.name!r} has no {META_KEY!r} metadata; build graphs with graph.trace()") from None
