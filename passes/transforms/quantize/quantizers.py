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

import hashlib
import math
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


def round_codes(t: torch.Tensor, mode: str = "half_even") -> torch.Tensor:
    """``t`` rounded in place to integers: half to even, half up (towards +inf, ap_fixed AP_RND) or truncated
    (towards -inf, AP_TRN)."""
    if mode == "half_even":
        return t.round_()
    if mode == "half_up":
        return t.add_(0.5).floor_()
    if mode == "trunc":
        return t.floor_()
    raise ValueError(f"round mode {mode!r}; allowed: half_even, half_up, trunc")


def fit_codes(t: torch.Tensor, lo: Any, hi: Any, mode: str = "saturate") -> torch.Tensor:
    """Integer codes ``t`` kept in ``[lo, hi]`` in place: saturated, or wrapped modulo ``hi - lo + 1``."""
    if mode == "saturate":
        return t.clamp_(lo, hi)
    if mode == "wrap":
        span = hi - lo + 1
        return t.sub_(lo).remainder_(span).add_(lo)
    raise ValueError(f"overflow mode {mode!r}; allowed: saturate, wrap")


def integer_quantize(
    x: torch.Tensor, width: int, frac: int, signed: bool = True, rnd: str = "half_even", overflow: str = "saturate"
) -> torch.Tensor:
    """Fixed-point values of ``x`` (no gradient handling; see :class:`Quantizer`)."""
    scale = float(2**frac)
    lo, hi = (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if signed else (0, 2**width - 1)
    t = round_codes(x * scale, rnd)
    return fit_codes(t, lo, hi, overflow).div_(scale)


def map_quantize(
    x: torch.Tensor, widths: torch.Tensor, fracs: torch.Tensor, signed: bool, rnd: str, overflow: str
) -> torch.Tensor:
    """Fixed-point values of ``x`` with a width and frac per element (``widths``/``fracs`` broadcast against the
    trailing dimensions of ``x``); width 0 is the value 0 (a pruned element)."""
    w = widths.to(x.device, x.dtype)
    scale = torch.exp2(fracs.to(x.device, x.dtype))
    lo = -torch.exp2(w - 1) if signed else torch.zeros_like(w)
    hi = (torch.exp2(w - 1) if signed else torch.exp2(w)) - 1
    t = round_codes(x * scale, rnd)
    t = torch.minimum(torch.maximum(t, lo), hi) if overflow == "saturate" else (t - lo).remainder(hi - lo + 1) + lo
    return torch.where(w > 0, t / scale, torch.zeros((), dtype=x.dtype, device=x.device))


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


def _int_fn(p: TensorPrecision, signed: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    w, f, r, o = p.width, p.frac or 0, p.round, p.overflow
    return lambda x: integer_quantize(x, w, f, signed, r, o)


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
    values=lambda p: _int_fn(p, True),
    label=lambda p: f"int{p.width}.{p.frac}",
    config=IntegerQ,
    param="frac_width",
    param_range=_integer_range,
    param_na=True,
    unsigned="uinteger",
    codes=lambda w: (-(2 ** (w - 1)), 2 ** (w - 1) - 1),
)
_UINTEGER = NumberFormat("uinteger", values=lambda p: _int_fn(p, False),
                         label=lambda p: f"uint{p.width}.{p.frac}", codes=lambda w: (0, 2**w - 1))  # fmt: skip
_MINIFLOAT = NumberFormat("minifloat", values=lambda p: _mf_fn(p.width, p.frac or 0, None),
                          label=lambda p: f"minifloat{p.width}e{p.frac}", config=MinifloatQ,
                          param="exponent_width", param_range=_exponent_range)  # fmt: skip
for _f in (_INTEGER, _UINTEGER, _MINIFLOAT):
    register_format(_f)


MAX_MAP_ELEMENTS = 1 << 22  # per-element maps a saved graph may hold (4M widths and as many fracs)
MAP_FRAC_RANGE = (-16, 32)  # per-element fracs: a negative frac keeps multiples of 2, 4 ... (large weights)


class MapQuantizer(Quantizer):
    """Fixed point with a width and frac per channel or element (``widths``/``fracs``: int8 tensors that
    broadcast against the trailing dimensions of what they quantize; width 0 prunes the element to 0).
    Its :attr:`precision` is the enclosing per-tensor format (every value it produces is exact there) with
    ``granularity`` and a digest of the maps; exports whose format cannot hold maps use the enclosing format
    for constants (the same values) and refuse maps on activations."""

    def __init__(
        self, widths: torch.Tensor, fracs: torch.Tensor, signed: bool = True, rnd: str = "half_even",
        overflow: str = "saturate", granularity: str = "element",
    ) -> None:  # fmt: skip
        widths = torch.as_tensor(widths).to(torch.int8).contiguous()
        fracs = torch.as_tensor(fracs).to(torch.int8).contiguous()
        if widths.shape != fracs.shape:
            raise ValueError(f"widths {tuple(widths.shape)} and fracs {tuple(fracs.shape)} differ in shape")
        if widths.numel() > MAX_MAP_ELEMENTS or widths.numel() == 0:
            raise ValueError(f"a map of {widths.numel():,} elements (allowed 1..{MAX_MAP_ELEMENTS:,})")
        if int(widths.min()) < 0 or int(widths.max()) > 32:
            raise ValueError("per-element widths must be in 0..32")
        lo, hi = MAP_FRAC_RANGE
        if int(fracs.min()) < lo or int(fracs.max()) > hi:
            raise ValueError(f"per-element fracs must be in {lo}..{hi}")
        self.widths, self.fracs, self.signed = widths, fracs, signed
        live = widths > 0
        k = int(signed)
        f_max = max(int(fracs[live].max()), 0) if live.any() else 0
        i_max = max(int((widths - fracs - k)[live].max()), 0) if live.any() else 0
        width = max(k + i_max + f_max, 1 + k)
        if width > 32:
            raise ValueError(
                f"the maps need {width} bits in one format (integer bits {i_max} + frac {f_max}); at most 32"
            )
        h = hashlib.blake2b(digest_size=16)
        for t in (widths, fracs):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        p = TensorPrecision(
            "integer" if signed else "uinteger", width, f_max, rnd, overflow, granularity, h.hexdigest()
        )
        check_precision(p)
        super().__init__(lambda x: map_quantize(x, self.widths, self.fracs, signed, rnd, overflow), p)

    def bits(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The width of every element of a tensor of ``shape`` (the maps broadcast)."""
        return self.widths.to(torch.int64).expand(shape) if shape else self.widths.to(torch.int64)

    def __reduce__(self) -> Any:
        p = self.precision
        return (MapQuantizer, (self.widths, self.fracs, self.signed, p.round, p.overflow, p.granularity))


_QUANTIZERS: dict[tuple[Any, ...], Quantizer] = {}
_KEYS = {"fmt", "width", "frac", "round", "overflow", "granularity", "maps", "shape", "widths", "fracs"}


def _encode_quantizer(q: Quantizer) -> dict[str, Any]:
    d = q.precision.as_dict()
    if isinstance(q, MapQuantizer):
        d.update(shape=list(q.widths.shape), widths=q.widths.flatten().tolist(), fracs=q.fracs.flatten().tolist())
    return d


def _small_ints(v: Any, n: int, what: str) -> torch.Tensor:
    if not (isinstance(v, list) and len(v) == n and all(type(i) is int and -128 <= i < 128 for i in v)):
        raise ValueError(f"a map quantizer's {what} is a list of {n} small integers")
    return torch.tensor(v, dtype=torch.int8)


def _decode_quantizer(d: Any) -> Quantizer:
    """A saved quantizer (untrusted data): ``{fmt, width, frac}`` (and modes) with a valid precision, or a map
    quantizer whose maps (``shape``, ``widths``, ``fracs``) give exactly the stated precision. Per-tensor
    quantizers are stateless, so one object serves every equal precision."""
    if (
        not isinstance(d, dict)
        or not {"fmt", "width", "frac"} <= set(d) <= _KEYS
        or type(d["fmt"]) is not str
        or type(d["width"]) is not int
        or not (d["frac"] is None or type(d["frac"]) is int)
        or not all(type(d.get(k, "")) is str for k in ("round", "overflow", "granularity"))
    ):
        raise ValueError(f"a quantizer is {{fmt: str, width: int, frac: int[, round, overflow]}}, got {str(d)[:80]}")
    fields = {k: d[k] for k in ("fmt", "width", "frac", "round", "overflow", "granularity", "maps") if k in d}
    p = check_precision(TensorPrecision(**fields))
    if p.granularity == "tensor":
        if set(d) & {"shape", "widths", "fracs"}:
            raise ValueError("a per-tensor quantizer has no maps")
        if p.key() not in _QUANTIZERS:
            _QUANTIZERS[p.key()] = make_quantizer(p)
        return _QUANTIZERS[p.key()]
    shape = d.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(type(i) is int and i >= 1 for i in shape)):
        raise ValueError("a map quantizer's shape is a list of at most 8 positive integers")
    n = math.prod(shape)
    if n > MAX_MAP_ELEMENTS:
        raise ValueError(f"a map of {n:,} elements (allowed {MAX_MAP_ELEMENTS:,})")
    w, f = (_small_ints(d.get(k), n, k).reshape(shape) for k in ("widths", "fracs"))
    q = MapQuantizer(w, f, p.fmt == "integer", p.round, p.overflow, p.granularity)
    if q.precision != p:
        raise ValueError(f"the maps give precision {q.precision}, not the stated {p}")
    return q


register_codec("quantizer", Quantizer, _encode_quantizer, _decode_quantizer)
