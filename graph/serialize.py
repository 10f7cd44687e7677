"""Saving a GraphModule without pickle: graph and module specs as JSON, tensors as plain data.

A saved graph is ``graph.json`` (nodes with their exact names, op, target, args; every
referenced module as ``{class, attrs, params, buffers, children}``) and ``weights.pt`` (a flat
``{key: tensor}`` dict, read with ``torch.load(weights_only=True)``). Loading runs no code from
the files: classes and functions are resolved by qualified name against an allowlist —
``torch.nn`` module classes, torch's tensor functions (``torch.overrides``), ``operator`` and
``math`` functions, tensor method names, and anything passed to :func:`register_safe` (the
quantized modules register themselves). ``trust=True`` resolves any importable name (for
user leaf modules/functions you know), still without unpickling.
Node names survive the round trip exactly (a pickled GraphModule re-traces and renames them).
"""

from __future__ import annotations

import builtins
import importlib
import math
import operator
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.fx.node import _get_qualified_name
from torch.utils import _pytree as pytree

FORMAT = "qfx-graph/1"


class SerializationError(ValueError):
    """A graph cannot be written or read without running code; the message names the node/module."""


_SAFE: dict[str, Any] = {}
# value codecs for non-JSON attribute types: tag -> (type, encode, decode)
_CODECS: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {}


def qualname(obj: Any) -> str:
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return _get_qualified_name(obj)


def register_safe(*objs: Any) -> None:
    """Allow these classes/functions to be named in saved graphs (loaded without ``trust``)."""
    for o in objs:
        _SAFE[qualname(o)] = o


