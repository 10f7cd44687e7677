"""Op registries keyed by the op target, and the one ``lookup`` every registry uses.

The key of a node is its module class (``call_module``), function object
(``call_function``) or method name string (``call_method``); placeholder / get_attr /
output nodes use their ``op`` string. :func:`source_key` sees through quantized
replacements (a module exposing ``qfx_source_key()``), so every registry finds the
float op's rule on a transformed graph. Module classes are matched through their MRO.

``OP_TYPES`` names each op once with all its aliases (module class, functions, method
names, in-place forms); ``op_type`` maps a key to that canonical name (``"linear"``,
``"conv2d"``, ``"add"`` ...) used by configs, reports and by-type quantization.
Registries can register by op type (``register_op("add")``: every alias at once).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

OpKey = type | Callable[..., Any] | str
T = TypeVar("T")

# canonical op type -> every target that performs it (each alias written once)
OP_TYPES: dict[str, tuple[OpKey, ...]] = {
    "linear": (nn.Linear, F.linear, torch.addmm, "addmm"),
    "conv1d": (nn.Conv1d, F.conv1d),
    "conv2d": (nn.Conv2d, F.conv2d),
    "conv3d": (nn.Conv3d, F.conv3d),
    "conv_transpose1d": (nn.ConvTranspose1d, F.conv_transpose1d),
    "conv_transpose2d": (nn.ConvTranspose2d, F.conv_transpose2d),
    "batch_norm1d": (nn.BatchNorm1d,),
    "batch_norm2d": (nn.BatchNorm2d,),
    "batch_norm": (F.batch_norm,),
    "layer_norm": (nn.LayerNorm, F.layer_norm),
    "group_norm": (nn.GroupNorm, F.group_norm),
    "relu": (nn.ReLU, F.relu, torch.relu, "relu", torch.relu_, "relu_"),
    "relu6": (nn.ReLU6, F.relu6),
    "hardtanh": (nn.Hardtanh, F.hardtanh),
    "gelu": (nn.GELU, F.gelu),
    "silu": (nn.SiLU, F.silu),
    "sigmoid": (nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid"),
    "tanh": (nn.Tanh, torch.tanh, F.tanh, "tanh"),
    "softmax": (nn.Softmax, F.softmax, torch.softmax, "softmax"),
    "add": (operator.add, torch.add, "add", operator.iadd, "add_"),
    "sub": (operator.sub, torch.sub, "sub", operator.isub, "sub_"),
    "mul": (operator.mul, torch.mul, "mul", operator.imul, "mul_"),
    "div": (operator.truediv, torch.div, "div", operator.itruediv, "div_"),
    "neg": (operator.neg, torch.neg, "neg"),
    "floordiv": (operator.floordiv, torch.floor_divide, "floor_divide"),
    "sqrt": (math.sqrt, torch.sqrt, "sqrt"),
    "matmul": (operator.matmul, torch.matmul, "matmul", torch.mm, "mm"),
    "bmm": (torch.bmm, "bmm"),
    "baddbmm": (torch.baddbmm, "baddbmm"),
    "einsum": (torch.einsum,),
    "scaled_dot_product_attention": (F.scaled_dot_product_attention,),
    "multihead_attention": (nn.MultiheadAttention,),
    "lstm": (nn.LSTM,),
    "gru": (nn.GRU,),
    "max_pool1d": (nn.MaxPool1d, F.max_pool1d),
    "max_pool2d": (nn.MaxPool2d, F.max_pool2d),
    "avg_pool1d": (nn.AvgPool1d, F.avg_pool1d),
    "avg_pool2d": (nn.AvgPool2d, F.avg_pool2d),
    "adaptive_avg_pool1d": (nn.AdaptiveAvgPool1d, F.adaptive_avg_pool1d),
    "adaptive_avg_pool2d": (nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d),
    "mean": (torch.mean, "mean"),
    "sum": (torch.sum, "sum"),
    "embedding": (nn.Embedding, F.embedding),
    "flatten": (nn.Flatten, torch.flatten, "flatten"),
    "unflatten": (nn.Unflatten, "unflatten"),
    "dropout": (nn.Dropout, F.dropout),
    "identity": (nn.Identity,),
    "view": ("view",),
    "reshape": ("reshape", torch.reshape),
    "transpose": ("transpose", torch.transpose, "t", torch.t),
    "permute": ("permute", torch.permute),
    "contiguous": ("contiguous",),
    "squeeze": ("squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze),
    "expand": ("expand", "expand_as", "repeat"),
    "cat": (torch.cat, torch.concat, torch.stack),
    "split": (torch.split, "split", torch.chunk, "chunk", "unbind", torch.unbind),
    "masked_fill": ("masked_fill", "masked_fill_", torch.masked_fill),
    "triu": (torch.triu, "triu", torch.tril, "tril"),
    "arange": (torch.arange, torch.ones, torch.zeros, torch.full, torch.ones_like, torch.zeros_like, torch.full_like),
    "type_as": ("to", "type_as", "float", "bool"),
    "size": ("size", "dim"),
    "getitem": (operator.getitem,),
    "getattr": (getattr,),
}

# what op types are, said once: "view" (no arithmetic: the same values seen through another shape, order or
# dtype; hardware metrics follow parameters through them), "reshape" (the views that keep element order,
# which every export can express as a batch-first reshape), "mac" (multiply-accumulates: hardware cost
# metrics must have a cost rule for the IR op they lower to, else they raise naming the node), "elementwise"
# (arithmetic per element), "activation" (a nonlinearity per element)
OP_TRAITS: dict[str, frozenset[str]] = {
    "view": frozenset(
        {
            "transpose",
            "view",
            "reshape",
            "permute",
            "contiguous",
            "type_as",
            "squeeze",
            "expand",
            "flatten",
            "unflatten",
        }
    ),  # fmt: skip
    "reshape": frozenset({"view", "reshape", "flatten", "unflatten", "contiguous"}),
    "mac": frozenset(
        {
            "linear",
            "conv1d",
            "conv2d",
            "conv3d",
            "conv_transpose1d",
            "conv_transpose2d",
            "batch_norm1d",
            "batch_norm2d",
            "batch_norm",
            "matmul",
            "bmm",
            "baddbmm",
            "einsum",
            "scaled_dot_product_attention",
            "multihead_attention",
            "lstm",
            "gru",
        }
    ),  # fmt: skip
    "elementwise": frozenset({"add", "sub", "mul", "div", "neg", "floordiv", "sqrt"}),
    "activation": frozenset({"relu", "relu6", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "softmax"}),
}


def has_trait(op_type: str, trait: str) -> bool:
    """Whether ``op_type`` was declared with ``trait`` (see :data:`OP_TRAITS`; read at call time, so op types
    registered later count)."""
    return op_type in OP_TRAITS[trait]


# in-place target -> its out-of-place twin (quantized ops compute out of place, then write back)
INPLACE_TWIN: dict[OpKey, OpKey] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    "add_": "add",
    "sub_": "sub",
    "mul_": "mul",
    "div_": "div",
    "relu_": "relu",
    torch.relu_: torch.relu,
    "masked_fill_": "masked_fill",
}

_TYPE_OF: dict[OpKey, str] = {}
for _t, _keys in OP_TYPES.items():
    for _k in _keys:
        if _k in _TYPE_OF and _TYPE_OF[_k] != _t:
            raise ValueError(f"op target {_k!r} is listed under two op types: {_TYPE_OF[_k]!r} and {_t!r}")
        _TYPE_OF[_k] = _t

_REGISTERED: list[OpKey] = []


def registered_ops() -> tuple[OpKey, ...]:
    """The targets added by :func:`register_op_type` (tracing keeps their classes and functions as leaves)."""
    return tuple(_REGISTERED)


# called after OP_TYPES changes (the saved-graph loader's call and method tables are derived from it)
ON_OP_TYPES_CHANGE: list[Callable[[], None]] = []


def register_op_type(name: str, *keys: OpKey, traits: Iterable[str] = ()) -> None:
    """A new op type with every target that performs it (module class, functions, method names) and its traits
    (``"mac"``, ``"elementwise"``, ``"activation"``, ``"view"``; see :data:`OP_TRAITS`): the one registration
    the other tables (``register_op(name)`` of FLOPs, quantization, the IR) are keyed by."""
    if not name.isidentifier() or name in OP_TYPES:
        raise ValueError(f"op type {name!r} is {'already registered' if name in OP_TYPES else 'not an identifier'}")
    traits = tuple(traits)
    unknown = [t for t in traits if t not in OP_TRAITS or t == "reshape"]
    if unknown:
        allowed = ", ".join(t for t in OP_TRAITS if t != "reshape")
        raise ValueError(f"op type {name!r}: unknown trait(s) {unknown}; allowed: {allowed}")
    for k in keys:
        if not isinstance(k, (type, str)) and not callable(k):
            raise TypeError(f"op type {name!r}: key {k!r} is not a module class, function or method name")
        if k in _TYPE_OF:
            raise ValueError(f"op target {k!r} is already listed under op type {_TYPE_OF[k]!r}")
    OP_TYPES[name] = tuple(keys)
    for t in traits:
        OP_TRAITS[t] = OP_TRAITS[t] | {name}
    _TYPE_OF.update(dict.fromkeys(keys, name))
    _REGISTERED.extend(keys)
    for fn in ON_OP_TYPES_CHANGE:
        fn()


def source_key(node: fx.Node, modules: dict[str, nn.Module]) -> OpKey:
    """Target the node performs: module class, function object or method name.

    A quantized replacement module reports the float op it stands for (its
    ``qfx_source_key()``), so lookups give the same answer before and after a transform.
    """
    if node.op == "call_module":
        m = modules[node.target]
        src = getattr(m, "qfx_source_key", None)
        return src() if callable(src) else type(m)
    if node.op in ("call_function", "call_method"):
        return node.target
    return node.op  # placeholder / get_attr / output


def op_key(node: fx.Node, modules: dict[str, nn.Module]) -> OpKey:
    """Alias of :func:`source_key` (the normalised key every registry is queried with)."""
    return source_key(node, modules)


def inplace_call(target: Any, kwargs: dict[str, Any]) -> bool:
    """True when calling ``target`` (function or method name) with ``kwargs`` mutates its first argument."""
    try:
        twin = target in INPLACE_TWIN
    except TypeError:
        twin = False
    return twin or kwargs.get("inplace") is True


def is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when the node's op (float, or its quantized form) writes into its first argument."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    return inplace_call(node.target, node.kwargs)


def _candidates(key: OpKey) -> Iterable[OpKey]:
    if isinstance(key, type):
        return key.__mro__
    return (key,)


def op_type(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Canonical short name of the node's op (``"linear"``, ``"add"`` ...)."""
    key = source_key(node, modules)
    for k in _candidates(key):
        try:
            t = _TYPE_OF.get(k)
        except TypeError:
            t = None
        if t is not None:
            return t
    if isinstance(key, type):
        return key.__name__.lower()
    if isinstance(key, str):
        return key
    return getattr(key, "__name__", str(key))


