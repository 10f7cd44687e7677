"""Per-trial search overhead outside evaluation vs a bare Optuna loop (ratio measured side by side).

Ours: ``run_study`` with an evaluator that returns constant metrics at once (so every microsecond is
sampling, cap checks, progress, records and storage writes). Bare: ``study.optimize`` with the same sampler
(from our sampler table), the same kind of storage (plain Optuna: in memory, JournalStorage, RDBStorage) and
the same distributions, objective returning a constant. Median wall time per trial in a window of early and
of late trials.

    python bench/search_overhead.py              # 500 trials, windows 1-100 and 401-500
    python bench/search_overhead.py --trials 2000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch
from tabulate import tabulate

from qfx.graph import trace
from qfx.passes.analysis import analyze
from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.runner import TrialResult
from qfx.search.samplers import make_sampler
from qfx.search.space import SearchSpace
from qfx.search.study import run_study
from qfx.zoo.models import build_model

SEEDS = {"default": {"name": ["integer"], "weight_width": [2, 3, 4, 5, 6, 8], "data_in_width": [4, 6, 8],
                     "bias_width": [4, 8]}}  # fmt: skip


class ConstantEvaluator:
    """Returns the same metrics at once: what remains of a trial is the search's own cost."""

    def __init__(self) -> None:
        self.res = TrialResult({"accuracy": 0.5, "loss": 1.0}, {"average_bitwidth": 6.0, "memory_density": 5.3})

    def evaluate(self, config: object, hardware: object = None) -> TrialResult:
        return self.res


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def _window(xs: list[float], lo: int, hi: int) -> float:
    return 1e3 * statistics.median(xs[lo:hi])


def ours(space: SearchSpace, sampler: str, url: str | None, n: int) -> list[float]:
    stamps = [time.perf_counter()]

    class Stamp(ConstantEvaluator):
        def evaluate(self, config: object, hardware: object = None) -> TrialResult:
            stamps.append(time.perf_counter())
            return self.res

    metrics = {"accuracy": MetricSpec(scale=1.0), "average_bitwidth": MetricSpec(scale=-0.01)}
    setup = StrategySetup(n_trials=n, sampler=sampler, seed=0)
    run_study(space, Stamp(), metrics, setup, None, storage=url, study_name="ours" if url else None, progress=False)
    return _intervals(stamps)


def bare(space: SearchSpace, sampler: str, url: str | None, n: int) -> list[float]:
    storage = None
    if url and url.startswith("journal:"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[8:]))
    elif url:
        storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, sampler=make_sampler(sampler, space, 0, 1), direction="maximize",
                                study_name="bare" if url else None)  # fmt: skip
    dists = space.distributions
    stamps = [time.perf_counter()]

    def objective(trial: optuna.Trial) -> float:  # what a user writes: the public suggest API
        for d, dist in dists.items():
            if isinstance(dist, optuna.distributions.IntDistribution):
                trial.suggest_int(d, dist.low, dist.high, step=dist.step)
            else:
                trial.suggest_categorical(d, dist.choices)
        stamps.append(time.perf_counter())
        return 0.5

    study.optimize(objective, n_trials=n)
    return _intervals(stamps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--storages", default="memory,journal,sqlite")
    ap.add_argument("--samplers", default="random,tpe")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("qfx").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    g = analyze(trace(build_model("jsc-s", 16, 5).eval(), torch.randn(8, 16)))
    space = SearchSpace(g, "name", SEEDS)
    n, w = args.trials, 100
    rows = []
    for kind in args.storages.split(","):
        for sampler in args.samplers.split(","):
            res = {}
            for who, fn in (("ours", ours), ("bare", bare)):
                with tempfile.TemporaryDirectory() as d:
                    url = {"memory": None, "journal": f"journal:{Path(d) / 'j.log'}",
                           "sqlite": f"sqlite:///{Path(d) / 's.db'}"}[kind]  # fmt: skip
                    res[who] = fn(space, sampler, url, n)
                    print(f"  {kind} / {sampler} / {who}: {n} trials done", flush=True)
            early = (_window(res["ours"], 0, w), _window(res["bare"], 0, w))
            late = (_window(res["ours"], n - w, n), _window(res["bare"], n - w, n))
            rows.append([kind, sampler, f"{early[0]:.2f}", f"{early[1]:.2f}", f"{early[0] / early[1]:.2f}x",
                         f"{late[0]:.2f}", f"{late[1]:.2f}", f"{late[0] / late[1]:.2f}x"])  # fmt: skip
    print(f"{len(space.free_dims)} parameters, {n} trials; median ms per trial (early: 1-{w}, late: {n - w + 1}-{n})")
    print(tabulate(rows, headers=["storage", "sampler", "ours early", "bare early", "ratio", "ours late", "bare late",
                                  "ratio"], tablefmt="github"))  # fmt: skip


if __name__ == "__main__":
    main()
