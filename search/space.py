"""Search space: TOML seeds (by node name or by op type) <-> flat choice dims <-> quantize config.

A flat dimension is ``"<key>/<field>"`` where key is an op type (``by="type"``) or a node
name (``by="name"``; nodes without a seed of their own take the ``default`` seed). A point is
a dict ``{dim: index}``; :meth:`SearchSpace.to_config` turns it into a QuantizeConfig dict
in MASE form, which really quantizes (by type: every node of that type).
"""

from __future__ import annotations

import itertools
import json
import math
from functools import cached_property
from typing import Annotated, Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from pydantic import TypeAdapter, ValidationError

from qfx.graph.trace import QGraph
from qfx.passes.transforms.quantize.config import QuantizeConfig
from qfx.passes.transforms.quantize.formats import NumberFormat, config_formats
from qfx.passes.transforms.quantize.quantize_pass import quant_types, quantizable_nodes


def _models() -> dict[str, type]:
    """Config model of every format a config can name (the format registry decides)."""
    return {n: f.config for n, f in config_formats().items()}


class SpaceError(ValueError):
    """A seed names an unknown node/type/field or offers no choices."""


def _role(field: str) -> str | None:
    return next((r for r in ("data_in", "weight", "bias") if field.startswith(r + "_")), None)


def _is_na(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.upper() == "NA")


def _dedupe(choices: list[Any]) -> list[Any]:
    out: list[Any] = []
    for c in choices:
        if not any((c == o and type(c) is type(o)) or (_is_na(c) and _is_na(o)) for o in out):
            out.append(c)
    return out


def _field_adapter(model: type, field: str) -> TypeAdapter:
    info = model.model_fields[field]
    return TypeAdapter(Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation)


def check_seed(key: str, fields: dict[str, list[Any]]) -> list[str]:
    """Validate one seed's choice lists against its formats' rules (every value, sampled or not).

    Raises :class:`SpaceError` naming ``seed.KEY.config.FIELD`` and the value; returns notes
    (duplicate choices merged). Integer widths are 1..32, fracs 0..width or "NA", minifloat
    exponents 1..width-1, bypass a boolean; a frac/exponent must fit *every* width choice of its role.
    """
    where = f"seed.{key}.config"
    if not isinstance(fields, dict) or "name" not in fields:
        raise SpaceError(f'{where} needs a \'name\' choice list (e.g. ["integer"] or ["NA"])')
    notes = []
    for f, ch in fields.items():
        if not isinstance(ch, list):
            raise SpaceError(f"{where}.{f}: must be a list of choices, got {ch!r}")
        if not ch:
            raise SpaceError(f"{where}.{f} is an empty choice list")
        if len(_dedupe(ch)) < len(ch):
            notes.append(f"{where}.{f}: duplicate choices in {ch} merged")
    allowed = {"name", "bypass"}
    formats = []
    registered = config_formats()
    for nm in fields["name"]:
        if _is_na(nm):
            continue
        if not isinstance(nm, str) or nm not in registered:
            raise SpaceError(f"{where}.name: unknown format {nm!r}; allowed: NA, {', '.join(registered)}")
        formats.append(registered[nm])
        allowed |= set(registered[nm].config.model_fields)
    for f in fields:
        if f not in allowed:
            raise SpaceError(f"{where}.{f}: unknown field; allowed: {', '.join(sorted(allowed))}")
    for fmt in formats:
        _check_choices(where, fmt, fields)
    return notes


def _check_choices(where: str, fmt: NumberFormat, fields: dict[str, list[Any]]) -> None:
    """Every choice valid for ``fmt``'s config field, and its per-role parameter fitting every width choice."""
    model = fmt.config
    param = f"_{fmt.param}" if fmt.param else None
    for f, ch in fields.items():
        if f == "name" or f not in model.model_fields:
            continue
        ad = _field_adapter(model, f)
        for v in ch:
            if fmt.param_na and param and f.endswith(param) and (_is_na(v) or v == "auto"):
                continue
            try:
                ad.validate_python(v, strict=True)
            except ValidationError as e:
                msg = e.errors()[0]["msg"].removeprefix("Value error, ")
                raise SpaceError(f"{where}.{f}: invalid choice {v!r} ({msg})") from None
    if not (fmt.param and fmt.param_range):
        return
    for role in ("data_in", "weight", "bias"):
        f = f"{role}_{fmt.param}"
        if f not in model.model_fields or f"{role}_width" not in model.model_fields:
            continue
        widths = fields.get(f"{role}_width", [model.model_fields[f"{role}_width"].default])
        lo, hi = fmt.param_range(min(widths))
        for v in fields.get(f, []):
            if isinstance(v, int) and not lo <= v <= hi:
                raise SpaceError(
                    f"{where}.{f}: choice {v!r} does not fit every {role}_width choice {widths} (must be in {lo}..{hi})"
                )