def target_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Readable target of what the node runs: ``torch.nn.Linear``, ``operator.add``, ``.view`` ...

    For a quantized replacement this is the replacement's class (what actually runs).
    """
    if node.op == "call_module":
        cls = type(modules[node.target])
        return f"{cls.__module__}.{cls.__qualname__}"
    key = node.target if node.op in ("call_function", "call_method") else node.op
    if node.op == "call_method":
        return f".{key}"
    if callable(key):
        mod = getattr(key, "__module__", None) or "builtins"
        return f"{mod}.{getattr(key, '__name__', repr(key))}"
    return str(key)


class OpRegistry(Generic[T]):
    """Rules keyed by op target; one registry per concern (FLOPs, quantization ...)."""

    def __init__(self, concern: str) -> None:
        self.concern = concern
        self._rules: dict[OpKey, T] = {}

    def register(self, *keys: OpKey) -> Callable[[T], T]:
        """Decorator registering ``rule`` for every key; a duplicate key raises."""

        def deco(rule: T) -> T:
            for k in keys:
                if not isinstance(k, (type, str)) and not callable(k):
                    raise TypeError(f"{self.concern}: key {k!r} is not a module class, function or method name")
                if k in self._rules:
                    raise ValueError(f"{self.concern}: a rule for {k!r} is already registered")
                self._rules[k] = rule
            return rule

        return deco

    def register_op(self, *types: str) -> Callable[[T], T]:
        """Decorator registering ``rule`` for every alias of the named op types (see ``OP_TYPES``)."""
        unknown = [t for t in types if t not in OP_TYPES]
        if unknown:
            raise KeyError(f"{self.concern}: unknown op type(s) {unknown}; known: {', '.join(OP_TYPES)}")
        return self.register(*dict.fromkeys(k for t in types for k in OP_TYPES[t]))

    def get(self, key: OpKey) -> T | None:
        try:
            return self._rules.get(key)
        except TypeError:  # unhashable target
            return None

    def lookup(self, node: fx.Node, modules: dict[str, nn.Module]) -> T | None:
        """The rule for what ``node`` performs (quantized wrappers unwrapped, module MRO walked)."""
        for k in _candidates(source_key(node, modules)):
            rule = self.get(k)
            if rule is not None:
                return rule
        return None

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def keys(self) -> Iterable[OpKey]:
        return self._rules.keys()

    def copy(self) -> OpRegistry[T]:
        new: OpRegistry[T] = OpRegistry(self.concern)
        new._rules = dict(self._rules)
        return new