def register_codec(tag: str, typ: type, encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> None:
    """Teach the serializer a module attribute type: ``encode(v)`` must return JSON data."""
    if tag in _CODECS:
        raise ValueError(f"a codec {tag!r} is already registered")
    _CODECS[tag] = (typ, encode, decode)


def _safe_functions() -> dict[str, Any]:
    if "__functions__" not in _SAFE:
        fns: dict[str, Any] = {}
        for ns, lst in torch.overrides.get_overridable_functions().items():
            if ns in (torch, torch.functional, torch.nn.functional):
                for f in lst:
                    try:
                        fns[_get_qualified_name(f)] = f
                    except Exception:  # noqa: BLE001, S112 - unnamed builtins are simply not allowed
                        continue
        factories = ("arange", "ones", "zeros", "full", "empty", "eye", "linspace", "tensor", "ones_like", "zeros_like")
        for name in factories:
            fns[f"torch.{name}"] = getattr(torch, name)
        for mod in (operator, math):
            for k, v in vars(mod).items():
                if callable(v) and not k.startswith("_"):
                    fns[_get_qualified_name(v)] = v
        from qfx.graph.registry import OP_TYPES

        for keys in OP_TYPES.values():
            for f in keys:
                if callable(f) and not isinstance(f, type):
                    fns[_get_qualified_name(f)] = f
        for k in ("getattr", "len", "int", "float", "bool", "min", "max", "abs", "slice", "range", "tuple", "list"):
            fns[k] = getattr(builtins, k)
        _SAFE["__functions__"] = fns
    return _SAFE["__functions__"]


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
    if len(parts) == 1 and hasattr(builtins, name):
        return getattr(builtins, name)
    raise ImportError(name)


# modules whose import registers safe types (the quantized replacements)
REGISTRARS = ["qfx.passes.transforms.quantize.modules"]


# graphs saved before the ``qfx`` namespace name our classes by their old top-level modules
_LEGACY_PREFIXES = ("passes.", "graph.", "zoo.", "hw.", "search.")


def resolve(name: str, kind: str, trust: bool, where: str) -> Any:
    """Class (``kind="module"``) or function named in a saved graph, from the allowlist."""
    if name.startswith(_LEGACY_PREFIXES):
        name = f"qfx.{name}"
    if name not in _SAFE:
        for mod in REGISTRARS:
            importlib.import_module(mod)
    if name in _SAFE:
        return _SAFE[name]
    if kind == "function" and name in _safe_functions():
        return _safe_functions()[name]
    allowed = kind == "module" and name.startswith("torch.nn.modules.")
    if not (allowed or trust):
        raise SerializationError(
            f"{where}: {kind} {name!r} is not on the allowlist of safe names (torch.nn modules, torch tensor "
            "functions, operator/math, registered qfx types); register it with qfx.graph.serialize.register_safe(...) "
            "or load with trust=True (--trust-checkpoint) if you trust this file"
        )
    try:
        obj = _import_path(name)
    except (ImportError, AttributeError) as e:
        raise SerializationError(f"{where}: cannot resolve {kind} {name!r} ({e})") from e
    if kind == "module" and not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise SerializationError(f"{where}: {name!r} is not an nn.Module class")
    return obj


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
        fresh = set(nn.Module().__dict__) - {"training", "_non_persistent_buffers_set"}
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
    def __init__(self, tensors: dict[str, torch.Tensor], trust: bool) -> None:
        self.tensors = tensors
        self.trust = trust
        self._params: dict[str, nn.Parameter] = {}

    def param(self, key: str, grad: bool) -> nn.Parameter:
        if key not in self._params:  # tied parameters stay one object
            self._params[key] = nn.Parameter(self.tensors[key], requires_grad=grad)
        return self._params[key]

    def value(
        self, v: Any, where: str, env: dict[str, fx.Node] | None = None, own: dict[str, Any] | None = None
    ) -> Any:
        if isinstance(v, list):
            return [self.value(i, where, env, own) for i in v]
        if not isinstance(v, dict):
            return v
        (tag,) = [k for k in v if k != "data"] or ["codec"]
        x = v.get(tag)
        if tag == "t":
            return tuple(self.value(i, where, env, own) for i in x)
        if tag == "s":
            return {self.value(i, where, env, own) for i in x}
        if tag == "d":
            return {k: self.value(i, where, env, own) for k, i in x.items()}
        if tag == "dtype":
            return getattr(torch, x)
        if tag == "device":
            return torch.device(x)
        if tag == "torch":
            return getattr(torch, x)
        if tag == "slice":
            return slice(*(self.value(i, where, env, own) for i in x))
        if tag == "ellipsis":
            return Ellipsis
        if tag == "node":
            return env[x]  # type: ignore[index]
        if tag == "own":
            return own[x]  # type: ignore[index]
        if tag == "tensor":
            return self.tensors[x]
        if tag == "weak":
            return weakref.ref(self.value(x, where, env, own))
        if tag == "fn":
            return resolve(x, "function", self.trust, where)
        if tag == "codec":
            if v["codec"] not in _CODECS:
                raise SerializationError(f"{where}: unknown value codec {v['codec']!r}")
            return _CODECS[v["codec"]][2](v["data"])
        raise SerializationError(f"{where}: unknown value tag {tag!r}")

    def module(self, spec: dict[str, Any], path: str, memo: dict[str, nn.Module]) -> nn.Module:
        if "ref" in spec:
            return memo[spec["ref"]]
        cls = resolve(spec["class"], "module", self.trust, f"module {path!r}")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        memo[path] = m
        own: dict[str, Any] = {}
        for k, p in spec["params"].items():
            m._parameters[k] = None if p is None else self.param(p["key"], p["grad"])
            own[f"p:{k}"] = m._parameters[k]
        for k, key in spec["buffers"].items():
            m._buffers[k] = None if key is None else self.tensors[key]
            own[f"b:{k}"] = m._buffers[k]
        for k, v in spec["attrs"].items():
            m.__dict__[k] = self.value(v, f"module {path!r} attribute {k!r}", own=own)
        for k, v in getattr(cls, "_qfx_transient", {}).items():
            m.__dict__[k] = v
        for k, c in spec["children"].items():
            m._modules[k] = None if c is None else self.module(c, f"{path}.{k}", memo)
        return m


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


def load_graph_module(spec: dict[str, Any], tensors: dict[str, torch.Tensor], trust: bool = False) -> fx.GraphModule:
    """Rebuild a GraphModule from :func:`dump_graph_module`'s output (no code from the file runs)."""
    if spec.get("format") != FORMAT:
        raise SerializationError(f"not a {FORMAT} graph (format={spec.get('format')!r})")
    r = _Reader(tensors, trust)
    memo: dict[str, nn.Module] = {}
    root: dict[str, Any] = {t: r.module(s, t, memo) for t, s in spec["modules"].items()}
    for t, s in spec["tensors"].items():
        if "key" in s:
            root[t] = r.param(s["key"], s["grad"]) if s["param"] else tensors[s["key"]]
        else:
            root[t] = r.value(s["value"], f"attribute {t!r}")
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nd in spec["nodes"]:
        where = f"node {nd['name']!r}"
        op = nd["op"]
        if op == "call_function":
            target = resolve(nd["target"]["fn"], "function", trust, where)
        elif op == "call_method":
            target = nd["target"]
            if not (trust or (hasattr(torch.Tensor, target) and not target.startswith("_"))):
                raise SerializationError(f"{where}: method {target!r} is not a public torch.Tensor method")
        else:
            target = nd["target"]
        args = r.value(nd["args"], where, env)
        kwargs = r.value(nd["kwargs"], where, env)
        node = g.create_node(op, target, tuple(args), kwargs, name=nd["name"])
        if node.name != nd["name"]:
            raise SerializationError(f"{where}: name clash while rebuilding (got {node.name!r})")
        env[node.name] = node
    if spec["codegen"] is not None:
        c = spec["codegen"]
        out_spec = None if c["out_spec"] is None else pytree.treespec_loads(c["out_spec"])
        g._codegen = _PyTreeCodeGen(_PyTreeInfo(c["orig_args"], pytree.treespec_loads(c["in_spec"]), out_spec))
    gm = fx.GraphModule(root, g, spec["class_name"])
    gm.training = spec["training"]  # submodules keep their own saved flags
    return gm
