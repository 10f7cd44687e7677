"""Number-format registry: one :class:`NumberFormat` per format, registered once.

A registration gives everything the rest of qfx reads about a format: the pydantic config model
(its ``name`` literal, its per-role fields, which are also the search space's choice fields, and its
``roles()`` -> ``TensorPrecision``), the quantizer function for a precision, the printed form
(``int8.4``), the per-role parameter field and its range (how the search space checks that a
frac/exponent choice fits every width choice), the unsigned variant ReLU outputs use, and whether the
values are fixed-point codes (what exports and saturation counts accept). ``QuantizeConfig``,
``make_quantizer``, ``TensorPrecision.__str__`` and the search space all look formats up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from qfx.graph.meta import PRECISION_CHECKS, PRECISION_LABELS, TensorPrecision

QuantFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NumberFormat:
    """One number format.

    ``config``: pydantic model (``extra="forbid"``, a ``name: Literal[...]`` field, ``roles()``
    returning ``{role: TensorPrecision}``); None for internal variants that no config names.
    ``values(p)``: the function mapping a float tensor to its values in precision ``p``.
    ``param``: suffix of the per-role field holding the format's second number (``"frac_width"``),
    ``param_range(width)``: its allowed range at that width, ``param_na``: whether "NA" (width // 2)
    and "auto" (calibrated per node, see :data:`AUTO_FRAC`) are allowed.
    ``codes(width)``: for fixed-point formats (values = integer code x 2^-frac), the code range
    ``(lo, hi)``; exports and saturation counts accept exactly these formats.
    """

    name: str
    values: Callable[[TensorPrecision], QuantFn]
    label: Callable[[TensorPrecision], str]
    config: type | None = None
    param: str | None = None
    param_range: Callable[[int], tuple[int, int]] | None = None
    param_na: bool = False
    unsigned: str | None = None
    codes: Callable[[int], tuple[int, int]] | None = None


FORMATS: dict[str, NumberFormat] = {}
AUTO_FRAC = -1  # the frac of a role whose config says "auto": the quantize pass replaces it from calibration


def register_format(fmt: NumberFormat) -> NumberFormat:
    """Add a format; a second registration under the same name raises."""
    if fmt.name in FORMATS or fmt.name in ("NA", "float32"):
        raise ValueError(f"number format {fmt.name!r} is already registered")
    if fmt.config is not None and "name" not in getattr(fmt.config, "model_fields", {}):
        raise TypeError(f"format {fmt.name!r}: its config model needs a 'name' field")
    FORMATS[fmt.name] = fmt
    PRECISION_LABELS[fmt.name] = fmt.label
    PRECISION_CHECKS[fmt.name] = lambda p: _check_param(fmt, p)
    return fmt


def _check_param(fmt: NumberFormat, p: TensorPrecision) -> None:
    """The format's second number within its range at ``p.width`` (fixed point without a declared range: 0..width)."""
    lo, hi = fmt.param_range(p.width) if fmt.param_range else (0, p.width)
    if p.frac is not None and not lo <= p.frac <= hi:
        name = fmt.param or "frac_width"
        raise ValueError(f"{fmt.name} {name} {p.frac} is outside {lo}..{hi} at width {p.width}")


def get_format(name: str) -> NumberFormat:
    """The registered format ``name``; KeyError lists the registered ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown number format {name!r}; registered: {', '.join(FORMATS)}") from None


def config_formats() -> dict[str, NumberFormat]:
    """Formats a config can name (``name = "integer"``), in registration order."""
    return {n: f for n, f in FORMATS.items() if f.config is not None}


def code_range(p: TensorPrecision) -> tuple[int, int] | None:
    """``(lo, hi)`` of the integer codes when ``p`` is fixed point (values = code x 2^-frac), else None."""
    f = FORMATS.get(p.fmt)
    return f.codes(p.width) if f is not None and f.codes is not None else None


def unsigned_variant(p: TensorPrecision) -> TensorPrecision:
    """``p`` in its format's unsigned variant (ReLU outputs), or ``p`` when the format has none."""
    f = FORMATS.get(p.fmt)
    return replace(p, fmt=f.unsigned) if f is not None and f.unsigned else p


def unregister_format(name: str) -> Any:
    """Remove a format (tests registering a toy format clean up with this)."""
    PRECISION_LABELS.pop(name, None)
    PRECISION_CHECKS.pop(name, None)
    return FORMATS.pop(name)
