"""Number formats. Each quantizer maps float tensors to the values representable in its format.

integer (fixed point, MASE semantics): width w, frac f; q(x) = clamp(round_half_even(x*2^f),
    -2^(w-1), 2^(w-1)-1) / 2^f — equal value for value to
    ``torch.fake_quantize_per_tensor_affine(x, 2**-f, 0, -2**(w-1), 2**(w-1)-1)``.
    The unsigned variant (ReLU outputs) clamps to [0, 2^w - 1].
minifloat (MASE ``minifloat_denorm``): 1 sign bit, e exponent bits with bias b (default
    2^(e-1)-1), m = w-1-e mantissa bits, subnormals, no inf/NaN codes; round half to even,
    saturate at (2 - 2^-m) * 2^(2^e-1-b). e=5, m=10 gives float16's values within its range.
Gradients are straight-through (identity) so quantized graphs can be fine-tuned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from qfx.graph.meta import TensorPrecision, check_precision
from qfx.graph.serialize import register_codec
from qfx.passes.transforms.quantize.config import IntegerQ, MinifloatQ
from qfx.passes.transforms.quantize.formats import NumberFormat, get_format, register_format


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g, None


def integer_quantize(x: torch.Tensor, width: int, frac: int, signed: bool = True) -> torch.Tensor:
    """Fixed-point values of ``x`` (no gradient handling; see :class:`IntegerQuantizer`)."""
    scale = float(2**frac)
    lo, hi = (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if signed else (0, 2**width - 1)
    t = x * scale
    t.round_()  # round half to even
    t.clamp_(lo, hi)
    return t.div_(scale)


def minifloat_quantize(
    x: torch.Tensor, width: int, exponent_width: int, exponent_bias: int | None = None
) -> torch.Tensor:
    """Minifloat values of ``x`` with subnormals and saturation (no inf/NaN encodings)."""
    m = width - 1 - exponent_width
    if m < 0:
        raise ValueError(f"minifloat width {width} < 1 + exponent_width {exponent_width}")
    bias = 2 ** (exponent_width - 1) - 1 if exponent_bias is None else exponent_bias
    max_exp = 2**exponent_width - 1 - bias
    min_exp = 1 - bias
    xf = x.float()
    a = xf.abs()
    e = torch.floor(torch.log2(a.clamp_min(torch.finfo(torch.float32).tiny)))
    e = e.clamp(min_exp, max_exp)
    step = torch.exp2(e - m)
    q = torch.round(a / step) * step
    q = q.clamp_max(min((2 - 2.0**-m) * 2.0**max_exp, torch.finfo(torch.float32).max))
    return (torch.sign(xf) * q).to(x.dtype)


class Quantizer:
    """A configured format: call it on a tensor; ``precision`` describes it for metadata."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], precision: TensorPrecision) -> None:
        self.fn = fn
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _STE.apply(x, self.fn)
        return self.fn(x)

    def __repr__(self) -> str:
        return f"Quantizer({self.precision})"

    def __reduce__(self) -> Any:  # picklable through its precision
        return (make_quantizer, (self.precision,))


def _int_fn(w: int, f: int, signed: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: integer_quantize(x, w, f, signed)


def _mf_fn(w: int, e: int, b: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: minifloat_quantize(x, w, e, b)


def make_quantizer(p: TensorPrecision) -> Quantizer:
    """Quantizer for a precision record (``fmt`` must be a registered format)."""
    return Quantizer(get_format(p.fmt).values(p), p)


def _integer_range(width: int) -> tuple[int, int]:
    return 0, width


def _exponent_range(width: int) -> tuple[int, int]:
    return 1, width - 1


_INTEGER = NumberFormat(
    "integer",
    values=lambda p: _int_fn(p.width, p.frac or 0, True),
    label=lambda p: f"int{p.width}.{p.frac}",
    config=IntegerQ,
    param="frac_width",
    param_range=_integer_range,
    param_na=True,
    unsigned="uinteger",
    codes=lambda w: (-(2 ** (w - 1)), 2 ** (w - 1) - 1),
)
_UINTEGER = NumberFormat("uinteger", values=lambda p: _int_fn(p.width, p.frac or 0, False),
                         label=lambda p: f"uint{p.width}.{p.frac}", codes=lambda w: (0, 2**w - 1))  # fmt: skip
_MINIFLOAT = NumberFormat("minifloat", values=lambda p: _mf_fn(p.width, p.frac or 0, None),
                          label=lambda p: f"minifloat{p.width}e{p.frac}", config=MinifloatQ,
                          param="exponent_width", param_range=_exponent_range)  # fmt: skip
for _f in (_INTEGER, _UINTEGER, _MINIFLOAT):
    register_format(_f)


_QUANTIZERS: dict[tuple[str, int, int | None], Quantizer] = {}


def _decode_quantizer(d: Any) -> Quantizer:
    """A saved quantizer (untrusted data): exactly ``{fmt, width, frac}`` with a valid precision;
    quantizers are stateless, so one object serves every equal precision."""
    if (
        not isinstance(d, dict)
        or set(d) != {"fmt", "width", "frac"}
        or type(d["fmt"]) is not str
        or type(d["width"]) is not int
        or not (d["frac"] is None or type(d["frac"]) is int)
    ):
        raise ValueError(f"a quantizer is {{fmt: str, width: int, frac: int}}, got {str(d)[:80]}")
    key = (d["fmt"], d["width"], d["frac"])
    if key not in _QUANTIZERS:
        _QUANTIZERS[key] = make_quantizer(check_precision(TensorPrecision(*key)))
    return _QUANTIZERS[key]


register_codec(
    "quantizer",
    Quantizer,
    lambda q: {"fmt": q.precision.fmt, "width": q.precision.width, "frac": q.precision.frac},
    lambda d: _decode_quantizer(d),
)
