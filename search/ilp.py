"""An exact bit allocation: a role-accurate sensitivity table per search dimension, then an integer program.

The table is measured on the space itself. The *top* point sets every width dimension to its widest
choice and every other dimension to its first; for each free width dimension ``d`` and each choice ``c``,
the point that differs from the top only in ``d = c`` is evaluated. Its loss increase over the top is
the sensitivity ``s[d][c]``, and its hardware metrics minus the top's are the budget coefficients
``h_k[d][c]``. A weights-only space therefore measures weights only: each probe is a point of the space,
with every other role as the space fixes it.

The program (``scipy.optimize.milp``, HiGHS): one binary ``x[d][c]`` per choice, exactly one per
dimension. It minimises ``sum s[d][c] x[d][c]`` subject to ``top_k + sum h_k[d][c] x[d][c] <= max_k`` for
every hardware budget ``k`` (``min`` bounds likewise). A budget metric is *additive* when the model
reproduces it on random points (checked, and said in :attr:`Table.additive`): average bitwidth, model
size and memory bytes are additive. BOPs, EBOPs and the da4ml cost are treated as additive approximations,
so a solution is checked against the real metric before it is proposed (:func:`proposals`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qfx.search.metrics import violations

log = logging.getLogger(__name__)


@dataclass
class Table:
    """Sensitivity and budget coefficients per (dimension, choice index); ``top`` is the reference point."""

    dims: dict[str, list[Any]]  # free width dim -> its choices
    top: dict[str, int]  # index point of the top (widest) configuration
    loss: dict[str, list[float]]  # dim -> loss increase per choice (0 at the top choice)
    hw: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric -> dim -> delta per choice
    hw_top: dict[str, float] = field(default_factory=dict)
    additive: dict[str, bool] = field(default_factory=dict)
    evaluations: int = 0

    def predict(self, metric: str, point: dict[str, int]) -> float:
        """The additive model of ``metric`` (``"loss"`` or a hardware metric) at an index point."""
        if metric == "loss":
            return sum(self.loss[d][point[d]] for d in self.dims)
        return self.hw_top[metric] + sum(self.hw[metric][d][point[d]] for d in self.dims)


def width_dims(space: Any) -> dict[str, list[Any]]:
    """The free integer width dimensions of a space (``unit/<role>_width``)."""
    return {
        d: space.dims[d]
        for d in space.free_dims
        if d.endswith("_width") and not d.endswith("frac_width") and all(type(c) is int for c in space.dims[d])
    }


def measure_table(space: Any, ev: Any, budgets: list[str], check_points: int = 3, seed: int = 0) -> Table:
    """Measure the table with ``ev.evaluate`` (see the module docstring); ``budgets``: hardware metrics."""
    dims = width_dims(space)
    if not dims:
        raise ValueError("the ILP needs integer width dimensions in the space; this space has none")
    top = {d: 0 for d in space.free_dims}
    for d, ch in dims.items():
        top[d] = max(range(len(ch)), key=lambda i: ch[i])

    def run(point: dict[str, int]) -> Any:
        return ev.evaluate(space.to_config(point))

    base = run(top)
    n = 1
    table = Table(dims, top, {}, {k: {} for k in budgets}, {k: base.hardware[k] for k in budgets})
    for d, ch in dims.items():
        table.loss[d] = [0.0] * len(ch)
        for k in budgets:
            table.hw[k][d] = [0.0] * len(ch)
        for i in range(len(ch)):
            if i == top[d]:
                continue
            r = run({**top, d: i})
            n += 1
            table.loss[d][i] = r.software["loss"] - base.software["loss"]
            for k in budgets:
                table.hw[k][d][i] = r.hardware[k] - base.hardware[k]
    rng = random.Random(seed)
    table.additive = dict.fromkeys(budgets, True)
    for _ in range(check_points if budgets else 0):
        p = {**top, **{d: rng.randrange(len(ch)) for d, ch in dims.items()}}
        r = run(p)
        n += 1
        for k in budgets:
            if abs(r.hardware[k] - table.predict(k, p)) > 1e-6 * max(1.0, abs(r.hardware[k])):
                table.additive[k] = False
    table.evaluations = n
    return table


def solve(table: Table, bounds: dict[str, tuple[float | None, float | None]]) -> dict[str, int] | None:
    """The index point minimising the summed sensitivity under ``bounds`` (metric -> (min, max)) of the
    additive model, or None when no point meets them."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    dims = list(table.dims)
    idx = [(d, i) for d in dims for i in range(len(table.dims[d]))]
    c = np.array([table.loss[d][i] for d, i in idx])
    rows, lo, hi = [], [], []
    for d in dims:  # one choice per dimension
        rows.append([1.0 if dd == d else 0.0 for dd, _ in idx])
        lo.append(1.0)
        hi.append(1.0)
    for k, (kmin, kmax) in bounds.items():
        rows.append([table.hw[k][d][i] for d, i in idx])
        base = table.hw_top[k]
        lo.append(-np.inf if kmin is None else kmin - base)
        hi.append(np.inf if kmax is None else kmax - base)
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(len(idx)),
        bounds=Bounds(0, 1),
    )
    if res.x is None:
        return None
    point = dict(table.top)
    for (d, i), v in zip(idx, res.x, strict=True):
        if v > 0.5:
            point[d] = i
    return point


