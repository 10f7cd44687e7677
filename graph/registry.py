"""Op registries keyed by the op target, and one ``op_key``/``op_type`` normaliser.

The key of a node is its module class (``call_module``), function object
(``call_function``) or method name string (``call_method``). ``op_type`` maps
that key to a short canonical name (``"linear"``, ``"conv2d"``, ``"add"`` ...)
used by configs, reports and by-type quantization.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

OpKey = type | Callable[..., Any] | str
T = TypeVar("T")

# canonical op-type names for every target we know; aliases share a name
_TYPE_NAMES: dict[OpKey, str] = {
    nn.Linear: "linear",
    F.linear: "linear",
    nn.Conv1d: "conv1d",
    F.conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    F.conv2d: "conv2d",
    nn.ConvTranspose2d: "conv_transpose2d",
    F.conv_transpose2d: "conv_transpose2d",
    nn.BatchNorm1d: "batch_norm1d",
    nn.BatchNorm2d: "batch_norm2d",
    F.batch_norm: "batch_norm",
    nn.LayerNorm: "layer_norm",
    F.layer_norm: "layer_norm",
    nn.ReLU: "relu",
    F.relu: "relu",
    torch.relu: "relu",
    "relu": "relu",
    nn.GELU: "gelu",
    F.gelu: "gelu",
    nn.Softmax: "softmax",
    F.softmax: "softmax",
    torch.softmax: "softmax",
    "softmax": "softmax",
    operator.add: "add",
    torch.add: "add",
    "add": "add",
    operator.iadd: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    "sub": "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    "mul": "mul",
    operator.truediv: "div",
    torch.div: "div",
    "div": "div",
    operator.matmul: "matmul",
    torch.matmul: "matmul",
    "matmul": "matmul",
    torch.bmm: "bmm",
    "bmm": "bmm",
    nn.MaxPool1d: "max_pool1d",
    nn.MaxPool2d: "max_pool2d",
    F.max_pool2d: "max_pool2d",
    nn.AvgPool1d: "avg_pool1d",
    nn.AvgPool2d: "avg_pool2d",
    F.avg_pool2d: "avg_pool2d",
    nn.AdaptiveAvgPool1d: "adaptive_avg_pool1d",
    nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d",
    nn.Embedding: "embedding",
    F.embedding: "embedding",
    nn.Flatten: "flatten",
    torch.flatten: "flatten",
    "flatten": "flatten",
    nn.Unflatten: "unflatten",
    nn.Dropout: "dropout",
    F.dropout: "dropout",
    nn.Identity: "identity",
    "view": "view",
    "reshape": "reshape",
    torch.reshape: "reshape",
    "transpose": "transpose",
    torch.transpose: "transpose",
    "permute": "permute",
    "contiguous": "contiguous",
    "size": "size",
    "mean": "mean",
    torch.mean: "mean",
    operator.getitem: "getitem",
    getattr: "getattr",
}


def op_key(node: fx.Node, modules: dict[str, nn.Module]) -> OpKey:
    """Normalised target of ``node``: module class, function object or method name."""
    if node.op == "call_module":
        return type(modules[node.target])
    if node.op in ("call_function", "call_method"):
        return node.target
    return node.op  # placeholder / get_attr / output


def op_type(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Canonical short name of the node's op (``"linear"``, ``"add"`` ...)."""
    key = op_key(node, modules)
    try:
        return _TYPE_NAMES[key]
    except (KeyError, TypeError):
        pass
    if isinstance(key, type):
        return key.__name__.lower()
    if isinstance(key, str):
        return key
    return getattr(key, "__name__", str(key))


def target_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Readable target: ``torch.nn.Linear``, ``operator.add``, ``.view`` ..."""
    key = op_key(node, modules)
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
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
                if k in self._rules:
                    raise ValueError(f"{self.concern}: a rule for {k!r} is already registered")
                self._rules[k] = rule
            return rule

        return deco

    def get(self, key: OpKey) -> T | None:
        try:
            return self._rules.get(key)
        except TypeError:  # unhashable target
            return None

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def keys(self) -> Iterable[OpKey]:
        return self._rules.keys()
