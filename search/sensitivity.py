"""Per-layer sensitivity: what quantizing one node alone, at each width, costs.

For every quantizable node and width, the node alone is quantized (every role it has at that width,
fracs "NA" or "auto") and the evaluator measures accuracy and loss on its evaluation samples; the output
SQNR (model output vs the float model, one batch) says how much signal survives. The result is a table,
a heat map and JSON, and it drives ``warm_start = "sensitivity"``: a greedy bit allocation enqueued as the
search's first trials.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from qfx.hw.estimates import hw_metrics, tensor_bits
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.passes.transforms.quantize.quantize_pass import quant_types
from qfx.search.metrics import scalarize
from qfx.search.runner import Evaluator


def node_config(node: str, width: int, roles: tuple[str, ...], frac: str = "NA") -> dict[str, Any]:
    """A config quantizing only ``node``: every role it has at ``width``."""
    cfg: dict[str, Any] = {"name": "integer"}
    for r in roles:
        cfg[f"{r}_width"], cfg[f"{r}_frac_width"] = width, frac
    return {"by": "name", "default": {"config": {"name": "NA"}}, node: {"config": cfg}}


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float(((out - ref).double() ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf


@dataclass(frozen=True)
class Sensitivity:
    """``rows[node][width]``: accuracy drop (points, FP32 - quantized), loss increase, output SQNR (dB)."""

    widths: tuple[int, ...]
    fp32: dict[str, float]
    rows: dict[str, dict[int, dict[str, float]]]
    op_types: dict[str, str]

    def drop(self, node: str, width: int) -> float:
        return self.rows[node][width]["accuracy_drop"]

    def table(self) -> str:
        head = ["node", "op type", *(f"{w}-bit Δacc / SQNR" for w in self.widths)]
        body = [[n, self.op_types[n], *(f"{r[w]['accuracy_drop']:+.2f} / {r[w]['sqnr_db']:.1f}" for w in self.widths)]
                for n, r in self.rows.items()]  # fmt: skip
        return tabulate(body, headers=head, tablefmt="github")

    def to_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "fp32": self.fp32, "op_types": self.op_types,
                "rows": {n: {str(w): v for w, v in r.items()} for n, r in self.rows.items()}}  # fmt: skip

    def plot(self, path: Path) -> Path:
        """Heat map of the accuracy drop: nodes x widths, annotated with the values."""
        from matplotlib.figure import Figure

        nodes = list(self.rows)
        data = [[self.drop(n, w) for w in self.widths] for n in nodes]
        fig = Figure(figsize=(1.2 * len(self.widths) + 3, 0.35 * len(nodes) + 1.5))
        ax = fig.add_subplot()
        im = ax.imshow(data, cmap="Reds", aspect="auto", vmin=0)
        ax.set_xticks(range(len(self.widths)), [f"{w} bit" for w in self.widths])
        ax.set_yticks(range(len(nodes)), [f"{n} ({self.op_types[n]})" for n in nodes])
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                r, g, b, _ = im.cmap(im.norm(v))  # white on dark cells, black on light ones (luminance)
                ink = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color=ink)
        fig.colorbar(im, ax=ax, label="accuracy drop (points) when only this node is quantized")
        ax.set_title("Per-node sensitivity")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path


def sensitivity(ev: Evaluator, widths: list[int], frac: str = "NA", progress: bool = False) -> Sensitivity:
    """Quantize each quantizable node alone at each width and measure (see the module docstring)."""
    from tqdm.auto import tqdm

    g = ev.pristine
    nodes = quantizable_nodes(g)
    roles = quant_types()
    base = ev.evaluate({"by": "name", "default": {"config": {"name": "NA"}}}).software
    xb = ev.x[: ev.SQNR_BATCH]
    with torch.no_grad():
        ref = g.gm(xb).float()
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for node, op in tqdm(nodes.items(), desc="sensitivity", unit="node", disable=not progress):
        rows[node] = {}
        for w in widths:
            cfg = node_config(node, w, roles[op], frac)
            sw = ev.evaluate(cfg).software
            with torch.no_grad():
                out = QuantizePass(cfg)(g).graph.gm(xb).float()
            rows[node][w] = {
                "accuracy_drop": 100 * (base["accuracy"] - sw["accuracy"]),
                "loss_increase": sw["loss"] - base["loss"],
                "sqnr_db": round(_sqnr(ref, out), 2),
            }
    return Sensitivity(tuple(widths), {"accuracy": base["accuracy"], "loss": base["loss"]}, rows, nodes)


class _Allocator:
    """Bit allocations over a space's units (nodes or op types): the width levels each unit's width dims
    offer, the sensitivity cost of a level, and the greedy path (see :func:`warm_start_points`)."""

    def __init__(self, sens: Sensitivity, space: Any, ev: Evaluator) -> None:
        self.sens, self.space, self.ev = sens, space, ev
        self.units = _unit_nodes(space, sens.op_types)
        dims = {u: [d for d in space.free_dims if d.startswith(f"{u}/") and d.endswith("_width")
                    and not d.endswith("frac_width")] for u in self.units}  # fmt: skip
        self.dims = {u: ds for u, ds in dims.items() if ds}
        self.levels = {u: sorted({c for d in ds for c in space.dims[d]}, reverse=True) for u, ds in self.dims.items()}

    def cost(self, u: str, w: int) -> float:
        """The largest accuracy drop (points) of the unit's nodes alone at the measured width nearest ``w``."""
        near = min(self.sens.widths, key=lambda m: (abs(m - w), m))
        return max(self.sens.drop(n, near) for n in self.units[u])

    def drop(self, alloc: dict[str, int]) -> float:
        """Predicted accuracy drop of an allocation: the sum of its units' drops (floored at 0)."""
        return sum(max(self.cost(u, alloc[u]), 0.0) for u in alloc)

    def params(self, alloc: dict[str, int]) -> dict[str, Any]:
        out = {}
        for u, ds in self.dims.items():
            for d in ds:  # the choice of this dim closest to the unit's level (at most it)
                ok = [c for c in self.space.dims[d] if c <= alloc[u]] or [min(self.space.dims[d])]
                out[d] = max(ok)
        return out

    def graph(self, alloc: dict[str, int]) -> Any:
        sp = self.space
        return QuantizePass(sp.to_config(sp.point_of({**sp.params(sp.point(0)), **self.params(alloc)})))(
            self.ev.pristine
        ).graph

    def hw(self, alloc: dict[str, int]) -> dict[str, float]:

        return hw_metrics(self.graph(alloc), self.ev.hw.compare_to, self.ev.hw.activations)

    def path(self) -> list[dict[str, int]]:
        """From every unit at its widest level, one unit a step lowered to its next level: the move with the
        least added drop per stored bit saved (width step x the unit's tensor elements)."""

        levels = self.levels
        path = [{u: lv[0] for u, lv in levels.items()}]
        elems = dict.fromkeys(self.units, 0)
        for t in tensor_bits(self.graph(path[0]), self.ev.hw.activations):
            for u, ns in self.units.items():
                elems[u] += t.numel if t.node in ns else 0

        def price(u: str, a: dict[str, int]) -> tuple[float, str]:
            w, nxt = a[u], levels[u][levels[u].index(a[u]) + 1]
            added = max(self.cost(u, nxt), 0.0) - max(self.cost(u, w), 0.0)
            return added / ((w - nxt) * max(elems[u], 1e-3)), u

        while moves := [price(u, path[-1]) for u, lv in levels.items() if path[-1][u] != lv[-1]]:
            u = min(moves)[1]
            path.append({**path[-1], u: levels[u][levels[u].index(path[-1][u]) + 1]})
        return path


