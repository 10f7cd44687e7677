"""Optuna samplers by name (all seeded) and an exhaustive strategy.

``exhaustive`` visits point ``trial.number`` of the space in lexicographic order, so it
never repeats a point — even with several workers sharing one storage, because trial
numbers are unique per study — and the study stops once every point has been tried.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from qfx.search.space import SearchSpace


def exhaustive_index(study: optuna.Study, number: int, system_attrs: dict[str, Any]) -> int:
    """The space point a trial evaluates under ``exhaustive``: trial numbers in order, skipping the
    numbers taken by re-queued trials (a re-queue of a killed trial takes the original's point)."""
    orig = system_attrs.get("failed_trial", number)
    below = sum(1 for t in study.get_trials(deepcopy=False) if t.number < orig and "failed_trial" in t.system_attrs)
    return orig - below


class ExhaustiveSampler(BaseSampler):
    """Point i of the space for the i-th trial (see :func:`exhaustive_index`): no duplicates across
    workers because storages hand out unique trial numbers."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._index: dict[int, int] = {}  # trial number -> point index (threads write distinct keys)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        i = self._index.get(trial.number)
        if i is None:
            i = self._index[trial.number] = exhaustive_index(study, trial.number, trial.system_attrs)
        return self.space.point(i)[param_name]


class _BruteForce(optuna.samplers.BruteForceSampler):
    """Optuna's BruteForceSampler, tolerant of trials with partial parameters.

    Its tree is built from every trial in storage, and a trial another worker is still filling
    in (or one killed mid-sampling) makes it raise "param_name mismatch". Then this falls back to
    a seeded random choice (sampling) or keeps the study running (stop check) instead of crashing.
    """

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        try:
            return super().sample_independent(study, trial, param_name, param_distribution)
        except ValueError as e:
            if "mismatch" not in str(e):
                raise
            return optuna.samplers.RandomSampler(seed=trial.number).sample_independent(
                study, trial, param_name, param_distribution
            )

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except ValueError as e:
            if "mismatch" not in str(e):
                raise


GRID_LIMIT = 1_000_000  # Optuna's GridSampler materialises and shuffles every point


def make_sampler(name: str, space: SearchSpace, seed: int, n_objectives: int) -> BaseSampler:
    """Seeded sampler by name; ``cmaes`` is single-objective only; ``grid`` refuses spaces over GRID_LIMIT."""
    free = space.free_dims
    if name == "grid" and space.size > GRID_LIMIT:
        raise ValueError(
            f"sampler 'grid' would materialise and shuffle all {space.size:,} points of this space "
            f"(limit {GRID_LIMIT:,}); use 'exhaustive' (visits points by trial number without enumerating "
            "them) or 'tpe'/'random'"
        )
    if name == "exhaustive":
        return ExhaustiveSampler(space)
    if name == "cmaes" and n_objectives > 1:
        raise ValueError("sampler 'cmaes' is single-objective; use nsgaii, nsgaiii, tpe, random or gp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        factories = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "nsgaii": lambda: optuna.samplers.NSGAIISampler(seed=seed),
            "nsgaiii": lambda: optuna.samplers.NSGAIIISampler(seed=seed),
            "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
            "grid": lambda: optuna.samplers.GridSampler({d: list(range(n)) for d, n in free.items()}, seed=seed),
            "bruteforce": lambda: _BruteForce(seed=seed),
        }
        if name not in factories:
            raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join([*factories, 'exhaustive'])}")
        return factories[name]()