def brute_force(table: Table, bounds: dict[str, tuple[float | None, float | None]]) -> dict[str, int] | None:
    """The same optimum by enumeration (small spaces; the test oracle of :func:`solve`)."""
    import itertools

    best, best_v = None, np.inf
    dims = list(table.dims)
    for combo in itertools.product(*(range(len(table.dims[d])) for d in dims)):
        p = {**table.top, **dict(zip(dims, combo, strict=True))}
        ok = all(
            (kmin is None or table.predict(k, p) >= kmin - 1e-9)
            and (kmax is None or table.predict(k, p) <= kmax + 1e-9)
            for k, (kmin, kmax) in bounds.items()
        )
        v = table.predict("loss", p)
        if ok and v < best_v - 1e-12:
            best, best_v = p, v
    return best


def uniform_points(space: Any, ev: Any, budgets: dict[str, Any]) -> list[dict[str, int]]:
    """The widest uniform-width point (every width dimension at the same width, or the nearest choice below
    it; other dimensions at their first choice) that meets every hardware budget by the real metric (checked
    without running the model): the baseline a mixed allocation must beat. Empty when none does."""

    dims = width_dims(space)
    levels = sorted({c for ch in dims.values() for c in ch}, reverse=True)
    for w in levels:
        p = {d: 0 for d in space.free_dims}
        for d, ch in dims.items():
            below = [i for i, c in enumerate(ch) if c <= w]
            p[d] = max(below, key=lambda i: ch[i]) if below else min(range(len(ch)), key=lambda i: ch[i])
        hw = ev.hardware(space.to_config(p)) if budgets else {}
        if all(v <= 0 for v in violations(hw.__getitem__, budgets).values()):
            return [p]
    return []


def extreme_point(space: Any, ev: Any, metric: str, lowest: bool = True) -> tuple[dict[str, int], float]:
    """The point of the space where hardware ``metric`` is lowest (or highest), and its value: one pass of
    coordinate descent from the narrowest point (every width dimension at its narrowest choice), each free
    dimension set to its best choice with the others fixed. Exact for metrics that are sums over units of
    monotone terms (every hardware metric here: bits, BOPs, EBOPs, LUTs per layer); ``sum(choices)``
    hardware evaluations, no model run."""
    sign = 1.0 if lowest else -1.0
    p = _narrowest(space, lowest)

    def value(q: dict[str, int]) -> float:
        return float(ev.hardware(space.to_config(q))[metric])

    best = value(p)
    for d, n in space.free_dims.items():
        for i in range(n):
            if i == p[d]:
                continue
            v = value({**p, d: i})
            if sign * v < sign * best:
                p, best = {**p, d: i}, v
    return p, best