_HW_METRICS = ("average_bitwidth", "memory_density", "memory_bytes", "model_size", "bops")


def _unit_nodes(space: Any, nodes: dict[str, str]) -> dict[str, list[str]]:
    if space.by == "type":
        return {u: [n for n, t in nodes.items() if t == u] for u in space.units}
    return {u: [u] for u in space.units if u in nodes}


def space_frac(space: Any) -> str:
    """The frac rule a sensitivity analysis of this space uses: "auto" when its frac choices include it."""
    return "auto" if any("auto" in c for d, c in space.dims.items() if d.endswith("frac_width")) else "NA"


def space_widths(space: Any) -> list[int]:
    """Every integer width choice of the space's ``*_width`` dims (what sensitivity measures)."""
    ws = {c for d, ch in space.dims.items() if d.endswith("_width") and not d.endswith("frac_width") for c in ch}
    return sorted(w for w in ws if type(w) is int)


def warm_start_points(sens: Sensitivity, space: Any, ev: Evaluator, budgets: dict[str, Any] | None = None,
                      tolerances: tuple[float, ...] = (0.5, 1.0, 2.0), objective: dict[str, Any] | None = None,
                      spread: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """Greedy bit allocations as Optuna parameters of ``space`` (width dims only; the sampler fills the rest).

    Every unit (node or op type) starts at its widest choice; the greedy path lowers one unit's width dims to
    the next choice per step, the move with the least added accuracy drop (the largest drop of the unit's
    nodes at that width alone, floored at 0) per stored bit saved (width step x the unit's tensor elements, as
    the average bitwidth counts them). The predicted drop of an allocation is the sum of its units' drops.
    - With budgets on hardware metrics (``max`` bounds): the first allocation of the path that meets them all.
    - Else the last path point whose predicted drop stays within each tolerance (points), and, with
      ``objective`` (the scalarised metric specs), the path point with the best *predicted* objective
      (accuracy = FP32 - predicted drop, hardware metrics computed exactly) with its neighbours 3 steps either
      side; with ``spread`` > 0, that many points evenly along the path (a predicted front for
      multi-objective searches).
    """

    al = _Allocator(sens, space, ev)
    path, params, drop, hw = al.path(), al.params, al.drop, al.hw
    points = []
    if budgets:
        ok = (a for a in path if all(b.max is None or hw(a).get(k, -math.inf) <= b.max for k, b in budgets.items()))
        points += [params(a) for a in itertools.islice(ok, 1)]
    else:
        for tol in tolerances:
            points.append(params([a for a in path if drop(a) - drop(path[0]) <= tol][-1]))
        predictable = {"accuracy", *_HW_METRICS}
        if objective and set(objective) <= predictable:

            def predicted(a: dict[str, int]) -> float:
                acc = sens.fp32["accuracy"] - drop(a) / 100
                return scalarize({"accuracy": acc, **hw(a)}.__getitem__, objective)

            best = max(range(len(path)), key=lambda i: predicted(path[i]))
            points += [params(path[i]) for i in (best, best - 3, best + 3) if 0 <= i < len(path)]
        if spread > 0 and len(path) > 1:
            points += [params(path[round(i * (len(path) - 1) / max(spread - 1, 1))]) for i in range(spread)]
    unique = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique
