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

from search.space import SearchSpace


class ExhaustiveSampler(BaseSampler):
    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.space.point(trial.number)[param_name]


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
