"""Which point of a Pareto front becomes ``best_model/``: an explicit, recorded rule (``--pick`` or
``[search.strategy] pick``), never "the lowest-numbered trial".

Rules (text form, validated):

- ``knee`` (default): the front point closest to the ideal point (every objective at its best value on the
  front), each objective scaled to [0, 1] over the front; ties to the lower trial number.
- ``max:METRIC`` / ``min:METRIC``: the front point with the highest / lowest METRIC.
- ``trial:N``: trial N (it must be on the front).

When no front point is within the bounds, the knee of the whole front is taken and the reason says so.

Any rule but ``trial:N`` may add bounds after a comma, each ``METRIC>=X`` or ``METRIC<=X``: only front points
within them are candidates (``min:fpga_luts,accuracy>=0.93``: the smallest design above an accuracy floor).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qfx.search.trial_record import metrics_of

_RULE = re.compile(r"^(knee|max:(\w+)|min:(\w+)|trial:(\d+))$")
_BOUND = re.compile(r"^(\w+)\s*(>=|<=)\s*([-+0-9.eE]+)$")


class PickError(ValueError):
    """A pick rule that cannot be read or that no front point meets; the message names the rule."""


class Bound(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    metric: str
    op: Literal[">=", "<="]
    value: float


class Pick(BaseModel):
    """A parsed pick rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["knee", "max", "min", "trial"] = "knee"
    metric: str | None = None
    trial: int | None = Field(None, ge=0)
    bounds: list[Bound] = []
    text: str = "knee"


def parse_pick(text: str) -> Pick:
    """``knee`` | ``max:M`` | ``min:M`` | ``trial:N``, then optional ``,M>=X`` / ``,M<=X`` bounds."""
    from qfx.search.metrics import METRICS

    head, *rest = [p.strip() for p in text.split(",")]
    m = _RULE.match(head)
    if not m:
        raise PickError(f"pick {text[:60]!r}: the rule must be knee, max:METRIC, min:METRIC or trial:N")
    bounds = []
    for b in rest:
        mb = _BOUND.match(b)
        if not mb or not math.isfinite(float(mb.group(3))):
            raise PickError(f"pick {text[:60]!r}: bound {b[:40]!r} must be METRIC>=NUMBER or METRIC<=NUMBER")
        bounds.append(Bound(metric=mb.group(1), op=mb.group(2), value=float(mb.group(3))))  # type: ignore[arg-type]
    kind = head.split(":")[0]
    metric = m.group(2) or m.group(3)
    for name in [metric, *(b.metric for b in bounds)]:
        if name is not None and name not in METRICS:
            raise PickError(f"pick {text[:60]!r}: unknown metric {name!r}; available: {', '.join(METRICS)}")
    if kind == "trial" and bounds:
        raise PickError(f"pick {text[:60]!r}: trial:N takes no bounds")
    return Pick(kind=kind, metric=metric, trial=int(m.group(4)) if m.group(4) else None, bounds=bounds, text=text)


def _metrics(t: Any) -> dict[str, float]:
    return metrics_of(t)


def _within(t: Any, bounds: list[Bound]) -> bool:
    m = _metrics(t)
    return all(b.metric in m and (m[b.metric] >= b.value if b.op == ">=" else m[b.metric] <= b.value) for b in bounds)


def knee(front: list[Any], objectives: dict[str, Any]) -> Any:
    """The point nearest the ideal point, objectives scaled to [0, 1] over ``front`` (1 = worst)."""

    span = {k: (min(v), max(v)) for k in objectives if (v := [_metrics(u)[k] for u in front])}

    def badness(t: Any) -> float:
        m, total = _metrics(t), 0.0
        for k, spec in objectives.items():
            lo, hi = span[k]
            x = 0.0 if hi == lo else (m[k] - lo) / (hi - lo)
            total += (1 - x if spec.direction == "maximize" else x) ** 2
        return total

    return min(front, key=lambda t: (badness(t), t.number))


def pick(front: list[Any], rule: Pick, objectives: dict[str, Any]) -> tuple[Any, str]:
    """``(trial, why)``: the front point the rule chooses and a sentence saying why."""
    if not front:
        raise PickError("pick: the front is empty")
    if rule.kind == "trial":
        t = next((t for t in front if t.number == rule.trial), None)
        if t is None:
            raise PickError(f"pick {rule.text!r}: trial {rule.trial} is not on the front {[t.number for t in front]}")
        return t, f"trial {rule.trial}, as asked"
    cands = [t for t in front if _within(t, rule.bounds)]
    within = f" among the {len(cands)} of {len(front)} front points within {', '.join(_bound_text(rule))}"
    if not cands:  # a search too short (or a floor too high) must not lose its result: say so, take the knee
        t = knee(front, objectives)
        return t, f"no front point is within {', '.join(_bound_text(rule))}: the knee of the whole front instead"
    if rule.kind == "knee":
        t = knee(cands, objectives)
        return t, "the knee: nearest the ideal point, objectives scaled over the front" + (
            within if rule.bounds else ""
        )
    assert rule.metric is not None
    sign = 1 if rule.kind == "max" else -1
    metric = rule.metric
    t = max(cands, key=lambda u: (sign * _metrics(u).get(metric, -sign * math.inf), -u.number))
    return t, f"the {'highest' if sign > 0 else 'lowest'} {metric} ({_metrics(t).get(metric, math.nan):g})" + (
        within if rule.bounds else ""
    )


def _bound_text(rule: Pick) -> list[str]:
    return [f"{b.metric} {b.op} {b.value:g}" for b in rule.bounds]
