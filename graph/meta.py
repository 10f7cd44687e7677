"""Typed per-node metadata: one namespaced, immutable record per FX node (``node.meta["qfx"]``).

Records are frozen: passes write a new record with :func:`update_meta` (``dataclasses.replace``),
so two graphs (a pristine graph and a quantized copy) can share records without sharing state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import torch.fx as fx

META_KEY = "qfx"

# analysis names: what passes provide/require and what each node's record lists in ``analyses``
SHAPES, FLOPS, PARAMS, NUMERICS, CALIBRATION = "shapes", "flops", "params", "numerics", "calibration"

Shape = tuple[int, ...]


ROUND_MODES = ("half_even", "half_up", "trunc")  # ap_fixed AP_RND_CONV / AP_RND / AP_TRN; da4ml RND is half_up
OVERFLOW_MODES = ("saturate", "wrap")  # ap_fixed AP_SAT / AP_WRAP
GRANULARITIES = ("tensor", "channel", "element")
_SUFFIX = {"half_up": "rnd", "trunc": "trn", "wrap": "wrap"}


@dataclass(frozen=True)
class TensorPrecision:
    """Number format of one tensor role (data_in, weight, bias, data_out).

    ``fmt`` is ``"float32"`` for unquantized tensors, else the quantizer name
    (``"integer"``, ``"uinteger"``, ``"minifloat"`` ...). ``width`` is the storage width in bits;
    ``frac`` the fractional bits (integer) or exponent bits (minifloat). ``round`` / ``overflow``: how
    fixed-point values are rounded (half to even, half up, truncated) and kept in range (saturated or
    wrapped). ``granularity``: ``"tensor"`` (one width/frac), or ``"channel"`` / ``"element"``: the
    quantizer holds integer maps of widths and fracs (:class:`~qfx.passes.transforms.quantize.quantizers.
    MapQuantizer`), ``width``/``frac`` are then the enclosing format (the largest integer bits plus the
    largest frac: every value is exact in it) and ``maps`` a digest of the maps, so that two precisions are
    equal only when their maps are.
    """

    fmt: str = "float32"
    width: int = 32
    frac: int | None = None
    round: str = "half_even"
    overflow: str = "saturate"
    granularity: str = "tensor"
    maps: str | None = None

    def __str__(self) -> str:
        if self.fmt == "float32":
            return "fp32"
        label = PRECISION_LABELS.get(self.fmt)
        s = label(self) if label else f"{self.fmt}{self.width}.{self.frac}"
        s += "".join(f":{_SUFFIX[m]}" for m in (self.round, self.overflow) if m in _SUFFIX)
        if self.granularity != "tensor":
            s = f"{s}/{self.granularity}" + (f"#{self.maps[:8]}" if self.maps else "")
        return s

    def key(self) -> tuple[Any, ...]:
        """All fields, in order (a hashable identity for memo keys and records)."""
        return (self.fmt, self.width, self.frac, self.round, self.overflow, self.granularity, self.maps)

    def as_dict(self) -> dict[str, Any]:
        """The record as saved (defaults of the newer fields left out, so older files read the same)."""
        d: dict[str, Any] = {"fmt": self.fmt, "width": self.width, "frac": self.frac}
        for k, default in (("round", "half_even"), ("overflow", "saturate"), ("granularity", "tensor"), ("maps", None)):
            if getattr(self, k) != default:
                d[k] = getattr(self, k)
        return d

    @property
    def plain(self) -> bool:
        """Per tensor, half to even, saturating: what every exporter expresses."""
        return self.round == "half_even" and self.overflow == "saturate" and self.granularity == "tensor"


# printed form per number format, filled by the format registry (passes.transforms.quantize.formats)
PRECISION_LABELS: dict[str, Callable[[TensorPrecision], str]] = {}
# validity check per number format (raises ValueError), filled by the same registry; read by the loader
PRECISION_CHECKS: dict[str, Callable[[TensorPrecision], None]] = {}


def check_precision(p: TensorPrecision) -> TensorPrecision:
    """``p`` when qfx can run it: ``float32`` at width 32, or a registered format at width 1-32 with its
    second number (frac / exponent width) in the format's range; else ValueError saying what is allowed."""
    if p.fmt == "float32":
        if p.width != 32 or p.frac is not None:
            raise ValueError(f"float32 has width 32 and no frac, got width={p.width!r} frac={p.frac!r}")
        return p
    if p.fmt not in PRECISION_CHECKS:
        raise ValueError(f"unknown number format {p.fmt!r}; registered: float32, {', '.join(PRECISION_CHECKS)}")
    if type(p.width) is not int or not 1 <= p.width <= 32:
        raise ValueError(f"{p.fmt} width {p.width!r} is not an integer in 1..32")
    if p.frac is not None and type(p.frac) is not int:
        raise ValueError(f"{p.fmt} frac {p.frac!r} is not an integer")
    if p.round not in ROUND_MODES or p.overflow not in OVERFLOW_MODES or p.granularity not in GRANULARITIES:
        raise ValueError(
            f"{p.fmt}: round {p.round!r} / overflow {p.overflow!r} / granularity {p.granularity!r}; allowed: "
            f"{', '.join(ROUND_MODES)} / {', '.join(OVERFLOW_MODES)} / {', '.join(GRANULARITIES)}"
        )
    if (p.granularity == "tensor") != (p.maps is None):
        raise ValueError(f"{p.fmt}: a per-{p.granularity} precision {'needs' if p.maps is None else 'has no'} maps")
    PRECISION_CHECKS[p.fmt](p)
    return p


