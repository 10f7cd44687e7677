"""Study plots from plain data: optimisation history, Pareto front, metric vs config choice.

Every plot is in real units: metric values as measured (accuracy, bits, bytes), not scaled
objectives; one history panel per objective; integer trial ticks. Drawn on
``matplotlib.figure.Figure`` objects: no backend switch or pyplot state at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


@dataclass(frozen=True)
class StudyData:
    """Completed trials of a study as plain data (what the plots read).

    ``metrics``: measured value of every metric per trial; ``objectives``: metric names the study
    optimises with their direction (True = maximise); ``single``: one summed objective, whose value per
    trial is ``values``; ``choices``: the chosen value of every free dim per trial; ``dims``: free dim ->
    its choices; ``feasible``: per trial, False when it violated a budget.
    """

    numbers: list[int]
    values: list[float]
    metrics: list[dict[str, float]]
    objectives: dict[str, bool]
    single: bool
    choices: list[dict[str, Any]]
    dims: dict[str, list[Any]]
    feasible: list[bool]


def pareto_mask(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    s = points * np.where(maximize, 1.0, -1.0)
    mask = np.ones(len(s), bool)
    for i in range(len(s)):
        dominated = np.all(s >= s[i], axis=1) & np.any(s > s[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


UNITS = {"average_bitwidth": " (bits)", "memory_bytes": " (bytes)", "model_size": " (bytes)",
         "latency": " (ms)", "latency_per_sample": " (ms)", "fpga_luts": " (LUTs, da4ml)",
         "fpga_latency": " (adder levels)", "ebops": " (bit operations)"}  # fmt: skip


def plot_history(data: StudyData, path: Path) -> Path:
    """One panel per objective (the summed objective, or each metric in its own units): trials and best so far."""
    series = {"sum of scaled metrics": (data.values, True)} if data.single else {
        m: ([t[m] for t in data.metrics], mx) for m, mx in data.objectives.items()
    }  # fmt: skip
    fig = Figure(figsize=(8, 3.2 * len(series)))
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    nums = np.array(data.numbers)
    ok = np.array(data.feasible, bool)
    for ax, (name, (vals, mx)) in zip(axes, series.items(), strict=True):
        v = np.array(vals, float)
        best = np.where(ok, v, -np.inf if mx else np.inf)
        best = np.maximum.accumulate(best) if mx else np.minimum.accumulate(best)
        ax.scatter(nums[ok], v[ok], s=14, label="trial")
        if (~ok).any():
            ax.scatter(nums[~ok], v[~ok], s=14, marker="x", c="0.5", label="infeasible")
        ax.step(nums, np.where(np.isfinite(best), best, np.nan), where="post", color="C3", label="best so far")
        ax.set(xlabel="trial", ylabel=name + UNITS.get(name, ""))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the points
    axes[0].set_title("Optimisation history")
    return _save(fig, path)


def plot_pareto(data: StudyData, path: Path) -> Path:
    """The first two objectives in their units, or accuracy vs average bitwidth (bits) for a single objective."""
    if len(data.objectives) >= 2 and not data.single:
        (xl, xm), (yl, ym) = list(data.objectives.items())[:2]
        if xm and not ym:  # the cost (minimised) across, the quality (maximised) up: as the single-objective plot
            (xl, xm), (yl, ym) = (yl, ym), (xl, xm)
    else:
        (xl, xm), (yl, ym) = ("average_bitwidth", False), ("accuracy", True)
    xy = np.array([[t[xl], t[yl]] for t in data.metrics], float)
    ok = np.array(data.feasible, bool)
    mask = np.zeros(len(xy), bool)
    if ok.any():
        mask[np.flatnonzero(ok)] = pareto_mask(xy[ok], [xm, ym])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    dom = ok & ~mask
    ax.scatter(xy[dom, 0], xy[dom, 1], s=14, c="0.6", label="dominated")
    if (~ok).any():
        ax.scatter(xy[~ok, 0], xy[~ok, 1], s=14, marker="x", c="0.75", label="infeasible (over budget)")
    order = np.argsort(xy[mask, 0])
    ax.plot(xy[mask, 0][order], xy[mask, 1][order], "o-", c="C3", label="Pareto front")
    ax.set(xlabel=xl + UNITS.get(xl, ""), ylabel=yl + UNITS.get(yl, ""), title="Pareto front")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metric_vs_config(data: StudyData, path: Path) -> Path | None:
    """The first objective (its measured value) against each free dimension's choice."""
    if not data.dims:
        return None
    name = "sum of scaled metrics" if data.single else next(iter(data.objectives))
    ys = data.values if data.single else [t[name] for t in data.metrics]
    n = len(data.dims)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(4 * cols, 3.2 * rows))
    first = None
    y = np.asarray(ys, float)
    for k, (d, choices) in enumerate(data.dims.items()):
        ax = fig.add_subplot(rows, cols, k + 1, sharey=first)  # one y scale: panels compare at a glance
        first = first or ax
        labels = [str(c) for c in choices]
        idx = {lab: i for i, lab in enumerate(labels)}
        x = np.array([idx.get(str(c.get(d)), -1) for c in data.choices])
        ax.scatter(x[x >= 0], y[x >= 0], s=12, alpha=0.6, c=[f"C{i % 10}" for i in x[x >= 0]])
        means = [y[x == i].mean() if (x == i).any() else np.nan for i in range(len(labels))]
        ax.plot(range(len(labels)), means, "k_", ms=20, mew=2)  # the mean per choice
        ax.set_xticks(range(len(labels)), labels)
        ax.set(title=d, xlabel=f"{d} (choice)", ylabel=name if k % cols == 0 else None)
        if k % cols:
            ax.tick_params(labelleft=False)
    return _save(fig, path)


STUDY_PLOTS = {"history.png": plot_history, "pareto.png": plot_pareto, "metric_vs_config.png": plot_metric_vs_config}


def plot_study(data: StudyData, out: Path, names: tuple[str, ...] = tuple(STUDY_PLOTS)) -> list[Path]:
    """The ``names`` of :data:`STUDY_PLOTS` (history.png, pareto.png, metric_vs_config.png) in ``out``; nothing
    when no trial completed."""
    if not data.numbers:
        return []
    return [p for n in names if (p := STUDY_PLOTS[n](data, out / n)) is not None]
