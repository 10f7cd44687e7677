"""Sample efficiency of samplers on one space: best-so-far vs trial, trials to the optimum.

Evaluations are deterministic for a given config (no latency metric), so they are memoised
across all runs: every sampler sees identical scores and the comparison costs one evaluation
per distinct point. The reference is the exhaustive optimum when the space has at most
``exhaustive_limit`` points, else the best of a separate long TPE run, labelled as such (never the
best of the compared runs themselves, which would be circular).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.metrics import scalarize, violations
from qfx.search.records import config_of, feasible
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

    def __getattr__(self, name: str) -> Any:  # the wrapped evaluator's data (x, hw, ...) for warm starts
        return getattr(self.ev, name)

    def evaluate(self, config: Any, hardware: dict[str, float] | None = None) -> TrialResult:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.ev.evaluate(config, hardware)
            self.eval_seconds.append(time.perf_counter() - t0)
        return self.cache[key]


def variant(setup: StrategySetup, name: str) -> StrategySetup:
    """``tpe`` or ``tpe+sensitivity`` (the sampler with ``warm_start = "sensitivity"``), validated."""
    sampler, _, warm = name.partition("+")
    return StrategySetup.model_validate({**setup.model_dump(), "sampler": sampler, "warm_start": warm or "none"})


def _curves(
    space: SearchSpace, cev: CachingEvaluator, metrics: dict[str, MetricSpec], setup: StrategySetup, sampler: str,
    seeds: range, n_trials: int, constraints: dict[str, Any] | None = None,
) -> tuple[list[list[float]], list[float], list[dict[str, Any] | None]]:  # fmt: skip
    """Best-so-far curves over the feasible evaluated trials (one per seed), wall time per evaluated trial and
    the configuration each run chose (its best feasible trial) of ``sampler`` under ``constraints``."""
    curves, walls, chosen = [], [], []
    maximize = setup.direction == "maximize"
    for r in seeds:
        st = variant(setup, sampler).model_copy(update={"seed": r, "n_trials": n_trials, "n_jobs": 1})
        t0 = time.perf_counter()
        study, _ = run_study(space, cev, metrics, st, None, progress=False, constraints=constraints)  # type: ignore[arg-type]
        done = [t for t in study.trials if t.value is not None]
        walls.append((time.perf_counter() - t0) / max(len(done), 1))
        ok = [t for t in done if feasible(t)]
        vals = [t.value for t in ok]
        curves.append((np.maximum.accumulate(vals) if maximize else np.minimum.accumulate(vals)).tolist())
        best = (max if maximize else min)(ok, key=lambda t: t.value) if ok else None
        chosen.append(config_of(best) if best else None)
    return curves, walls, chosen


def reference(
    space: SearchSpace, cev: CachingEvaluator, metrics: dict[str, MetricSpec], setup: StrategySetup,
    exhaustive_limit: int, reference_trials: int, constraints: dict[str, Any] | None = None,
) -> tuple[float, str, str]:  # fmt: skip
    """The value the samplers are measured against, and what it is: the exhaustive optimum when the space
    has at most ``exhaustive_limit`` points, else the best of one separate long TPE run (seed 10,000,
    ``reference_trials`` trials), labelled as such: never the best of the compared runs themselves.
    Returns (value, kind: "exhaustive" | "long run", description)."""
    maximize = setup.direction == "maximize"
    if space.size <= exhaustive_limit:
        results = [cev.evaluate(space.to_config(space.point(i))) for i in range(space.size)]
        ok = [r for r in results if all(v <= 0 for v in violations(r.metric, constraints or {}).values())]
        scores = [scalarize(r.metric, metrics) for r in ok] or [float("nan")]
        best = max(scores) if maximize else min(scores)
        return best, "exhaustive", f"exhaustive optimum over {space.size:,} points"
    (curve,), _, _ = _curves(space, cev, metrics, setup, "tpe", range(10_000, 10_001), reference_trials, constraints)
    return (
        curve[-1],
        "long run",
        (
            f"best of a separate {reference_trials}-trial TPE run (space of {space.size:,} points > exhaustive limit "
            f"{exhaustive_limit:,}: not a proven optimum)"
        ),
    )


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by ``points`` (minimized objectives, rows) and bounded by ``ref``: exact, by slicing the
    last objective (a sweep in 2-D); points not strictly better than ``ref`` in every objective add nothing."""
    p = np.asarray(points, float).reshape(-1, len(ref))
    p = p[np.all(p < ref, axis=1)]
    if not len(p):
        return 0.0
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    p = p[np.argsort(p[:, -1], kind="stable")]
    if p.shape[1] == 2:
        best = np.minimum.accumulate(p[:, 0])
        tops = np.append(p[1:, 1], ref[1])
        return float(np.sum((ref[0] - best) * (tops - p[:, 1])))
    tops = np.append(p[1:, -1], ref[-1])
    return float(sum(hypervolume(p[: i + 1, :-1], ref[:-1]) * (tops[i] - p[i, -1])
                     for i in range(len(p)) if tops[i] > p[i, -1]))  # fmt: skip