def _freeze_shape(s: Any) -> Any:
    """Shapes as tuples: a tensor's shape is a tuple of ints; a multi-output value a tuple of those."""
    if isinstance(s, (list, tuple)):
        if all(isinstance(i, int) for i in s):
            return tuple(s)
        return tuple(_freeze_shape(i) for i in s)
    return s


def is_tensor_shape(s: Any) -> bool:
    """True for the shape of one tensor (a tuple of ints), False for None or a multi-output shape."""
    return isinstance(s, tuple) and all(isinstance(i, int) for i in s)


@dataclass(frozen=True)
class NodeMeta:
    """Everything the analysis and transform passes know about one node.

    ``op``/``target`` describe what the node runs now (a quantized replacement's class after a
    transform); ``op_type`` the float op it computes (the same before and after quantization).
    Shapes are tuples of ints (``None`` where a value is not a tensor; a tuple of shapes for
    multi-output nodes); no tensors are stored. ``macs``/``flops``/``params`` are ``None`` until
    the pass that computes them runs (``flops`` stays ``None`` for ops without a FLOP rule).
    ``precision`` is a read-only mapping role -> :class:`TensorPrecision`.
    """

    name: str
    op: str
    target: str
    op_type: str
    in_shapes: tuple[Any, ...] = ()
    in_dtypes: tuple[str | None, ...] = ()
    out_shape: Any = None
    out_dtype: str | None = None
    macs: int | None = None
    flops: int | None = None
    params: int | None = None
    precision: Mapping[str, TensorPrecision] = field(default_factory=dict)
    quantized: str | None = None  # quantized replacement type name, if any
    numerics: Mapping[str, Any] | None = None  # NumericsPass: error vs the float graph, saturation
    analyses: frozenset[str] = frozenset()  # the analyses that wrote this record (see annotate)
    # CalibrationPass: role -> frac width per width (index = width, 0..32) for "auto" fracs
    calibration: Mapping[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "in_shapes", tuple(_freeze_shape(s) for s in self.in_shapes))
        set_(self, "in_dtypes", tuple(self.in_dtypes))
        set_(self, "out_shape", _freeze_shape(self.out_shape))
        set_(self, "analyses", frozenset(self.analyses))
        if not isinstance(self.precision, MappingProxyType):
            set_(self, "precision", MappingProxyType(dict(self.precision)))
        if self.numerics is not None and not isinstance(self.numerics, MappingProxyType):
            set_(self, "numerics", MappingProxyType(dict(self.numerics)))
        if self.calibration is not None and not isinstance(self.calibration, MappingProxyType):
            set_(self, "calibration", MappingProxyType({k: tuple(v) for k, v in self.calibration.items()}))

    def __deepcopy__(self, memo: dict[int, Any]) -> NodeMeta:
        return self  # immutable: a copy is the record itself

    def __reduce__(self) -> Any:
        return (_from_fields, (self._fields(),))

    def _fields(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["precision"] = dict(self.precision)
        d["numerics"] = None if self.numerics is None else dict(self.numerics)
        d["calibration"] = None if self.calibration is None else {k: list(v) for k, v in self.calibration.items()}
        return d

    def to_dict(self) -> dict[str, Any]:
        def plain(s: Any) -> Any:
            return [plain(i) for i in s] if isinstance(s, tuple) else s

        d = self._fields()
        d["in_shapes"] = [plain(s) for s in self.in_shapes]
        d["in_dtypes"] = list(self.in_dtypes)
        d["out_shape"] = plain(self.out_shape)
        d["precision"] = {k: v.as_dict() for k, v in self.precision.items()}
        d["analyses"] = sorted(self.analyses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeMeta:
        d = dict(d)
        d["precision"] = {k: TensorPrecision(**v) for k, v in d.get("precision", {}).items()}
        return cls(**d)


def _from_fields(d: dict[str, Any]) -> NodeMeta:
    return NodeMeta(**d)


def get_meta(node: fx.Node) -> NodeMeta:
    """Return the node's record; raises if the graph was not made by :func:`graph.trace`."""
    try:
        return node.meta[META_KEY]
    except KeyError:
        raise KeyError(f"node {node.name!r} has no {META_KEY!r} metadata; build graphs with graph.trace()") from None


def set_meta(node: fx.Node, meta: NodeMeta) -> NodeMeta:
    node.meta[META_KEY] = meta
    return meta


_PLAIN_FIELDS = frozenset({"name", "op", "target", "op_type", "quantized", "macs", "flops", "params", "precision"})


def update_meta(node: fx.Node, **changes: Any) -> NodeMeta:
    """Replace the node's record by a copy with ``changes`` (records are immutable). Changes of plain fields
    skip ``dataclasses.replace`` (which re-freezes every shape): this runs for every node of every rebuild."""
    meta = get_meta(node)
    if not changes.keys() <= _PLAIN_FIELDS:
        return set_meta(node, replace(meta, **changes))
    new = object.__new__(NodeMeta)
    new.__dict__.update(meta.__dict__, **changes)
    if "precision" in changes and not isinstance(changes["precision"], MappingProxyType):
        new.__dict__["precision"] = MappingProxyType(dict(changes["precision"]))
    return set_meta(node, new)


def annotate(node: fx.Node, analysis: str, **changes: Any) -> NodeMeta:
    """``update_meta`` by an analysis pass: also records ``analysis`` in the node's ``analyses``."""
    meta = get_meta(node)
    return set_meta(node, replace(meta, analyses=meta.analyses | {analysis}, **changes))
