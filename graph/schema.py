"""Schemas of a saved graph directory's JSON files, checked before anything is built from them.

``graph.json`` (:class:`GraphFile`) and ``meta.json`` (:class:`MetaFile`) are untrusted: pydantic
models with ``extra="forbid"`` fix every key and type. Names that end up in the Python source torch.fx
generates (node names, placeholder targets, module paths, method names, keyword names, the pytree
codegen's argument list) must match :data:`IDENT` / :data:`PATH`, so no string from a file can carry
code. Values are tagged JSON (see :mod:`qfx.graph.serialize`) with one key per tag; dtypes and torch
layouts come from fixed sets. What the schema cannot know (that a function or class is on the
allowlist, that a name exists in the module tree, that a tensor key is stored) the loader checks next.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag, model_validator
from typing_extensions import TypeAliasType

MAX_NAME = 200
MAX_NODES = 250_000  # nodes of a saved graph (the 20,002-node bench graph loads in ~2.5 s; beyond, not a model)
_ID = r"[A-Za-z_][A-Za-z0-9_]*"
# a Python identifier (node names, attribute names): what torch.fx writes into code as a variable
Ident = Annotated[str, Field(pattern=rf"^{_ID}$", max_length=MAX_NAME)]
# a module/attribute path: identifiers or child indices ("layers.0.weight"), as fx writes getattr(...) chains
Path_ = Annotated[str, Field(pattern=rf"^({_ID}|[0-9]+)(\.({_ID}|[0-9]+))*$", max_length=1000)]
# a qualified Python name (module.Class, torch.nn.functional.relu)
Qualname = Annotated[str, Field(pattern=rf"^{_ID}(\.{_ID})*$", max_length=MAX_NAME)]
Key = Annotated[str, Field(min_length=1, max_length=1000)]

DTYPES: tuple[str, ...] = tuple(sorted(n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)))
LAYOUTS: tuple[str, ...] = tuple(
    sorted(
        n
        for n in dir(torch)
        if not n.startswith("_") and isinstance(getattr(torch, n, None), (torch.layout, torch.memory_format))
    )
)
OPS = ("placeholder", "get_attr", "call_function", "call_module", "call_method", "output")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _tag(v: Any) -> str | None:
    """The union member a JSON value belongs to (None: no member, a validation error)."""
    t = type(v)
    if t is dict:
        if len(v) == 1:
            k = next(iter(v))
            return k if k in _TAG_SET else None
        return "codec" if len(v) == 2 and "codec" in v and "data" in v else None
    if t in _PLAIN:
        return t.__name__
    if isinstance(v, BaseModel):
        return next(iter(type(v).model_fields))
    return None


Value = TypeAliasType(
    "Value",
    Annotated[
        Annotated[None, Tag("NoneType")]
        | Annotated[bool, Tag("bool")]
        | Annotated[int, Tag("int")]
        | Annotated[float, Tag("float")]
        | Annotated[Annotated[str, Field(max_length=100_000)], Tag("str")]
        | Annotated[list["Value"], Tag("list")]
        | Annotated["TupleV", Tag("t")]
        | Annotated["SetV", Tag("s")]
        | Annotated["DictV", Tag("d")]
        | Annotated["DtypeV", Tag("dtype")]
        | Annotated["DeviceV", Tag("device")]
        | Annotated["TorchV", Tag("torch")]
        | Annotated["SliceV", Tag("slice")]
        | Annotated["EllipsisV", Tag("ellipsis")]
        | Annotated["NodeV", Tag("node")]
        | Annotated["OwnV", Tag("own")]
        | Annotated["TensorV", Tag("tensor")]
        | Annotated["WeakV", Tag("weak")]
        | Annotated["FnV", Tag("fn")]
        | Annotated["CodecV", Tag("codec")],
        Discriminator(_tag, custom_error_type="value_tag", custom_error_message="not a saved value"),
    ],
)


class TupleV(Strict):
    t: list[Value]


class SetV(Strict):
    s: list[Value]


class DictV(Strict):
    d: dict[Annotated[str, Field(max_length=MAX_NAME)], Value]


class DtypeV(Strict):
    dtype: Literal[DTYPES]  # type: ignore[valid-type]


class DeviceV(Strict):
    device: Annotated[str, Field(pattern=r"^(cpu|cuda|meta|mps|xpu)(:[0-9]{1,3})?$")]


class TorchV(Strict):
    torch: Literal[LAYOUTS]  # type: ignore[valid-type]


class SliceV(Strict):
    slice: tuple[Value, Value, Value]


class EllipsisV(Strict):
    ellipsis: Literal[True]


class NodeV(Strict):
    node: Ident


class OwnV(Strict):
    own: Annotated[str, Field(pattern=rf"^[pb]:{_ID}$", max_length=MAX_NAME)]


class TensorV(Strict):
    tensor: Key


class WeakV(Strict):
    weak: Value


class FnV(Strict):
    fn: Qualname


class CodecV(Strict):
    codec: Ident
    data: JsonValue = None


_PLAIN = frozenset({type(None), bool, int, float, str, list})
_TAGS = ("t", "s", "d", "dtype", "device", "torch", "slice", "ellipsis", "node", "own", "tensor", "weak", "fn", "codec")
_TAG_SET = frozenset(_TAGS) - {"codec"}


class NodeSpec(Strict):
    name: Ident
    op: Literal[OPS]  # type: ignore[valid-type]
    target: Annotated[str, Field(max_length=1000)] | FnV
    args: TupleV
    kwargs: DictV

    @model_validator(mode="after")
    def _target(self) -> NodeSpec:
        if self.name.startswith("__"):
            raise ValueError(f"node name {self.name!r}: dunder names are reserved")
        t = self.target
        if self.op == "call_function":
            if not isinstance(t, FnV):
                raise ValueError('a call_function target is {"fn": qualified name}')
            return self
        if not isinstance(t, str):
            raise ValueError(f"a {self.op} target is a string")
        if not _TARGET_RULES.get(self.op, _is_path)(t):
            raise ValueError(f"{self.op} target {t[:80]!r} is not an identifier / attribute path")
        for k in self.kwargs.d:
            if _IDENT_RE.fullmatch(k) is None or keyword.iskeyword(k):
                raise ValueError(f"keyword argument name {k[:80]!r} is not an identifier")
        return self


_PATH_RE = re.compile(rf"({_ID}|[0-9]+)(\.({_ID}|[0-9]+))*")
_IDENT_RE = re.compile(_ID)


def _is_path(s: str) -> bool:
    return _PATH_RE.fullmatch(s) is not None


_TARGET_RULES = {
    "placeholder": lambda s: _IDENT_RE.fullmatch(s.lstrip("*")) is not None and not keyword.iskeyword(s.lstrip("*")),
    "call_method": lambda s: _IDENT_RE.fullmatch(s) is not None,
    "output": lambda s: s == "output",
}


class ParamRef(Strict):
    key: Key
    grad: bool


class ModuleRef(Strict):
    ref: Path_


ChildName = Annotated[str, Field(pattern=rf"^({_ID}|[0-9]+)$", max_length=MAX_NAME)]


class ModuleSpec(Strict):
    class_: Annotated[str, Field(max_length=MAX_NAME)] = Field(alias="class")  # checked against the allowlist
    attrs: dict[Ident, Value]
    params: dict[Ident, ParamRef | None]
    buffers: dict[Ident, Key | None]
    children: dict[ChildName, AnyModule | None]

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


def _by_key(key: str, yes: str, no: str) -> Any:
    return Discriminator(lambda v: yes if (key in v if isinstance(v, dict) else hasattr(v, key)) else no)


AnyModule = Annotated[
    Annotated["ModuleSpec", Tag("spec")] | Annotated[ModuleRef, Tag("ref")], _by_key("ref", "ref", "spec")
]


class TensorAttr(Strict):
    key: Key
    param: bool
    grad: bool


class ValueAttr(Strict):
    value: Value


AnyAttr = Annotated[Annotated[TensorAttr, Tag("t")] | Annotated[ValueAttr, Tag("v")], _by_key("value", "v", "t")]


class CodegenSpec(Strict):
    orig_args: list[Ident]
    in_spec: Annotated[str, Field(max_length=100_000)]
    out_spec: Annotated[str, Field(max_length=100_000)] | None


class GraphFile(Strict):
    """``graph.json``."""

    format: str
    class_name: Ident
    training: bool
    codegen: CodegenSpec | None
    nodes: list[NodeSpec]  # at most MAX_NODES (checked by the loader)
    modules: dict[Path_, AnyModule]
    tensors: dict[Path_, AnyAttr]


# ---- meta.json ------------------------------------------------------------------------------------
Shape = TypeAliasType("Shape", int | None | list["Shape"])
Dtype = TypeAliasType("Dtype", Annotated[str, Field(max_length=64)] | None | list["Dtype"])
Count = Annotated[int, Field(ge=0)]


class PrecisionSpec(Strict):
    fmt: Annotated[str, Field(pattern=rf"^{_ID}$", max_length=64)]
    width: Annotated[int, Field(ge=1, le=32)]
    frac: Annotated[int, Field(ge=-1, le=64)] | None
    round: Literal["half_even", "half_up", "trunc"] = "half_even"
    overflow: Literal["saturate", "wrap"] = "saturate"
    granularity: Literal["tensor", "channel", "element"] = "tensor"
    maps: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None


class NodeMetaSpec(Strict):
    name: Ident
    op: Literal[OPS]  # type: ignore[valid-type]
    target: Annotated[str, Field(max_length=1000)]
    op_type: Annotated[str, Field(max_length=MAX_NAME)]
    in_shapes: list[Shape] = []
    in_dtypes: list[Dtype] = []
    out_shape: Shape = None
    out_dtype: Dtype = None
    macs: Count | None = None
    flops: Count | None = None
    params: Count | None = None
    precision: dict[Ident, PrecisionSpec] = {}
    quantized: Annotated[str, Field(max_length=MAX_NAME)] | None = None
    numerics: dict[Ident, JsonValue] | None = None
    analyses: list[Ident] = []
    calibration: dict[Ident, list[Annotated[int, Field(ge=0, le=64)]]] | None = None


class MetaFile(Strict):
    """``meta.json`` (what :func:`qfx.graph.dump.to_dict` writes)."""

    analyses: list[Ident] = []
    totals: dict[Ident, int] = {}
    nodes: list[NodeMetaSpec]
    edges: list[tuple[Ident, Ident]] = []


for _m in (TupleV, SetV, DictV, SliceV, WeakV, NodeSpec, ModuleSpec, ValueAttr, GraphFile):
    _m.model_rebuild()


def error_line(e: Exception, limit: int = 3) -> str:
    """A pydantic ValidationError as one line: the first errors with their key paths."""
    errs = getattr(e, "errors", None)
    if errs is None:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    parts = []
    items = errs(include_url=False)
    for err in items[:limit]:
        keys = [x for x in err["loc"] if not (isinstance(x, str) and x in _TAGS_LOC_NOISE)]
        loc = ".".join(_loc(x) for x in keys) or "(top)"
        parts.append(f"at {loc}: {' '.join(str(err['msg']).split())[:300]}")
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(parts) + more


def _loc(x: Any) -> str:
    """A key of an error location as printed: plain when it is a name or an index, else quoted (one line)."""
    return str(x) if isinstance(x, int) or _PATH_RE.fullmatch(str(x)) else repr(x)[:60]


# union member labels pydantic puts into error locations
_TAGS_LOC_NOISE = {"NoneType", "bool", "int", "float", "str", "list", *_TAGS, "function-after[_target()]"}