def _narrowest(space: Any, lowest: bool) -> dict[str, int]:
    """Every width dimension at its narrowest choice (``lowest``) or its widest; other dimensions at their first."""
    sign = 1.0 if lowest else -1.0
    p = {d: 0 for d in space.free_dims}
    for d, ch in width_dims(space).items():
        p[d] = min(range(len(ch)), key=lambda i: sign * ch[i])
    return p


def unreachable_budgets(space: Any, ev: Any, budgets: dict[str, Any]) -> list[str]:
    """One line per hardware budget that no point of the space meets (a ``max`` below the metric's lowest
    value, a ``min`` above its highest), naming the budget and the achievable extreme. The narrowest (widest)
    point is tried first: where it meets the budget, no descent is needed (one evaluation, not ``sum(choices)``:
    a whole-network FPGA metric costs a trace per point)."""
    out = []
    for k, b in budgets.items():
        if b.max is not None and _value(space, ev, k, True) > b.max + 1e-9 * max(1.0, abs(b.max)):
            _, lo = extreme_point(space, ev, k, lowest=True)
            if lo > b.max + 1e-9 * max(1.0, abs(b.max)):
                out.append(f"{k}.max = {b.max:g} is below the smallest {k} of the space ({lo:g})")
        if b.min is not None and _value(space, ev, k, False) < b.min - 1e-9 * max(1.0, abs(b.min)):
            _, hi = extreme_point(space, ev, k, lowest=False)
            if hi < b.min - 1e-9 * max(1.0, abs(b.min)):
                out.append(f"{k}.min = {b.min:g} is above the largest {k} of the space ({hi:g})")
    return out


def _value(space: Any, ev: Any, metric: str, lowest: bool) -> float:
    return float(ev.hardware(space.to_config(_narrowest(space, lowest)))[metric])


def proposals(
    table: Table,
    space: Any,
    ev: Any,
    budgets: dict[str, Any],
    sweep: list[str] | None = None,
    steps: int = 6,
) -> list[dict[str, Any]]:
    """Optuna parameters of the ILP's points: the optimum under ``budgets`` (metric -> Bound), tightened
    until the real metric meets each non-additive budget (at most 6 times, 10% at a time); with ``sweep``
    (hardware objectives of a multi-objective search), also the optima under ``steps`` budgets evenly
    spread over each swept metric's range (a seeded Pareto front); then the widest uniform-width point that
    meets the budgets (:func:`uniform_points`)."""
    bounds = {k: (b.min, b.max) for k, b in budgets.items()}
    out: list[dict[str, int]] = []
    p = solve(table, bounds)
    for _ in range(6):
        if p is None:
            break
        hw = ev.evaluate(space.to_config(p)).hardware
        broken = {k: hw[k] - b.max for k, b in budgets.items() if b.max is not None and hw[k] > b.max}
        if not broken:
            out.append(p)
            break
        for k, excess in broken.items():  # the model under-predicts this metric here: ask it for less
            lo, hi = bounds[k]
            bounds[k] = (lo, (hi if hi is not None else table.predict(k, p)) - 1.1 * excess)
        p = solve(table, bounds)
    for k in sweep or []:
        low = table.hw_top[k] + sum(min(v) for v in table.hw[k].values())  # the model's range of k
        high = table.hw_top[k] + sum(max(v) for v in table.hw[k].values())
        for j in range(steps):
            cap = low + (high - low) * j / max(steps - 1, 1)
            q = solve(table, {**bounds, k: (None, cap)})
            if q is not None and q not in out:
                out.append(q)
    out += [q for q in uniform_points(space, ev, budgets) if q not in out]
    return [space.params(q) for q in out]
