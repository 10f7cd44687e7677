"""Quantized replacements: modules for Linear/Conv, one wrapper module for functions.

Parametrised layers keep their float weight/bias (so they can be fine-tuned and
re-quantized) and quantize them on the fly when gradients flow; in inference
(no grad) the quantized weight and bias are computed once and cached until the
float parameters change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from graph.meta import TensorPrecision
from passes.transforms.quantize.quantizers import Quantizer, make_quantizer


def clone_as(cls: type[nn.Module], m: nn.Module) -> Any:
    """A ``cls`` instance holding ``m``'s attributes, parameters and buffers (shared, not copied)."""
    q = cls.__new__(cls)
    nn.Module.__init__(q)
    for k, v in m.__dict__.items():
        if k not in q.__dict__ or k == "training":
            q.__dict__[k] = v
    q._parameters.update(m._parameters)
    q._buffers.update(m._buffers)
    return q


class _QParam:
    """Mixin: quantizers for data_in / weight / bias and a cache of quantized parameters."""

    qx: Quantizer | None
    qw: Quantizer | None
    qb: Quantizer | None
    weight: torch.Tensor
    bias: torch.Tensor | None

    def _setup(self, roles: dict[str, TensorPrecision]) -> None:
        self.qx = make_quantizer(roles["data_in"]) if "data_in" in roles else None
        self.qw = make_quantizer(roles["weight"]) if "weight" in roles else None
        self.qb = make_quantizer(roles["bias"]) if "bias" in roles else None
        self._cache: tuple[Any, torch.Tensor, torch.Tensor | None] | None = None

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight, self.bias
        if torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad)):
            return (self.qw(w) if self.qw else w), (self.qb(b) if self.qb and b is not None else b)
        key = (w._version, w.data_ptr(), None if b is None else (b._version, b.data_ptr()))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                qw = self.qw(w) if self.qw else w
                qb = self.qb(b) if self.qb and b is not None else b
            self._cache = (key, qw, qb)
        return self._cache[1], self._cache[2]

    def _qx(self, x: torch.Tensor) -> torch.Tensor:
        return self.qx(x) if self.qx else x

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)  # type: ignore[attr-defined]
        d["_cache"] = None
        return d


class QLinear(_QParam, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._qparams()
        return F.linear(self._qx(x), w, b)


class QConv1d(_QParam, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._qparams()
        return self._conv_forward(self._qx(x), w, b)


class QConv2d(_QParam, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._qparams()
        return self._conv_forward(self._qx(x), w, b)


def quantized_module(cls: type[nn.Module]) -> Callable[[nn.Module, dict], nn.Module]:
    def build(m: nn.Module, roles: dict[str, TensorPrecision]) -> nn.Module:
        q = clone_as(cls, m)
        q._setup(roles)
        return q

    return build


class QFunction(nn.Module):
    """Wraps a function/method (add, mul, matmul, relu ...) and quantizes its tensor inputs.

    ``unsigned_out``: quantize the output with the unsigned variant instead of the
    inputs (used for ReLU, whose output is non-negative).
    """

    def __init__(self, fn: Callable[..., Any], roles: dict[str, TensorPrecision], unsigned_out: bool) -> None:
        super().__init__()
        self.fn = fn
        self.unsigned_out = unsigned_out
        p = roles["data_in"]
        if unsigned_out and p.fmt == "integer":
            p = TensorPrecision("uinteger", p.width, p.frac)
        self.qx = make_quantizer(p)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.unsigned_out:
            return self.qx(self.fn(*args, **kwargs))
        args = tuple(self.qx(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__name__', self.fn)}, {self.qx}"
