"""Quantized replacements: subclasses of the float modules, and one wrapper for functions/methods.

Parametrised layers keep their float weight/bias (so they can be fine-tuned and
re-quantized) and quantize them on the fly when gradients flow; in inference
(no grad, not compiling) the quantized weight and bias are computed once and cached until the
float parameters change. Every replacement reports the float op it stands for through
``qfx_source_key()`` so registries (FLOPs, quantize rules ...) see through it, and keeps the
float op's in-place semantics (the result is written back into the mutated input).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from qfx.graph.meta import TensorPrecision
from qfx.graph.registry import INPLACE_TWIN, OpKey
from qfx.graph.serialize import call_table, fresh_module_state, method_table, register_safe
from qfx.passes.transforms.quantize.quantizers import Quantizer, make_quantizer


def _check_quantizers(m: nn.Module, names: tuple[str, ...], optional: bool = True) -> None:
    """A loaded module's quantizer attributes are Quantizer objects (``None`` where ``optional``)."""
    for k in names:
        q = m.__dict__.get(k)
        if not (isinstance(q, Quantizer) or (optional and q is None)):
            raise TypeError(f"attribute {k!r} must be a quantizer, got {type(q).__name__}")


def clone_as(cls: type[nn.Module], m: nn.Module) -> Any:
    """A ``cls`` instance holding ``m``'s attributes, parameters and buffers (shared, not copied); its hook and
    child containers are new and empty, as after ``nn.Module.__init__``."""
    q = cls.__new__(cls)
    d = fresh_module_state()
    d.update((k, v) for k, v in m.__dict__.items() if k not in d or k == "training")
    d["_parameters"].update(m._parameters)
    d["_buffers"].update(m._buffers)
    q.__dict__.update(d)
    return q


def _compiling() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class _QParam(nn.Module):
    """Base of quantized parametrised layers: data_in / weight / bias quantizers and a cache."""

    _qfx_transient: ClassVar[dict[str, Any]] = {"_cache": None}
    float_cls: ClassVar[type[nn.Module]]
    qx: Quantizer | None
    qw: Quantizer | None
    qb: Quantizer | None
    weight: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def from_float(cls, m: nn.Module, roles: dict[str, TensorPrecision]) -> _QParam:
        q = clone_as(cls, m)
        q.__dict__.update(  # plain attributes (quantizers are not modules or tensors): no Module.__setattr__
            qx=make_quantizer(roles["data_in"]) if "data_in" in roles else None,
            qw=make_quantizer(roles["weight"]) if "weight" in roles else None,
            qb=make_quantizer(roles["bias"]) if "bias" in roles else None,
            _cache=None,
        )
        return q

    def to_float(self) -> nn.Module:
        f = clone_as(self.float_cls, self)
        for k in ("qx", "qw", "qb", "_cache"):
            f.__dict__.pop(k, None)
        return f

    def qfx_source_key(self) -> OpKey:
        return self.float_cls

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight, self.bias
        qw, qb = self.qw, self.qb
        grad = torch.is_grad_enabled() and (w.requires_grad or (b is not None and b.requires_grad))
        if grad or _compiling():
            return (qw(w) if qw else w), (qb(b) if qb and b is not None else b)
        key = (w._version, w.data_ptr(), None if b is None else (b._version, b.data_ptr()))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, qw(w) if qw else w, qb(b) if qb and b is not None else b)
        return self._cache[1], self._cache[2]

    def _qx(self, x: torch.Tensor) -> torch.Tensor:
        return self.qx(x) if self.qx else x

    def _qfx_check_loaded(self) -> None:
        """Loader hook: what a saved file set is a quantizer or None (see ``graph.serialize``)."""
        _check_quantizers(self, ("qx", "qw", "qb"))

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_cache"] = None
        return d


class QLinear(_QParam, nn.Linear):
    float_cls = nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._qparams()
        return F.linear(self._qx(x), w, b)


class QConv1d(_QParam, nn.Conv1d):
    float_cls = nn.Conv1d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._qparams()
        return self._conv_forward(self._qx(x), w, b)


class QConv2d(_QParam, nn.Conv2d):
    float_cls = nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._qparams()
        return self._conv_forward(self._qx(x), w, b)


class _QBatchNorm(_QParam):
    """Batch norm in inference as hls4ml/FINN implement it: a per-channel affine map whose folded
    scale ``gamma / sqrt(var + eps)`` is the quantized "weight" and folded shift
    ``beta - mean * scale`` the quantized "bias": ``y = q(x) * q(scale) + q(shift)``.
    In training mode it normalises the quantized input with batch statistics (float affine).
    """

    _qfx_transient: ClassVar[dict[str, Any]] = {"_cache": None}

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float per-channel (scale, shift): :func:`fold_batch_norm` of this layer."""
        return fold_batch_norm(self)

    def _qaffine(self) -> tuple[torch.Tensor, torch.Tensor]:
        ps = [t for t in (self.weight, self.bias, self.running_mean, self.running_var) if t is not None]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in ps)
        if grad or _compiling():
            s, t = self.folded()
            return (self.qw(s) if self.qw else s), (self.qb(t) if self.qb else t)
        key = tuple((t._version, t.data_ptr()) for t in ps)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                s, t = self.folded()
                self._cache = (key, self.qw(s) if self.qw else s, self.qb(t) if self.qb else t)
        return self._cache[1], self._cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._qx(x)
        if self.training or self.running_mean is None:
            return self.float_cls.forward(self, x)
        s, t = self._qaffine()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * s.reshape(shape) + t.reshape(shape)


class QBatchNorm1d(_QBatchNorm, nn.BatchNorm1d):
    float_cls = nn.BatchNorm1d


class QBatchNorm2d(_QBatchNorm, nn.BatchNorm2d):
    float_cls = nn.BatchNorm2d


def fold_batch_norm(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference batch norm (float or quantized ``nn.BatchNorm1d/2d``) as a per-channel affine map:
    ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale`` (float)."""
    var, mean = m.running_var, m.running_mean
    scale = torch.rsqrt(var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    shift = -mean * scale
    if m.bias is not None:
        shift = shift + m.bias
    return scale, shift


def _write_back(dst: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """In-place semantics: the mutated input now holds the (quantized) result."""
    return dst.copy_(out)


class QReLU(nn.ReLU):
    """nn.ReLU whose non-negative output is quantized with the unsigned variant of its format."""

    float_cls = nn.ReLU

    @classmethod
    def from_float(cls, m: nn.Module, roles: dict[str, TensorPrecision]) -> QReLU:
        q = clone_as(cls, m)
        q.__dict__["qx"] = make_quantizer(roles["data_in"])
        return q

    def to_float(self) -> nn.Module:
        f = clone_as(nn.ReLU, self)
        f.__dict__.pop("qx", None)
        return f

    def qfx_source_key(self) -> OpKey:
        return nn.ReLU

    def _qfx_check_loaded(self) -> None:
        _check_quantizers(self, ("qx",), optional=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qx(F.relu(x))
        return _write_back(x, out) if self.inplace else out


class QFunction(nn.Module):
    """A quantized function or method call (add, mul, matmul, relu, F.linear, addmm ...).

    ``target``/``node_op``: the float call (kept for restoring it and for registry lookups);
    ``arg_roles``: the tensor role of each positional argument (``None``: left as is);
    ``unsigned_out``: quantize the output with the unsigned variant instead of the inputs (ReLU).
    In-place calls (``add_``, ``x += y``, ``relu_``, ``inplace=True``) compute out of place on the
    quantized values and write the result back into their first argument, as the float op would.
    """

    def __init__(
        self,
        target: OpKey,
        node_op: str,
        arg_roles: tuple[str | None, ...],
        roles: dict[str, TensorPrecision],
        unsigned_out: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        self.target = target
        self.node_op = node_op
        self.arg_roles = tuple(arg_roles)
        self.unsigned_out = unsigned_out
        self.inplace = inplace
        self.quantizers = {r: make_quantizer(p) for r, p in roles.items()}

    def qfx_source_key(self) -> OpKey:
        return self.target

    def _qfx_check_loaded(self) -> None:
        """Loader hook: the call is a function of the call table or a method of the method table, with
        typed roles and quantizers; anything else a file names is refused before it can run."""
        d = self.__dict__
        op, t = d.get("node_op"), d.get("target")
        if op == "call_method":
            if not (isinstance(t, str) and t in method_table()):
                raise ValueError(f"method {str(t)[:80]!r} is not on the table of tensor methods")
        elif op == "call_function":
            if not any(f is t for f in call_table().values()):
                raise ValueError(f"target {str(t)[:80]!r} is not a function of the call table")
        else:
            raise ValueError(f"node_op {str(op)[:40]!r} is not call_function or call_method")
        roles = d.get("arg_roles")
        if not (isinstance(roles, tuple) and all(r is None or isinstance(r, str) for r in roles)):
            raise TypeError("arg_roles must be a tuple of role names or None")
        if not all(isinstance(d.get(k), bool) for k in ("unsigned_out", "inplace")):
            raise TypeError("unsigned_out and inplace must be booleans")
        qs = d.get("quantizers")
        if not (isinstance(qs, dict) and all(isinstance(q, Quantizer) for q in qs.values())):
            raise TypeError("quantizers must map role names to quantizers")

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        t = self.target
        if self.inplace:
            t = INPLACE_TWIN.get(t, t)
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        if self.node_op == "call_method":
            return getattr(args[0], t)(*args[1:], **kwargs)
        return t(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.unsigned_out:
            out = self.quantizers["data_in"](self._call(args, kwargs))
        else:
            q = self.quantizers
            qargs = tuple(
                q[r](a) if r in q and isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a, r in zip(args, (self.arg_roles + (None,) * len(args))[: len(args)], strict=True)  # F.linear(x,w)
            )
            out = self._call(qargs, kwargs)
        return _write_back(args[0], out) if self.inplace else out

    def extra_repr(self) -> str:
        name = self.target if isinstance(self.target, str) else getattr(self.target, "__name__", self.target)
        qs = ", ".join(f"{r}={q.precision}" for r, q in self.quantizers.items())
        return f"{'.' if self.node_op == 'call_method' else ''}{name}, {qs}{', inplace' if self.inplace else ''}"


register_safe(QLinear, QConv1d, QConv2d, QBatchNorm1d, QBatchNorm2d, QReLU, QFunction)
