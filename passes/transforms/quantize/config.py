"""Quantization config: one pydantic model, MASE's ``[passes.quantize]`` accepted as is.

Resolution per node, highest priority first: exact node name (``by_name``) >
name regex (``by_regex``, full match, first listed wins) > op type (``by_type``) > ``default``.
MASE form: ``{"by": "type", "default": {"config": {...}}, "linear": {"config": {...}}}`` —
keys other than ``by``/``default``/``report`` go to ``by_type``/``by_name``/``by_regex``
according to ``by``. ``"NA"`` means unset: a frac width of "NA" is width // 2; a name of
"NA" means not quantized.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, field_validator, model_validator

from qfx.graph.meta import TensorPrecision
from qfx.passes.transforms.quantize.formats import AUTO_FRAC, config_formats

Width = Annotated[int, Field(ge=1, le=32)]
Frac = Annotated[int, Field(ge=0, le=32)] | Literal["auto"] | None  # None ("NA"): width // 2; "auto": calibrated
Exponent = Annotated[int, Field(ge=1, le=31)]


def _na_to_none(v: Any) -> Any:
    return None if isinstance(v, str) and v.upper() == "NA" else v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _na(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _na_to_none(v) for k, v in data.items()}
        return data


class NoQuant(_Strict):
    """Leave the node in floating point."""

    name: Literal[None] = None

    def roles(self) -> dict[str, TensorPrecision]:
        return {}


class IntegerQ(_Strict):
    """Integer fixed point; frac widths default to width // 2 ("NA"); "auto" takes them from calibration
    (CalibrationPass) for each node and width. ``data_in_round`` / ``data_in_overflow``: how the node's input
    (a ReLU's: its output) is rounded (half_even, half_up = ap_fixed AP_RND, trunc = AP_TRN) and kept in range
    (saturate, wrap); weights and biases are constants, always rounded half to even and saturated."""

    name: Literal["integer"]
    bypass: bool = False
    data_in_width: Width = 8
    data_in_frac_width: Frac = None
    data_in_round: Literal["half_even", "half_up", "trunc"] = "half_even"
    data_in_overflow: Literal["saturate", "wrap"] = "saturate"
    weight_width: Width = 8
    weight_frac_width: Frac = None
    bias_width: Width = 8
    bias_frac_width: Frac = None

    @model_validator(mode="after")
    def _fracs(self) -> IntegerQ:
        for role in ("data_in", "weight", "bias"):
            w, f = getattr(self, f"{role}_width"), getattr(self, f"{role}_frac_width")
            if isinstance(f, int) and not 0 <= f <= w:
                raise ValueError(f"{role}_frac_width={f} must be in 0..{role}_width ({w})")
        return self

    def roles(self) -> dict[str, TensorPrecision]:
        out = {}
        for role in ("data_in", "weight", "bias"):
            w, f = getattr(self, f"{role}_width"), getattr(self, f"{role}_frac_width")
            out[role] = TensorPrecision("integer", w, w // 2 if f is None else AUTO_FRAC if f == "auto" else f)
        p = out["data_in"]
        out["data_in"] = TensorPrecision(p.fmt, p.width, p.frac, self.data_in_round, self.data_in_overflow)
        return out


class MinifloatQ(_Strict):
    """Minifloat with subnormals: width and exponent width per role (bias 2^(e-1)-1)."""

    name: Literal["minifloat"]
    bypass: bool = False
    data_in_width: Width = 8
    data_in_exponent_width: Exponent = 4
    weight_width: Width = 8
    weight_exponent_width: Exponent = 4
    bias_width: Width = 8
    bias_exponent_width: Exponent = 4

    @model_validator(mode="after")
    def _exp(self) -> MinifloatQ:
        for role in ("data_in", "weight", "bias"):
            w, e = getattr(self, f"{role}_width"), getattr(self, f"{role}_exponent_width")
            if not 1 <= e <= w - 1:
                raise ValueError(f"{role}_exponent_width={e} must be in 1..{role}_width-1 ({w - 1})")
        return self

    def roles(self) -> dict[str, TensorPrecision]:
        return {
            r: TensorPrecision("minifloat", getattr(self, f"{r}_width"), getattr(self, f"{r}_exponent_width"))
            for r in ("data_in", "weight", "bias")
        }


def _unwrap(v: Any) -> Any:
    """MASE wraps each entry as ``{"config": {...}}``; accept both forms."""
    if isinstance(v, dict) and set(v) == {"config"}:
        v = v["config"]
    if isinstance(v, dict) and _na_to_none(v.get("name")) is None:
        # MASE writes other fields next to name = "NA"; they mean nothing then
        return {"name": None}
    return v


def _node_q(v: Any) -> BaseModel:
    """One node's format config, dispatched on ``name`` to the registered format's config model."""
    if isinstance(v, BaseModel):
        return v
    v = _unwrap(v)
    if not isinstance(v, dict):
        raise ValueError(f"expected a table with a 'name' key, got {v!r}")
    name = v.get("name")
    if name is None:
        return NoQuant()
    formats = config_formats()
    if not isinstance(name, str) or name not in formats:
        raise ValueError(f"unknown format name {name!r}; allowed: NA, {', '.join(formats)}")
    try:
        return formats[name].config.model_validate(v)
    except ValidationError as e:
        errs = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            msg = f"unknown key ({msg})" if err["type"] == "extra_forbidden" else msg
            errs.append(f"{loc}: {msg}" if loc else msg)
        raise ValueError("; ".join(errs)) from None


# any registered format's config (see formats.register_format); "NA"/None = not quantized
NodeQ = Annotated[Any, PlainValidator(_node_q)]


class QuantizeConfig(BaseModel):
    """Which nodes to quantize and how. See the module docstring for resolution order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    by: Literal["type", "name", "regex_name"] = "type"
    default: NodeQ = NoQuant()
    by_type: dict[str, NodeQ] = {}
    by_name: dict[str, NodeQ] = {}
    by_regex: dict[str, NodeQ] = {}
    report: bool = False

    @model_validator(mode="before")
    @classmethod
    def _mase_form(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        by = data.get("by", "type")
        target = {"type": "by_type", "name": "by_name", "regex_name": "by_regex"}.get(by, "by_type")
        own = set(cls.model_fields)
        for k in [k for k in data if k not in own]:
            data.setdefault(target, {})
            data[target] = {**data[target], k: data.pop(k)}
        if "default" in data:
            data["default"] = _unwrap(data["default"])
        for f in ("by_type", "by_name", "by_regex"):
            if f in data and isinstance(data[f], dict):
                data[f] = {k: _unwrap(v) for k, v in data[f].items()}
        return data

    @field_validator("by_regex")
    @classmethod
    def _regex_compiles(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for pat in v:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"by_regex key {pat!r} is not a valid regular expression: {e}") from e
        return v