class SearchSpace:
    """Flattened choices for one graph. ``dims``: dim -> list of distinct choices.

    A unit (op type or node) with one format has one dim per field its op has
    (``"<unit>/<field>"``); a unit choosing between formats (``name = ["NA", "integer"]``) has one
    dim ``"<unit>/config"`` over its distinct configurations, so ``size`` counts distinct
    configurations and enumerating samplers never repeat one.
    """

    def __init__(self, graph: QGraph, by: str, seeds: dict[str, dict[str, list[Any]]]) -> None:
        self.by = by
        self.notes: list[str] = []
        qn = quantizable_nodes(graph)
        type_roles = quant_types()
        seeds = {k: (v["config"] if set(v) == {"config"} else v) for k, v in seeds.items()}
        for key, fields in seeds.items():
            self.notes += check_seed(key, fields)
        if by == "type":
            keys = [k for k in seeds if k != "default"]
            for k in keys:
                if k not in type_roles:
                    if k in qn:
                        self.notes.append(f"seed {k!r} is a node name but setup.by = 'type': ignored")
                        continue
                    raise SpaceError(
                        f"seed {k!r}: not a quantizable op type; by = 'type' seeds may be "
                        f"{', '.join(sorted(type_roles))} or 'default'"
                    )
            present = sorted(set(qn.values()))
            units = {t: seeds.get(t, seeds.get("default", {"name": ["NA"]})) for t in present}
            units = {t: s for t, s in units.items() if t in seeds or "default" in seeds}
        else:
            for k in seeds:
                if k != "default" and k not in qn:
                    if k in type_roles:
                        self.notes.append(f"seed {k!r} is an op type but setup.by = 'name': ignored (as MASE)")
                        continue
                    raise SpaceError(
                        f"seed {k!r}: no quantizable node of that name; quantizable nodes: {', '.join(qn)}"
                    )
            units = {n: seeds[n] if n in seeds else seeds.get("default", {"name": ["NA"]}) for n in qn}
        # drop fields for tensor roles the op does not have (a ReLU has no weight to quantize)
        unit_type = (lambda u: u) if by == "type" else qn.__getitem__
        self.units: dict[str, dict[str, list[Any]]] = {}
        dropped: dict[str, set[str]] = {}
        for u, fields in units.items():
            roles = type_roles[unit_type(u)]
            keep = {f: _dedupe(ch) for f, ch in fields.items() if _role(f) in (None, *roles)}
            if u not in seeds:  # a `default` seed applies to every op: fields an op lacks go without a note
                self.units[u] = keep
                continue
            for f in set(fields) - set(keep):
                dropped.setdefault(f, set()).add(unit_type(u))
            self.units[u] = keep
        for f, ts in sorted(dropped.items()):
            self.notes.append(f"{f} is not a search dimension of {', '.join(sorted(ts))} (no such tensor): dropped")
        self.dims: dict[str, list[Any]] = {}
        for u, fields in self.units.items():
            self.dims.update(self._unit_dims(u, fields))
        if not self.dims:
            raise SpaceError("the search space is empty: no seed applies to any node of this graph")

    @staticmethod
    def _unit_dims(u: str, fields: dict[str, list[Any]]) -> dict[str, list[Any]]:
        names = fields["name"]
        if len(names) == 1:
            if _is_na(names[0]):
                return {f"{u}/name": ["NA"]}
            own = _models()[names[0]].model_fields
            return {f"{u}/{f}": ch for f, ch in fields.items() if f == "name" or f in own}
        combos: list[dict[str, Any]] = []
        for nm in names:
            if _is_na(nm):
                combos.append({"name": "NA"})
                continue
            rel = [f for f in fields if f != "name" and f in _models()[nm].model_fields]
            for vals in itertools.product(*(fields[f] for f in rel)):
                combos.append({"name": nm, **dict(zip(rel, vals, strict=True))})
        return {f"{u}/config": combos}

    # ---- sizes and enumeration -------------------------------------------------
    @property
    def size(self) -> int:
        return math.prod(len(c) for c in self.dims.values())

    @property
    def free_dims(self) -> dict[str, int]:
        """Dims with more than one choice (the ones a sampler has to pick)."""
        return {d: len(c) for d, c in self.dims.items() if len(c) > 1}

    def point(self, i: int) -> dict[str, int]:
        """The i-th point in lexicographic (mixed-radix) order over the free dims."""
        if not 0 <= i < self.size:
            raise IndexError(f"point {i} outside a space of {self.size}")
        out = {}
        for d, n in reversed(self.free_dims.items()):
            i, out[d] = divmod(i, n)
        return dict(reversed(out.items()))

    # ---- Optuna parameters: the choices' real values ---------------------------------
    @staticmethod
    def encode(choice: Any) -> Any:
        """A choice as an Optuna parameter value: itself (int/str/bool/float), a unit's configuration as
        compact sorted JSON (``{"name":"integer","weight_width":4}``)."""
        return json.dumps(choice, sort_keys=True, separators=(",", ":")) if isinstance(choice, dict) else choice

    @cached_property
    def distributions(self) -> dict[str, BaseDistribution]:
        """One Optuna distribution per free dim over its real values: an int range (with step) when the choices
        are evenly spaced integers (samplers see their order), else categorical."""
        out: dict[str, BaseDistribution] = {}
        for d in self.free_dims:
            ch = [self.encode(c) for c in self.dims[d]]
            ints = all(type(c) is int for c in ch)
            steps = {b - a for a, b in zip(ch, ch[1:], strict=False)} if ints else set()
            if ints and len(steps) == 1 and next(iter(steps)) > 0:
                out[d] = IntDistribution(ch[0], ch[-1], step=next(iter(steps)))
            else:
                out[d] = CategoricalDistribution(ch)
        return out

    @cached_property
    def _index(self) -> dict[str, dict[Any, int]]:
        return {d: {(type(v), v): i for i, v in enumerate(map(self.encode, self.dims[d]))} for d in self.free_dims}

    def params(self, point: dict[str, int]) -> dict[str, Any]:
        """Optuna parameter values of an index point (free dims only)."""
        return {d: self.encode(self.dims[d][i]) for d, i in point.items() if d in self.free_dims}

    def point_of(self, params: dict[str, Any]) -> dict[str, int]:
        """The index point of Optuna parameter values (inverse of :meth:`params`)."""
        try:
            return {d: self._index[d][(type(params[d]), params[d])] for d in self.free_dims}
        except KeyError as e:
            raise SpaceError(f"parameters {params} are not a point of this space (at {e})") from None

    # ---- point <-> config --------------------------------------------------------
    def values(self, point: dict[str, int]) -> dict[str, Any]:
        """Choice values of every dim (fixed dims at their only choice)."""
        return {d: ch[point.get(d, 0)] for d, ch in self.dims.items()}

    def to_config(self, point: dict[str, int]) -> dict[str, Any]:
        """MASE-form quantize config dict for a point."""
        vals = self.values(point)
        cfg: dict[str, Any] = {"by": self.by, "default": {"config": {"name": "NA"}}}
        for u, fields in self.units.items():
            if f"{u}/config" in vals:
                cfg[u] = {"config": dict(vals[f"{u}/config"])}
                continue
            name = vals[f"{u}/name"]
            if _is_na(name):
                cfg[u] = {"config": {"name": "NA"}}
                continue
            allowed = set(_models()[name].model_fields)
            cfg[u] = {"config": {f: vals[f"{u}/{f}"] for f in fields if f in allowed}}
        return cfg

    def validated(self, point: dict[str, int]) -> QuantizeConfig:
        return QuantizeConfig.model_validate(self.to_config(point))

    def to_point(self, config: dict[str, Any]) -> dict[str, int]:
        """Inverse of :meth:`to_config` (for configs it produced)."""
        out = {}
        for d in self.free_dims:
            u, f = d.split("/", 1)
            entry = config[u]["config"]
            if f == "config":
                matches = [i for i, c in enumerate(self.dims[d]) if c == entry]
                if not matches:
                    raise SpaceError(f"configuration {entry} of {u} is not among its choices")
                out[d] = matches[0]
                continue
            v = entry.get(f, self.dims[d][0]) if f != "name" or not _is_na(entry.get("name")) else "NA"
            matches = [i for i, c in enumerate(self.dims[d]) if c == v or (_is_na(c) and _is_na(v))]
            if not matches:
                raise SpaceError(f"value {v!r} of {d} is not among its choices {self.dims[d]}")
            out[d] = matches[0]
        return out

    def describe(self) -> str:
        free = self.free_dims
        dims = ", ".join(f"{d}[{n}]" for d, n in free.items()) or "none"
        return f"search space: {len(self.units)} seed unit(s), {len(free)} free dim(s) ({dims}); size {self.size:,}"
