"""Saving a GraphModule without pickle: graph and module specs as JSON, tensors as plain data.

A saved graph is ``graph.json`` (nodes with their exact names, op, target, args; every referenced
module as ``{class, attrs, params, buffers, children}``) and ``weights.safetensors`` (a flat
``{key: tensor}`` table; older directories hold ``weights.pt``, read with ``torch.load(weights_only=True)``).

Loading validates before it builds (:mod:`qfx.graph.schema`), and nothing in the files can name code
outside fixed tables:

- call_function targets and function values: :func:`call_table`, derived from the op registry
  (``OP_TYPES``), torch's own list of tensor functions (``torch.overrides``), arithmetic/comparison
  ``operator`` functions, ``math`` and a few pure builtins, plus functions given to :func:`register_safe`.
  No reflection helper (``getattr`` on anything, ``attrgetter``, ``methodcaller``, ``operator.call``,
  ``setitem``) is in it; ``getattr`` nodes may only read a tensor attribute (:data:`TENSOR_ATTRS`).
- call_method names: :func:`method_table` (the registry's method names and pure tensor methods).
- module classes: exact qualified names of the ``torch.nn`` layer classes and registered qfx classes.
  ``trust=True`` widens this list (and only this list) to any importable ``nn.Module`` subclass.
- a module attribute may not shadow a method or property of its class; classes may check what was
  loaded (``_qfx_check_loaded``).
- dtypes, layouts and devices come from fixed sets; tensors only from the stored table (sizes are the
  stored tensors' own); every module path / get_attr target must exist in the saved module tree.
Node names survive the round trip exactly (a pickled GraphModule re-traces and renames them).
Any file that breaks a rule raises :class:`SerializationError` naming the file, the node/module/key and
what is allowed.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import math
import operator
import weakref
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.fx.node import _get_qualified_name
from torch.utils import _pytree as pytree

from qfx.graph import schema as S
from qfx.graph.errors import SerializationError
from qfx.graph.meta import NodeMeta, TensorPrecision, check_precision
from qfx.graph.registry import ON_OP_TYPES_CHANGE, OP_TYPES
from qfx.graph.safeio import inside

FORMAT = "qfx-graph/1"


_SAFE: dict[str, Any] = {}
# value codecs for non-JSON attribute types: tag -> (type, encode, decode)
_CODECS: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {}

# tensor attributes a ``getattr`` node may read (what tracing records for x.shape, x.device ...)
TENSOR_ATTRS = frozenset("shape dtype device ndim T mT H mH is_cuda layout requires_grad".split())

_OPERATORS = (
    "add sub mul truediv floordiv mod pow neg pos abs matmul and_ or_ xor not_ invert inv lshift rshift "
    "eq ne lt le gt ge getitem truth is_ is_not index concat contains "
    "iadd isub imul itruediv ifloordiv imod ipow imatmul iand ior ixor ilshift irshift iconcat"
).split()
_BUILTINS = ("len", "int", "float", "bool", "min", "max", "abs", "slice", "range", "tuple", "list", "round", "sum")
# tensor methods that are not torch.* functions but are pure tensor operations
_EXTRA_METHODS = (
    "view view_as reshape_as expand expand_as repeat contiguous size dim type_as to float double half bfloat16 "
    "bool long int short byte char item new_zeros new_ones new_full new_empty new_tensor masked_fill_ "
    "unflatten clone detach chunk split unbind permute flatten unsqueeze squeeze transpose t numel "
    "element_size is_contiguous is_floating_point"
).split()
# never callable from a file even though torch.Tensor has them: storage access, hooks, callbacks, resizing
_DENY_METHODS = frozenset(
    "apply_ map_ map2_ set_ resize_ resize_as_ share_memory_ storage untyped_storage record_stream register_hook "
    "register_post_accumulate_grad_hook backward numpy tolist data_ptr pin_memory cuda to_sparse".split()
)


def qualname(obj: Any) -> str:
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return _get_qualified_name(obj)


def register_safe(*objs: Any) -> None:
    """Allow these classes/functions to be named in saved graphs (loaded without ``trust``)."""
    for o in objs:
        _SAFE[qualname(o)] = o
    call_table.cache_clear()


def register_codec(tag: str, typ: type, encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> None:
    """Teach the serializer a module attribute type: ``encode(v)`` must return JSON data;
    ``decode(data)`` must validate it (it reads an untrusted file) and raise ValueError on bad data."""
    if tag in _CODECS:
        raise ValueError(f"a codec {tag!r} is already registered")
    _CODECS[tag] = (typ, encode, decode)


def _name(f: Any) -> str | None:
    try:
        return _get_qualified_name(f)
    except Exception:  # noqa: BLE001 - unnamed builtins are simply not allowed
        return None


@cache
def _tensor_functions() -> dict[str, Any]:
    fns: dict[str, Any] = {}
    for ns, lst in torch.overrides.get_overridable_functions().items():
        if ns in (torch, torch.functional, torch.nn.functional):
            for f in lst:
                if (n := _name(f)) is not None:
                    fns[n] = f
    return fns


@cache
def call_table() -> dict[str, Any]:
    """Qualified name -> function, for every function a saved graph may call (see the module docstring)."""

    fns = dict(_tensor_functions())
    for keys in OP_TYPES.values():
        for f in keys:
            if callable(f) and not isinstance(f, type) and f is not getattr and (n := _name(f)) is not None:
                fns[n] = f
    for k in _OPERATORS:
        fns[_get_qualified_name(getattr(operator, k))] = getattr(operator, k)
    for k, v in vars(math).items():
        if callable(v) and not k.startswith("_"):
            fns[_get_qualified_name(v)] = v
    for k in _BUILTINS:
        fns[k] = getattr(builtins, k)
    fns.update({k: v for k, v in _SAFE.items() if callable(v) and not isinstance(v, type)})
    return fns


@cache
def method_table() -> frozenset[str]:
    """Tensor method names a call_method node (or a quantized method call) may use."""

    names = {k for keys in OP_TYPES.values() for k in keys if isinstance(k, str)}
    for n in {getattr(f, "__name__", "") for f in _tensor_functions().values()} | set(_EXTRA_METHODS):
        names |= {m for m in (n, f"{n}_") if hasattr(torch.Tensor, m)}
    return frozenset(m for m in names if m.isidentifier() and not m.startswith("_") and m not in _DENY_METHODS)


ON_OP_TYPES_CHANGE += [call_table.cache_clear, method_table.cache_clear]


@cache
def module_classes() -> dict[str, type]:
    """Exact qualified name -> class for every ``torch.nn`` layer class (the built-in module allowlist)."""
    out: dict[str, type] = {}
    for mod in list(vars(nn.modules).values()):
        if inspect.ismodule(mod) and mod.__name__.startswith("torch.nn.modules."):
            for v in vars(mod).values():
                if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__.startswith("torch.nn.modules."):
                    out[qualname(v)] = v
    return out


# modules whose import registers safe types (the quantized replacements)
REGISTRARS = ["qfx.passes.transforms.quantize.modules"]


# graphs saved before the ``qfx`` namespace name our classes by their old top-level modules
_LEGACY_PREFIXES = ("passes.", "graph.", "zoo.", "hw.", "search.")


def resolve_function(name: str, where: str) -> Any:
    """A function named in a saved graph, from :func:`call_table` (``trust`` does not widen it)."""
    table = call_table()
    if name not in table:
        for mod in REGISTRARS:
            importlib.import_module(mod)
        table = call_table()
    if name not in table:
        raise SerializationError(
            f"{where}: function {name!r} is not on the allowlist of callable names (the op registry, torch tensor "
            "functions, arithmetic operator/math, registered qfx functions); register a pure function with "
            "qfx.graph.serialize.register_safe(...)"
        )
    return table[name]


def resolve_module_class(name: str, trust: bool, where: str) -> type:
    """A module class named in a saved graph: exact name from the allowlist, or any importable
    ``nn.Module`` subclass with ``trust``."""
    if name.startswith(_LEGACY_PREFIXES):
        name = f"qfx.{name}"
    if name not in _SAFE:
        for mod in REGISTRARS:
            importlib.import_module(mod)
    cls = _SAFE.get(name) or module_classes().get(name)
    if cls is None:
        if not trust:
            raise SerializationError(
                f"{where}: module class {name!r} is not on the allowlist of safe names (torch.nn layer classes, "
                "registered qfx types); register it with qfx.graph.serialize.register_safe(...) "
                "or load with trust=True (--trust-checkpoint) if you trust this file"
            )
        if not all(p.isidentifier() for p in name.split(".")):
            raise SerializationError(f"{where}: module class {name[:80]!r} is not an importable qualified name")
        try:
            cls = _import_path(name)
        except (ImportError, AttributeError) as e:
            raise SerializationError(f"{where}: cannot resolve module class {name!r} ({e})") from e
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise SerializationError(f"{where}: {name!r} is not an nn.Module class")
    return cls


def _import_path(name: str) -> Any:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(name)


# ---- values ---------------------------------------------------------------------------------
class _Writer:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._keys: dict[int, str] = {}

    def tensor(self, t: torch.Tensor, hint: str) -> str:
        if id(t) not in self._keys:
            key = hint if hint not in self.tensors else f"{hint}#{len(self.tensors)}"
            self._keys[id(t)] = key
            self.tensors[key] = t.detach().cpu().contiguous() if not t.is_contiguous() else t.detach().cpu()
        return self._keys[id(t)]

    def value(self, v: Any, where: str, own: dict[int, str] | None = None) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, tuple):
            return {"t": [self.value(i, where, own) for i in v]}
        if isinstance(v, list):
            return [self.value(i, where, own) for i in v]
        if isinstance(v, (set, frozenset)):
            return {"s": sorted((self.value(i, where, own) for i in v), key=repr)}
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"d": {k: self.value(i, where, own) for k, i in v.items()}}
        if isinstance(v, torch.dtype):
            return {"dtype": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {"device": str(v)}
        if isinstance(v, (torch.memory_format, torch.layout)):
            return {"torch": str(v).removeprefix("torch.")}
        if isinstance(v, slice):
            return {"slice": [self.value(i, where, own) for i in (v.start, v.stop, v.step)]}
        if v is Ellipsis:
            return {"ellipsis": True}
        if isinstance(v, fx.Node):
            return {"node": v.name}
        if isinstance(v, weakref.ReferenceType):
            return {"weak": self.value(v(), where, own)}
        if isinstance(v, torch.Tensor):
            if own and id(v) in own:
                return {"own": own[id(v)]}
            return {"tensor": self.tensor(v, where)}
        for tag, (typ, enc, _) in _CODECS.items():
            if isinstance(v, typ):
                return {"codec": tag, "data": enc(v)}
        if callable(v) and not isinstance(v, nn.Module):
            try:
                return {"fn": qualname(v)}
            except Exception:  # noqa: BLE001 - reported below
                pass
        raise SerializationError(f"{where}: cannot save a value of type {type(v).__qualname__} without pickle")

    def module(self, m: nn.Module, path: str, memo: dict[int, str]) -> dict[str, Any]:
        if id(m) in memo:
            return {"ref": memo[id(m)]}
        memo[id(m)] = path
        fresh = _FRESH_KEYS
        transient = getattr(m, "_qfx_transient", {})
        own: dict[int, str] = {}
        params = {}
        for k, p in m._parameters.items():
            params[k] = None if p is None else {"key": self.tensor(p, f"{path}.{k}"), "grad": p.requires_grad}
            if p is not None:
                own[id(p)] = f"p:{k}"
        buffers = {}
        for k, b in m._buffers.items():
            buffers[k] = None if b is None else self.tensor(b, f"{path}.{k}")
            if b is not None:
                own[id(b)] = f"b:{k}"
        attrs = {}
        for k, v in m.__dict__.items():
            if k in fresh or k in ("_parameters", "_buffers", "_modules") or k in transient:
                if k.endswith("hooks") and v:
                    raise SerializationError(f"module {path!r} ({type(m).__name__}) has hooks; they cannot be saved")
                continue
            attrs[k] = self.value(v, f"module {path!r} attribute {k!r}", own)
        children = {k: None if c is None else self.module(c, f"{path}.{k}", memo) for k, c in m._modules.items()}
        return {"class": qualname(type(m)), "attrs": attrs, "params": params, "buffers": buffers, "children": children}


class _Reader:
    """Builds values and modules from validated specs (:mod:`qfx.graph.schema`)."""

    def __init__(self, tensors: dict[str, torch.Tensor], trust: bool) -> None:
        self.tensors = tensors
        self.trust = trust
        self._params: dict[str, nn.Parameter] = {}

    def tensor(self, key: str, where: str) -> torch.Tensor:
        if key not in self.tensors:
            raise SerializationError(f"{where}: tensor {key[:80]!r} is not in the stored tensors")
        return self.tensors[key]

    def param(self, key: str, grad: bool, where: str) -> nn.Parameter:
        if key not in self._params:  # tied parameters stay one object
            t = self.tensor(key, where)
            if grad and not t.is_floating_point():
                raise SerializationError(f"{where}: parameter {key[:80]!r} of dtype {t.dtype} cannot require grad")
            self._params[key] = nn.Parameter(t, requires_grad=grad)
        return self._params[key]

    def value(
        self, v: Any, where: str, env: dict[str, fx.Node] | None = None, own: dict[str, Any] | None = None
    ) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(i, where, env, own) for i in v]
        read = _VALUE_READERS.get(type(v))
        if read is None:
            raise SerializationError(f"{where}: unknown value {type(v).__name__}")
        return read(self, v, where, env, own)

    def module(self, spec: S.ModuleSpec | S.ModuleRef, path: str, memo: dict[str, nn.Module]) -> nn.Module:
        if isinstance(spec, S.ModuleRef):
            if spec.ref not in memo:
                raise SerializationError(f"module {path!r}: refers to {spec.ref!r}, which is not defined before it")
            return memo[spec.ref]
        where = f"module {path!r}"
        cls = resolve_module_class(spec.class_, self.trust, where)
        m = cls.__new__(cls)
        m.__dict__.update(fresh_module_state())  # what nn.Module.__init__ sets, without its per-call cost
        memo[path] = m
        own: dict[str, Any] = {}
        for k in (*spec.params, *spec.buffers, *spec.children):
            _check_member(cls, k, where)
        for k, p in spec.params.items():
            m._parameters[k] = None if p is None else self.param(p.key, p.grad, f"{where} parameter {k!r}")
            own[f"p:{k}"] = m._parameters[k]
        for k, key in spec.buffers.items():
            m._buffers[k] = None if key is None else self.tensor(key, f"{where} buffer {k!r}")
            own[f"b:{k}"] = m._buffers[k]
        for k, v in spec.attrs.items():
            _check_attr(cls, k, where)
            m.__dict__[k] = self.value(v, f"{where} attribute {k!r}", own=own)
        for k, v in getattr(cls, "_qfx_transient", {}).items():
            m.__dict__[k] = v
        for k, c in spec.children.items():
            m._modules[k] = None if c is None else self.module(c, f"{path}.{k}", memo)
        check = getattr(cls, "_qfx_check_loaded", None)
        if check is not None:
            try:
                check(m)
            except (TypeError, ValueError) as e:
                raise SerializationError(f"{where}: {e}") from e
        return m


_MODULE_STATE = nn.Module().__dict__  # what nn.Module.__init__ sets: flags and empty hook/child containers


_FRESH_KEYS = frozenset(_MODULE_STATE) - {"training", "_non_persistent_buffers_set"}  # not saved: set by init
_STATE_FLAGS = {k: v for k, v in _MODULE_STATE.items() if not isinstance(v, dict | set)}
_STATE_CONTAINERS = [(k, type(v)) for k, v in _MODULE_STATE.items() if isinstance(v, dict | set)]


def fresh_module_state() -> dict[str, Any]:
    """The attributes ``nn.Module.__init__`` sets, with new empty containers (no hooks, children or tensors):
    the same state at a fraction of its cost (a rebuild or a load makes one per module)."""
    state = dict(_STATE_FLAGS)
    for k, make in _STATE_CONTAINERS:
        state[k] = make()
    return state


def _check_attr(cls: type, k: str, where: str) -> None:
    """A saved attribute is instance data: never a dunder, a method, a property or another descriptor."""
    bad = _attr_problem(cls, k)
    if bad:
        raise SerializationError(f"{where}: {bad}")


def _check_member(cls: type, k: str, where: str) -> None:
    """A parameter/buffer/child name may not be a dunder nor shadow a class member (``self.<name>`` in the code
    fx generates would reach the class's method instead; ``nn.Module.add_module`` refuses such names too)."""
    if _shadows(cls, k):
        raise SerializationError(f"{where}: member name {k!r} is a dunder or shadows {cls.__name__}.{k}")


@cache
def _shadows(cls: type, k: str) -> bool:
    return k.startswith("__") or inspect.getattr_static(cls, k, None) is not None


@cache
def _attr_problem(cls: type, k: str) -> str | None:
    if k.startswith("__") or k in ("_parameters", "_buffers", "_modules"):
        return f"attribute {k!r} may not be set from a file"
    c = inspect.getattr_static(cls, k, None)
    if c is not None and (callable(c) or hasattr(c, "__get__") or hasattr(c, "__set__")):
        return f"attribute {k!r} would replace the class's {type(c).__name__} {k!r}"
    return None


def _node(r: _Reader, v: S.NodeV, where: str, env: dict[str, fx.Node] | None, own: Any) -> Any:
    if env is None or v.node not in env:
        raise SerializationError(f"{where}: refers to node {v.node!r}, which is not defined before it")
    return env[v.node]


def _own(r: _Reader, v: S.OwnV, where: str, env: Any, own: dict[str, Any] | None) -> Any:
    if own is None or v.own not in own:
        raise SerializationError(f"{where}: refers to {v.own!r}, not a parameter/buffer of this module")
    return own[v.own]


def _codec(r: _Reader, v: S.CodecV, where: str, env: Any, own: Any) -> Any:
    if v.codec not in _CODECS:
        raise SerializationError(f"{where}: unknown value codec {v.codec!r}; known: {', '.join(_CODECS)}")
    try:
        return _CODECS[v.codec][2](v.data)
    except (TypeError, ValueError, KeyError) as e:
        raise SerializationError(f"{where}: bad {v.codec!r} data ({str(e).splitlines()[0]})") from e


_VALUE_READERS: dict[type, Callable[..., Any]] = {
    S.TupleV: lambda r, v, w, e, o: tuple(r.value(i, w, e, o) for i in v.t),
    S.SetV: lambda r, v, w, e, o: _hashable_set([r.value(i, w, e, o) for i in v.s], w),
    S.DictV: lambda r, v, w, e, o: {k: r.value(i, w, e, o) for k, i in v.d.items()},
    S.DtypeV: lambda r, v, w, e, o: getattr(torch, v.dtype),
    S.DeviceV: lambda r, v, w, e, o: torch.device(v.device),
    S.TorchV: lambda r, v, w, e, o: getattr(torch, v.torch),
    S.SliceV: lambda r, v, w, e, o: slice(*(r.value(i, w, e, o) for i in v.slice)),
    S.EllipsisV: lambda r, v, w, e, o: Ellipsis,
    S.NodeV: _node,
    S.OwnV: _own,
    S.TensorV: lambda r, v, w, e, o: r.tensor(v.tensor, w),
    S.WeakV: lambda r, v, w, e, o: _weak(r.value(v.weak, w, e, o), w),
    S.FnV: lambda r, v, w, e, o: resolve_function(v.fn, w),
    S.CodecV: _codec,
}


def _hashable_set(items: list[Any], where: str) -> set[Any]:
    try:
        return set(items)
    except TypeError as e:
        raise SerializationError(f"{where}: a set of unhashable values ({e})") from e


def _weak(v: Any, where: str) -> Any:
    try:
        return weakref.ref(v)
    except TypeError as e:
        raise SerializationError(f"{where}: cannot hold a weak reference to {type(v).__name__}") from e


# ---- graph modules ----------------------------------------------------------------------------
def _target_value(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def dump_graph_module(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """JSON-able description of ``gm`` and the tensors it holds."""
    w = _Writer()
    memo: dict[int, str] = {}
    nodes, modules, tensors = [], {}, {}
    for n in gm.graph.nodes:
        where = f"node {n.name!r}"
        if n.op == "call_function":
            target: Any = {"fn": qualname(n.target)}
        else:
            target = n.target
        nodes.append(
            {
                "name": n.name,
                "op": n.op,
                "target": target,
                "args": w.value(n.args, where),
                "kwargs": w.value(n.kwargs, where),
            }
        )
        if n.op == "call_module" and n.target not in modules:
            modules[n.target] = w.module(gm.get_submodule(n.target), n.target, memo)
        elif n.op == "get_attr" and n.target not in modules and n.target not in tensors:
            v = _target_value(gm, n.target)
            if isinstance(v, nn.Module):
                modules[n.target] = w.module(v, n.target, memo)
            elif isinstance(v, torch.Tensor):
                tensors[n.target] = {
                    "key": w.tensor(v, n.target),
                    "param": isinstance(v, nn.Parameter),
                    "grad": v.requires_grad,
                }
            else:
                tensors[n.target] = {"value": w.value(v, where)}
    codegen = None
    cg = gm.graph._codegen
    if isinstance(cg, _PyTreeCodeGen):
        info = cg.pytree_info
        codegen = {
            "orig_args": list(info.orig_args),
            "in_spec": pytree.treespec_dumps(info.in_spec),
            "out_spec": None if info.out_spec is None else pytree.treespec_dumps(info.out_spec),
        }
    elif type(cg) is not fx.graph.CodeGen:
        raise SerializationError(f"graph code generator {type(cg).__name__} cannot be saved")
    spec = {
        "format": FORMAT,
        "class_name": type(gm).__name__ if type(gm) is not fx.GraphModule else gm.__class__.__name__,
        "training": gm.training,
        "codegen": codegen,
        "nodes": nodes,
        "modules": modules,
        "tensors": tensors,
    }
    return spec, w.tensors


def load_graph_module(
    spec: S.GraphFile | dict[str, Any], tensors: dict[str, torch.Tensor], trust: bool = False
) -> fx.GraphModule:
    """Rebuild a GraphModule from :func:`dump_graph_module`'s output, validated first (no code from the file runs)."""
    if isinstance(spec, dict):
        try:
            spec = S.GraphFile.model_validate(spec)
        except ValueError as e:
            raise SerializationError(f"graph spec: {S.error_line(e)}") from e
    if spec.format != FORMAT:
        raise SerializationError(f"not a {FORMAT} graph (format={spec.format[:40]!r})")
    for t in (*spec.modules, *spec.tensors):
        _check_member(fx.GraphModule, t.split(".")[0], f"target {t!r}")
    r = _Reader(tensors, trust)
    memo: dict[str, nn.Module] = {}
    root: dict[str, Any] = {t: r.module(s, t, memo) for t, s in spec.modules.items()}
    for t, s in spec.tensors.items():
        where = f"attribute {t!r}"
        if isinstance(s, S.TensorAttr):
            root[t] = r.param(s.key, s.grad, where) if s.param else r.tensor(s.key, where)
        else:
            root[t] = r.value(s.value, where)
    g = _build_graph(spec, root, r)
    try:
        gm = fx.GraphModule(root, g, spec.class_name)
    except (RuntimeError, SyntaxError, AttributeError, TypeError) as e:
        raise SerializationError(f"graph: cannot be rebuilt ({str(e).splitlines()[0] if str(e) else e!r})") from e
    gm.training = spec.training  # submodules keep their own saved flags
    return gm


def _lookup(root: dict[str, Any], target: str) -> Any:
    """The object a call_module/get_attr target names inside the saved tree, or a KeyError."""
    if target in root:
        return root[target]
    head, _, rest = target.partition(".")
    obj = root[head]
    for part in rest.split(".") if rest else ():
        if not isinstance(obj, nn.Module):
            raise KeyError(target)
        obj = {**obj._modules, **obj._parameters, **obj._buffers}[part]
    return obj


def _check_target(nd: S.NodeSpec, root: dict[str, Any], where: str) -> Any:
    """The node's target after checking it against the tables and the saved module tree."""
    t = nd.target
    if nd.op == "call_function":
        if t.fn == "getattr":  # type: ignore[union-attr]
            return getattr  # only as a node reading a tensor attribute (checked with its arguments)
        return resolve_function(t.fn, where)  # type: ignore[union-attr]
    if nd.op == "call_method" and t not in method_table():
        raise SerializationError(f"{where}: method {t!r} is not on the table of tensor methods a graph may call")
    if nd.op in ("call_module", "get_attr"):
        try:
            obj = _lookup(root, t)  # type: ignore[arg-type]
        except KeyError:
            raise SerializationError(f"{where}: {nd.op} target {t!r} is not in the saved module tree") from None
        if nd.op == "call_module" and not isinstance(obj, nn.Module):
            raise SerializationError(f"{where}: call_module target {t!r} is not a module")
        if nd.op == "get_attr" and isinstance(obj, nn.Module):
            raise SerializationError(f"{where}: get_attr target {t!r} is a module (only tensors and values are read)")
    return t


def _build_graph(spec: S.GraphFile, root: dict[str, Any], r: _Reader) -> fx.Graph:
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    placeholders = []
    for nd in spec.nodes:
        where = f"node {nd.name!r}"
        target = _check_target(nd, root, where)
        args = r.value(nd.args, where, env)
        kwargs = r.value(nd.kwargs, where, env)
        if target is getattr and not (
            len(args) == 2 and isinstance(args[0], fx.Node) and args[1] in TENSOR_ATTRS and not kwargs
        ):
            raise SerializationError(
                f"{where}: getattr may only read a tensor attribute of a node ({', '.join(sorted(TENSOR_ATTRS))})"
            )
        if nd.name in env:
            raise SerializationError(f"{where}: a second node with this name")
        node = g.create_node(nd.op, target, tuple(args), kwargs, name=nd.name)
        if node.name != nd.name:
            raise SerializationError(f"{where}: name reserved or clashing while rebuilding (got {node.name!r})")
        env[node.name] = node
        if nd.op == "placeholder":
            placeholders.append(nd.target)
    outs = [n for n in spec.nodes if n.op == "output"]
    if len(outs) != 1 or spec.nodes[-1].op != "output":
        raise SerializationError(f"graph: needs exactly one output node, last (found {len(outs)})")
    if spec.codegen is not None:
        c = spec.codegen
        if [a.lstrip("*") for a in placeholders] != c.orig_args:
            raise SerializationError(f"graph: codegen.orig_args {c.orig_args} differ from the placeholders")
        try:
            out_spec = None if c.out_spec is None else pytree.treespec_loads(c.out_spec)
            in_spec = pytree.treespec_loads(c.in_spec)
        except Exception as e:  # noqa: BLE001 - any failure of torch's parser is a bad file
            raise SerializationError(f"graph: codegen pytree spec unreadable ({str(e)[:200]})") from e
        g._codegen = _PyTreeCodeGen(_PyTreeInfo(list(c.orig_args), in_spec, out_spec))
    return g


# ---- directories --------------------------------------------------------------------------------
def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``{key: tensor}`` as safetensors (no pickle; sizes in a checked header). Tensors sharing storage
    are copied apart (safetensors stores each key's bytes once)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    save_file(out, str(path))


def _load_tensors(d: Path) -> Mapping[str, torch.Tensor]:
    """The directory's tensor table: ``weights.safetensors`` read lazily (header checked first, see
    :class:`~qfx.graph.loadcheck.LazyTensors`), or a legacy ``weights.pt`` (weights-only unpickler)."""
    from qfx.graph.loadcheck import LazyTensors, finite_table

    st = inside(d, "weights.safetensors")
    if st.is_file():
        return LazyTensors(st)
    pt = inside(d, "weights.pt")  # directories saved before safetensors
    if not pt.is_file():
        raise FileNotFoundError(f"{st} is missing: not a directory written by QGraph.save")
    try:
        tensors = torch.load(pt, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler raises several types
        raise SerializationError(f"{pt}: unreadable or unsafe tensors file ({str(e).splitlines()[0][:200]})") from e
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in tensors.items()):
        raise SerializationError(f"{pt}: not a {{name: tensor}} table")
    return finite_table(pt, tensors)


MAX_JSON_BYTES = 512 * 2**20  # graph.json / meta.json (a 20,002-node graph writes ~10 MB)


def _read_json(d: Path, name: str, model: type[Any]) -> Any:

    p = inside(d, name)
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: not a directory written by QGraph.save")
    if p.stat().st_size > MAX_JSON_BYTES:
        raise SerializationError(f"{p}: {p.stat().st_size:,} bytes, more than a saved graph's {MAX_JSON_BYTES:,}")
    try:
        return model.model_validate_json(p.read_bytes())
    except ValueError as e:
        raise SerializationError(f"{p}: {S.error_line(e)}") from e


def load_graph_dir(d: Path, trust: bool = False) -> tuple[fx.GraphModule, dict[str, Any], list[str]]:
    """``(GraphModule, {node name: NodeMeta}, analyses)`` of a directory written by ``QGraph.save``.

    Every file is checked against its schema and the allowlists before anything is built from it; any
    other failure while rebuilding is reported as a :class:`SerializationError` naming the file."""

    from qfx.graph.loadcheck import LazyTensors, LoadCheckError, check_records, check_shapes

    for mod in REGISTRARS:  # the quantized classes, codecs and number formats a saved graph may name
        importlib.import_module(mod)
    spec = _read_json(d, "graph.json", S.GraphFile)
    if len(spec.nodes) > S.MAX_NODES:
        raise SerializationError(f"{d / 'graph.json'}: {len(spec.nodes):,} nodes, more than {S.MAX_NODES:,}")
    meta = _read_json(d, "meta.json", S.MetaFile)
    tensors = _load_tensors(d)
    try:
        gm = load_graph_module(spec, tensors, trust)
    except LoadCheckError:
        raise
    except SerializationError as e:
        raise SerializationError(f"{d / 'graph.json'}: {e}") from e
    except Exception as e:  # noqa: BLE001 - whatever torch raises on a crafted file is reported, never run
        raise SerializationError(f"{d / 'graph.json'}: cannot be rebuilt ({type(e).__name__}: {str(e)[:200]})") from e
    names = [n.name for n in gm.graph.nodes]
    by_name = {m.name: m for m in meta.nodes}
    if len(by_name) != len(meta.nodes) or set(by_name) != set(names):
        missing = sorted(set(names) - set(by_name))[:5]
        extra = sorted(set(by_name) - set(names))[:5]
        raise SerializationError(
            f"{d / 'meta.json'}: node records do not match graph.json (missing {missing}, unknown {extra}, "
            f"{len(meta.nodes) - len(by_name)} duplicate(s))"
        )
    metas = {}
    checked: dict[tuple[Any, ...], TensorPrecision] = {}  # one check per distinct precision
    for m in meta.nodes:
        fields = {k: getattr(m, k) for k in _META_FIELDS}  # validated plain values; NodeMeta freezes them
        precision = {}
        for r, p in m.precision.items():
            key = (p.fmt, p.width, p.frac, p.round, p.overflow, p.granularity, p.maps)
            if key not in checked:
                try:
                    checked[key] = check_precision(TensorPrecision(*key))
                except ValueError as e:
                    raise SerializationError(f"{d / 'meta.json'}: node {m.name!r}: {e}") from e
            precision[r] = checked[key]
        fields["precision"] = precision
        metas[m.name] = NodeMeta(**fields)
    if isinstance(tensors, LazyTensors):
        tensors.check_all_used()
    check_records(gm, metas, str(d / "meta.json"))
    check_shapes(gm, metas, str(d / "meta.json"))
    return gm, metas, list(meta.analyses)


_META_FIELDS = tuple(S.NodeMetaSpec.model_fields)