def hypervolumes(
    space: SearchSpace, cev: CachingEvaluator, metrics: dict[str, MetricSpec], setup: StrategySetup,
    samplers: list[str], seeds: range, n_trials: int, path: Path,
) -> dict[str, Any]:  # fmt: skip
    """Multi-objective configs: each sampler run as the multi-objective search it is; hypervolume of the completed
    trials' scaled objectives after every trial. The reference point is the worst value of every objective over
    all runs (nadir), so curves of different samplers are comparable; a table, curves and hypervolume.png."""
    points: dict[str, list[np.ndarray]] = {}
    for s in samplers:
        points[s] = []
        for r in seeds:
            st = variant(setup, s).model_copy(update={"seed": r, "n_trials": n_trials, "n_jobs": 1})
            study, _ = run_study(space, cev, metrics, st, None, progress=False)  # type: ignore[arg-type]
            sign = np.array([-1.0 if d.name == "MAXIMIZE" else 1.0 for d in study.directions])
            done = [t for t in study.trials if t.values is not None]
            points[s].append(np.array([t.values for t in done], float) * sign)  # as losses
    ref = np.max(np.concatenate([p for ps in points.values() for p in ps if len(p)]), axis=0)
    # a superset's volume is never smaller: the running max only removes rounding noise of the sums
    curves = {s: [np.maximum.accumulate([hypervolume(p[: k + 1], ref) for k in range(len(p))]).tolist()
                  for p in ps] for s, ps in points.items()}  # fmt: skip
    half = n_trials // 2
    rows = [[s, f"{np.mean([c[-1] for c in cs]):.4g} ± {np.std([c[-1] for c in cs]):.2g}",
             f"{np.mean([c[min(len(c), half) - 1] for c in cs]):.4g}"] for s, cs in curves.items()]  # fmt: skip
    table = tabulate(rows, headers=["sampler", "final hypervolume", f"at trial {half}"], tablefmt="github")
    _plot(curves, None, "", path, ylabel="hypervolume (scaled objectives, nadir reference)",
          title="Hypervolume of the feasible front vs trial, per sampler (band: min-max)")  # fmt: skip
    return {"reference_point": ref.tolist(), "curves": curves, "table": table,
            "points": {s: [p.tolist() for p in ps] for s, ps in points.items()}}  # fmt: skip


def _stat(xs: list[int | None]) -> str:
    ok = [x for x in xs if x is not None]
    return f"{np.mean(ok):.1f} ± {np.std(ok):.1f} ({len(ok)}/{len(xs)})" if ok else f"never (0/{len(xs)})"


def _reach(curve: list[float], optimum: float, tol: float, maximize: bool) -> int | None:
    """1-based trial at which the best-so-far comes within ``tol`` of ``optimum``."""
    for i, v in enumerate(curve):
        if (v >= optimum - tol) if maximize else (v <= optimum + tol):
            return i + 1
    return None


