"""Study plots: optimisation history, Pareto front, metric vs config choice.

Drawn on ``matplotlib.figure.Figure`` objects: no backend switch or pyplot state at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from optuna.trial import TrialState

if TYPE_CHECKING:
    import optuna

    from qfx.search.study import Objective


def _pareto_mask(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    s = points * np.where(maximize, 1.0, -1.0)
    mask = np.ones(len(s), bool)
    for i in range(len(s)):
        dominated = np.all(s >= s[i], axis=1) & np.any(s > s[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def plot_study(study: optuna.Study, objective: Objective, out: Path) -> list[Path]:
    trials = study.get_trials(False, states=(TrialState.COMPLETE,))
    if not trials:
        return []
    paths = []
    names = list(objective.metrics)
    nums = np.array([t.number for t in trials])
    vals = np.array([t.values for t in trials], dtype=float)
    dirs = [d.name.lower() == "maximize" for d in study.directions]
    label = "sum of scaled metrics" if objective.single else f"scaled {names[0]}"

    # history: objective (first) per trial and best so far
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    v = vals[:, 0]
    best = np.maximum.accumulate(v) if dirs[0] else np.minimum.accumulate(v)
    ax.scatter(nums, v, s=14, label="trial")
    ax.step(nums, best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=label, title="Optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=110)
    paths.append(out / "history.png")

    # Pareto front: the first two objectives, or accuracy vs average bitwidth for a single objective
    if len(names) >= 2 and not objective.single:
        xy, xl, yl, mx = vals[:, :2], f"scaled {names[0]}", f"scaled {names[1]}", dirs[:2]
    else:
        sw = [{**t.user_attrs["software_metrics"], **t.user_attrs["hardware_metrics"]} for t in trials]
        xy = np.array([[m["average_bitwidth"], m["accuracy"]] for m in sw], dtype=float)
        xl, yl, mx = "average bitwidth", "accuracy", [False, True]
    mask = _pareto_mask(xy, mx)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.scatter(xy[~mask, 0], xy[~mask, 1], s=14, c="0.6", label="dominated")
    order = np.argsort(xy[mask, 0])
    ax.plot(xy[mask, 0][order], xy[mask, 1][order], "o-", c="C3", label="Pareto front")
    ax.set(xlabel=xl, ylabel=yl, title="Pareto front")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    paths.append(out / "pareto.png")

    # metric vs config: the first objective against each free dimension's choice
    free = list(objective.space.free_dims)
    if free:
        n = len(free)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig = Figure(figsize=(4 * cols, 3.2 * rows))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, d in zip(axes.flat, free, strict=False):
            choices = [str(c) for c in objective.space.dims[d]]
            groups = [[t.values[0] for t in trials if t.params.get(d) == i] for i in range(len(choices))]
            for i, g in enumerate(groups):
                ax.scatter(np.full(len(g), i), g, s=12, alpha=0.6)
            ax.plot(range(len(choices)), [np.mean(g) if g else np.nan for g in groups], "k_", ms=20, mew=2)
            ax.set_xticks(range(len(choices)), choices)
            ax.set(title=d, ylabel=label if ax in axes[:, 0] else None)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "metric_vs_config.png", dpi=110)
        paths.append(out / "metric_vs_config.png")
    return paths
