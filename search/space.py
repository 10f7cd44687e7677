"""Search space: TOML seeds (by node name or by op type) <-> flat choice dims <-> quantize config.

A flat dimension is ``"<key>/<field>"`` where key is an op type (``by="type"``) or a node
name (``by="name"``; nodes without a seed of their own take the ``default`` seed). A point is
a dict ``{dim: index}``; :meth:`SearchSpace.to_config` turns it into a QuantizeConfig dict
in MASE form, which really quantizes (by type: every node of that type).
"""

from __future__ import annotations

import math
from typing import Any

from graph.trace import QGraph
from passes.transforms.quantize.config import IntegerQ, MinifloatQ, QuantizeConfig
from passes.transforms.quantize.quantize_pass import quant_types, quantizable_nodes

FORMAT_MODELS = {"integer": IntegerQ, "minifloat": MinifloatQ}


class SpaceError(ValueError):
    """A seed names an unknown node/type/field or offers no choices."""


def _role(field: str) -> str | None:
    return next((r for r in ("data_in", "weight", "bias") if field.startswith(r + "_")), None)


def _is_na(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.upper() == "NA")


class SearchSpace:
    """Flattened choices for one graph. ``dims``: dim -> list of choices (in TOML order)."""

    def __init__(self, graph: QGraph, by: str, seeds: dict[str, dict[str, list[Any]]]) -> None:
        self.by = by
        self.notes: list[str] = []
        qn = quantizable_nodes(graph)
        type_roles = quant_types()
        seeds = {k: (v["config"] if set(v) == {"config"} else v) for k, v in seeds.items()}
        for key, fields in seeds.items():
            self._check_fields(key, fields)
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
        self.units: dict[str, dict[str, list[Any]]] = {
            u: {f: ch for f, ch in fields.items() if _role(f) in (None, *type_roles[unit_type(u)])}
            for u, fields in units.items()
        }
        self.dims: dict[str, list[Any]] = {
            f"{u}/{f}": list(ch) for u, fields in units.items() for f, ch in fields.items()
        }
        if not self.dims:
            raise SpaceError("the search space is empty: no seed applies to any node of this graph")

    @staticmethod
    def _check_fields(key: str, fields: dict[str, list[Any]]) -> None:
        if "name" not in fields:
            raise SpaceError(f"seed.{key}.config needs a 'name' choice list")
        allowed = {"name", "bypass"}
        for nm in fields["name"]:
            if _is_na(nm):
                continue
            if nm not in FORMAT_MODELS:
                raise SpaceError(
                    f"seed.{key}.config.name: unknown format {nm!r}; allowed: NA, {', '.join(FORMAT_MODELS)}"
                )
            allowed |= set(FORMAT_MODELS[nm].model_fields)
        for f, ch in fields.items():
            if f not in allowed:
                raise SpaceError(f"seed.{key}.config.{f}: unknown field; allowed: {', '.join(sorted(allowed))}")
            if not isinstance(ch, list) or not ch:
                raise SpaceError(f"seed.{key}.config.{f}: must be a non-empty list of choices")

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

    # ---- point <-> config --------------------------------------------------------
    def values(self, point: dict[str, int]) -> dict[str, Any]:
        """Choice values of every dim (fixed dims at their only choice)."""
        return {d: ch[point.get(d, 0)] for d, ch in self.dims.items()}

    def to_config(self, point: dict[str, int]) -> dict[str, Any]:
        """MASE-form quantize config dict for a point."""
        vals = self.values(point)
        cfg: dict[str, Any] = {"by": self.by, "default": {"config": {"name": "NA"}}}
        for u, fields in self.units.items():
            name = vals[f"{u}/name"]
            if _is_na(name):
                cfg[u] = {"config": {"name": "NA"}}
                continue
            allowed = set(FORMAT_MODELS[name].model_fields)
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