def _summarize(
    curves: list[list[float]], walls: list[float], chosen: list[Any], test: Any, optimum: float, tolerance: float,
    maximize: bool, per_eval: float,
) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """One sampler's figures (compare.json) and its table row (without the name)."""
    test_acc = [test.evaluate(c).software["accuracy"] for c in chosen if c is not None] if test else []
    hit = [_reach(c, optimum, 1e-12, maximize) for c in curves]
    near = [_reach(c, optimum, tolerance, maximize) for c in curves]
    finals = [c[-1] for c in curves if c]
    summary = {"trials_to_optimum": hit, "trials_to_within_tol": near, "final_best": finals,
               "sampler_overhead_ms_per_trial": 1e3 * float(np.mean(walls)), "curves": curves,
               "test_accuracy_of_chosen": test_acc}  # fmt: skip
    acc = f"{100 * np.mean(test_acc):.1f} ± {100 * np.std(test_acc):.1f}" if test_acc else "-"
    row = [f"{np.mean(finals):.4f} ± {np.std(finals):.4f}", _stat(hit), _stat(near), acc,
           f"{1e3 * np.mean(walls):.1f}", f"{1e3 * (np.mean(walls) + per_eval):.1f}"]  # fmt: skip
    return summary, row


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
    reference_trials: int | None = None,
    constraints: dict[str, Any] | None = None,
    test: Any = None,
) -> dict[str, Any]:
    """Run each sampler ``repeats`` times (seeds 0..repeats-1) against :func:`reference`; write
    compare.json/.png and a table. A multi-objective config is compared on ``scalarize(signed=True)``
    (maximised)."""
    hv = None
    if not setup.sum_scaled_metrics and len(metrics) > 1:
        out.mkdir(parents=True, exist_ok=True)
        hv = hypervolumes(space, CachingEvaluator(ev), metrics, setup, samplers, range(repeats), n_trials,
                          out / "hypervolume.png")  # fmt: skip
    if not setup.sum_scaled_metrics:
        # the signed sum (minimised metrics negated): what scalarize(signed=True) ranks, as a single objective
        metrics = {k: m.model_copy(update={"scale": -m.scale if m.direction == "minimize" else m.scale})
                   for k, m in metrics.items()}  # fmt: skip
        setup = setup.model_copy(update={"sum_scaled_metrics": True, "direction": "maximize"})
    if "latency" in metrics or "latency_per_sample" in metrics:
        raise ValueError("compare-samplers memoises evaluations; drop latency metrics (they are not deterministic)")
    maximize = setup.direction == "maximize"
    cev = CachingEvaluator(ev)
    ref = reference(space, cev, metrics, setup, exhaustive_limit, reference_trials or 10 * n_trials, constraints)
    optimum, optimum_kind, described = ref
    per_eval = float(np.median(cev.eval_seconds)) if cev.eval_seconds else 0.0
    rows, summary, curves = [], {}, {}
    for s in samplers:
        curves[s], walls, chosen = _curves(space, cev, metrics, setup, s, range(repeats), n_trials, constraints)
        summary[s], row = _summarize(curves[s], walls, chosen, test, optimum, tolerance, maximize, per_eval)
        rows.append([s, *row])
    target = "optimum" if optimum_kind == "exhaustive" else "reference"
    headers = ["sampler", "final best", f"trials to {target}", f"trials to within {tolerance}",
               "test acc % of chosen", "ms/trial (memoised)", "ms/trial (est. unmemoised)"]  # fmt: skip
    result = {
        "objective": " + ".join(f"{m.scale:g}*{k}" for k, m in metrics.items()),
        "space_size": space.size, "optimum": optimum, "optimum_kind": optimum_kind, "reference": described,
        "n_trials": n_trials,
        "repeats": repeats, "tolerance": tolerance, "evaluation_ms": 1e3 * per_eval, "samplers": summary,
        "table": f"reference: {optimum:.4f} ({described})\n" + tabulate(rows, headers=headers, tablefmt="github")
        + ("\nilp, NAME+ilp: the sensitivity table's evaluations (one per width choice of each free width dimension,"
           " plus up to 4) come before trial 1 and are not counted as trials" if any("ilp" in s for s in samplers)
           else ""),
        "hypervolume": hv,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    _plot(curves, optimum, described, out / "compare.png")
    return result


def _plot(curves: dict[str, list[list[float]]], optimum: float | None, kind: str, path: Path,
          ylabel: str = "best objective so far",
          title: str = "Best objective so far vs trial, per sampler (band: min-max)") -> None:  # fmt: skip
    import textwrap

    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]  # lines that coincide (TPE's random start-up) stay visible:
    marks = "os^Dv<>"  # each its own marker, at staggered trials, so a line under another still shows
    k = len(curves)
    for i, (s, cs) in enumerate(curves.items()):
        n = min(len(c) for c in cs)
        a = np.array([c[:n] for c in cs])
        x = np.arange(1, n + 1)
        every = (i % max(1, min(k, n)), max(k, n // 12 or 1))
        ax.plot(x, a.mean(0), color=f"C{i}", ls=styles[i % 4], lw=2 - 0.3 * (i % 3), marker=marks[i % len(marks)],
                ms=5, markevery=every, label=f"{s} (mean of {len(cs)})")
        ax.fill_between(x, a.min(0), a.max(0), color=f"C{i}", alpha=0.12)
    if optimum is not None:
        ax.axhline(optimum, ls="--", c="k", lw=1, label=textwrap.shorten(f"reference: {kind}", 60))
    ax.set(xlabel="trial", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)  # below the axes: never squeezes them
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
