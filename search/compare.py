"""Sample efficiency of samplers on one space: best-so-far vs trial, trials to the optimum.

Evaluations are deterministic for a given config (no latency metric), so they are memoised
across all runs: every sampler sees identical scores and the comparison costs one evaluation
per distinct point. The optimum is the exhaustive best when the space has at most
``exhaustive_limit`` points, else the best any run found (reported as such).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.runner import Evaluator, TrialResult
from qfx.search.space import SearchSpace
from qfx.search.study import run_study


class CachingEvaluator:
    """Wraps an Evaluator; identical configs are evaluated once."""

    def __init__(self, ev: Evaluator) -> None:
        self.ev = ev
        self.pristine = ev.pristine
        self.cache: dict[str, TrialResult] = {}
        self.eval_seconds: list[float] = []

    def evaluate(self, config: Any) -> TrialResult:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.ev.evaluate(config)
            self.eval_seconds.append(time.perf_counter() - t0)
        return self.cache[key]


def _score(res: TrialResult, metrics: dict[str, MetricSpec]) -> float:
    return sum(spec.scale * res.metric(k) for k, spec in metrics.items())


def compare_samplers(
    space: SearchSpace,
    ev: Evaluator,
    metrics: dict[str, MetricSpec],
    setup: StrategySetup,
    samplers: list[str],
    repeats: int,
    n_trials: int,
    out: Path,
    tolerance: float = 0.005,
    exhaustive_limit: int = 4096,
    progress: bool = True,
) -> dict[str, Any]:
    """Run each sampler ``repeats`` times (seeds 0..repeats-1); write compare.json/.png and a table.

    A multi-objective config is compared on the single objective sum(+-scale * metric), minus for
    metrics to minimise, maximised.
    """
    if not setup.sum_scaled_metrics:
        # one comparable number per trial: scaled metrics summed, minimised ones with a minus sign
        metrics = {
            k: MetricSpec(scale=m.scale if m.direction == "maximize" else -m.scale, direction=m.direction)
            for k, m in metrics.items()
        }
        setup = setup.model_copy(update={"sum_scaled_metrics": True, "direction": "maximize"})
    if "latency" in metrics or "latency_per_sample" in metrics:
        raise ValueError("compare-samplers memoises evaluations; drop latency metrics (they are not deterministic)")
    maximize = setup.direction == "maximize"
    cev = CachingEvaluator(ev)
    if space.size <= exhaustive_limit:
        scores = [_score(cev.evaluate(space.to_config(space.point(i))), metrics) for i in range(space.size)]
        optimum, optimum_kind = (max(scores) if maximize else min(scores)), "exhaustive"
    else:
        optimum, optimum_kind = None, "best found"
    curves: dict[str, list[list[float]]] = {}
    walls: dict[str, list[float]] = {}
    for s in samplers:
        curves[s], walls[s] = [], []
        for r in range(repeats):
            st = setup.model_copy(update={"sampler": s, "seed": r, "n_trials": n_trials, "n_jobs": 1})
            t0 = time.perf_counter()
            study, _ = run_study(space, cev, metrics, st, None, progress=False)  # type: ignore[arg-type]
            walls[s].append((time.perf_counter() - t0) / max(len(study.trials), 1))
            vals = [t.value for t in study.trials if t.value is not None]
            acc = np.maximum.accumulate(vals) if maximize else np.minimum.accumulate(vals)
            curves[s].append(acc.tolist())
    if optimum is None:
        allbest = [c[-1] for cs in curves.values() for c in cs if c]
        optimum = max(allbest) if maximize else min(allbest)
    per_eval = float(np.median(cev.eval_seconds)) if cev.eval_seconds else 0.0

    def reach(c: list[float], tol: float) -> int | None:
        for i, v in enumerate(c):
            if (v >= optimum - tol) if maximize else (v <= optimum + tol):
                return i + 1
        return None

    rows, summary = [], {}
    for s in samplers:
        hit = [reach(c, 1e-12) for c in curves[s]]
        near = [reach(c, tolerance) for c in curves[s]]

        def stat(xs: list[int | None]) -> str:
            ok = [x for x in xs if x is not None]
            return f"{np.mean(ok):.1f} ± {np.std(ok):.1f} ({len(ok)}/{len(xs)})" if ok else f"never (0/{len(xs)})"

        finals = [c[-1] for c in curves[s] if c]
        summary[s] = {
            "trials_to_optimum": hit,
            "trials_to_within_tol": near,
            "final_best": finals,
            "sampler_overhead_ms_per_trial": 1e3 * float(np.mean(walls[s])),
            "curves": curves[s],
        }
        rows.append(
            [
                s,
                f"{np.mean(finals):.4f} ± {np.std(finals):.4f}",
                stat(hit),
                stat(near),
                f"{1e3 * np.mean(walls[s]):.1f}",
                f"{1e3 * (np.mean(walls[s]) + per_eval):.1f}",
            ]
        )
    table = tabulate(
        rows,
        headers=[
            "sampler",
            "final best",
            "trials to optimum",
            f"trials to within {tolerance}",
            "ms/trial (memoised)",
            "ms/trial (est. unmemoised)",
        ],
        tablefmt="github",
    )
    result = {
        "objective": " + ".join(f"{m.scale:g}*{k}" for k, m in metrics.items()),
        "space_size": space.size,
        "optimum": optimum,
        "optimum_kind": optimum_kind,
        "n_trials": n_trials,
        "repeats": repeats,
        "tolerance": tolerance,
        "evaluation_ms": 1e3 * per_eval,
        "samplers": summary,
        "table": table,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    _plot(curves, optimum, optimum_kind, out / "compare.png")
    return result


def _plot(curves: dict[str, list[list[float]]], optimum: float, kind: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, (s, cs) in enumerate(curves.items()):
        n = min(len(c) for c in cs)
        a = np.array([c[:n] for c in cs])
        x = np.arange(1, n + 1)
        ax.plot(x, a.mean(0), color=f"C{i}", label=f"{s} (mean of {len(cs)})")
        ax.fill_between(x, a.min(0), a.max(0), color=f"C{i}", alpha=0.15)
    ax.axhline(optimum, ls="--", c="k", lw=1, label=f"optimum ({kind})")
    ax.set(xlabel="trial", ylabel="best objective so far", title="Sampler sample efficiency (band: min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
