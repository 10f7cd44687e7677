"""The sampler table: every sampler a search can use, by name, in one place.

Each :class:`SamplerSpec` gives the factory (seeded), whether it handles several objectives, whether
it enumerates a finite space (each point once: trials claim their point, the study stops when the
space is exhausted) and a description; config validation, the CLI help, sampler construction and the
README read it. Enumerating samplers stop the study themselves in ``after_trial``. Budgets reach samplers as
Optuna trial constraints (``Trial.set_constraint``); ``constraints`` marks the samplers that use them.

``exhaustive`` visits point ``trial.number`` of the space in lexicographic order, so it
never repeats a point — even with several workers sharing one storage, because trial
numbers are unique per study — and the study stops once every point has been tried.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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
    """The i-th trial (see :func:`exhaustive_index`) visits point ``order(i)``: a seeded permutation of the
    space, ``(a * i + b) mod size`` with ``a`` coprime to the size, computed without enumerating (spaces of
    10^7+ points), so a run cut short is a uniform-looking sample rather than a corner of the space. No
    duplicates across workers: storages hand out unique trial numbers and every worker uses the same seed."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        n = space.size
        rng = random.Random(seed)
        self._a = 1 if n <= 2 else next(a for a in iter(lambda: rng.randrange(1, n), None) if math.gcd(a, n) == 1)
        self._b = rng.randrange(n) if n > 1 else 0
        self._index: dict[int, int] = {}  # trial number -> position in the order (threads write distinct keys)

    def order(self, i: int) -> int:
        """The space point index visited at position ``i`` of the seeded order."""
        return (self._a * i + self._b) % self.space.size

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
        return self.space.params(self.space.point(self.order(i)))[param_name]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        if self._index.pop(trial.number, -1) >= self.space.size - 1:
            study.stop()  # the last point of the space has been visited


def _stop_when_complete(study: optuna.Study, size: int) -> None:
    if len(study.get_trials(False, states=(optuna.trial.TrialState.COMPLETE,))) >= size:
        study.stop()


class _Grid(optuna.samplers.GridSampler):
    """Optuna's GridSampler over the free dims; stops the study once every point is COMPLETE (a trial
    pruned because another worker held its point does not count)."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        super().__init__({d: [space.encode(c) for c in space.dims[d]] for d in space.free_dims}, seed=seed)
        self._size = space.size

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        super().after_trial(study, trial, state, values)
        _stop_when_complete(study, self._size)


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

    def __init__(self, space: SearchSpace, seed: int) -> None:
        super().__init__(seed=seed)
        self._size = space.size

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except ValueError as e:
            if "mismatch" not in str(e):
                raise
        _stop_when_complete(study, self._size)


GRID_LIMIT = 1_000_000  # Optuna's GridSampler materialises and shuffles every point


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    factory: Callable[[SearchSpace, int], BaseSampler]  # (space, seed) -> sampler
    description: str
    multi_objective: bool = True
    enumerates: bool = False  # visits each point of a finite space once; trials claim their point
    max_points: int | None = None  # refuses larger spaces (the factory would materialise every point)
    constraints: bool = False  # reads trial constraints (budgets steer its search, beyond being recorded)


SAMPLERS: dict[str, SamplerSpec] = {}
ALIASES = {"brute": "bruteforce", "brute_force": "bruteforce", "brute-force": "bruteforce"}


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler; a second registration under the same name raises."""
    if spec.name in SAMPLERS or spec.name in ALIASES:
        raise ValueError(f"sampler {spec.name!r} is already registered")
    SAMPLERS[spec.name] = spec
    return spec


def unregister_sampler(name: str) -> SamplerSpec:
    return SAMPLERS.pop(name)


def sampler_spec(name: str) -> SamplerSpec:
    """The spec of ``name`` (aliases and case accepted); ValueError lists the registered names."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[key]


def make_sampler(name: str, space: SearchSpace, seed: int, n_objectives: int) -> BaseSampler:
    """Seeded sampler by name; refuses multi-objective studies for single-objective samplers and spaces
    larger than the sampler's ``max_points``."""
    spec = sampler_spec(name)
    if spec.max_points is not None and space.size > spec.max_points:
        raise ValueError(
            f"sampler {spec.name!r} would materialise and shuffle all {space.size:,} points of this space "
            f"(limit {spec.max_points:,}); use 'exhaustive' (visits points by trial number without enumerating "
            "them) or 'tpe'/'random'"
        )
    if n_objectives > 1 and not spec.multi_objective:
        multi = ", ".join(n for n, s in SAMPLERS.items() if s.multi_objective)
        raise ValueError(f"sampler {spec.name!r} is single-objective; use one of {multi}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return spec.factory(space, seed)


def sampler_help() -> str:
    """One line per sampler, for the CLI help and the README."""
    return "\n".join(f"{n}: {s.description}" for n, s in SAMPLERS.items())


_S = optuna.samplers
for _spec in (
    SamplerSpec(
        "tpe",
        lambda sp, s: _S.TPESampler(seed=s, multivariate=True),
        "Optuna TPE (multivariate)",
        constraints=True,
    ),  # fmt: skip
    SamplerSpec("random", lambda sp, s: _S.RandomSampler(seed=s), "uniform random"),
    SamplerSpec(
        "nsgaii", lambda sp, s: _S.NSGAIISampler(seed=s), "NSGA-II genetic algorithm", constraints=True
    ),  # fmt: skip
    SamplerSpec(
        "nsgaiii", lambda sp, s: _S.NSGAIIISampler(seed=s), "NSGA-III (many objectives)", constraints=True
    ),  # fmt: skip
    SamplerSpec("qmc", lambda sp, s: _S.QMCSampler(seed=s, warn_independent_sampling=False), "quasi-Monte Carlo"),
    SamplerSpec(
        "gp", lambda sp, s: _S.GPSampler(seed=s), "Gaussian-process Bayesian optimisation", constraints=True
    ),  # fmt: skip
    SamplerSpec(
        "cmaes",
        lambda sp, s: _S.CmaEsSampler(seed=s, warn_independent_sampling=False),
        "CMA-ES evolution strategy",
        multi_objective=False,
        constraints=True,
    ),
    SamplerSpec(
        "grid",
        lambda sp, s: _Grid(sp, s),
        "every point once, shuffled (Optuna grid)",
        enumerates=True,
        max_points=GRID_LIMIT,
    ),  # fmt: skip
    SamplerSpec(
        "bruteforce", lambda sp, s: _BruteForce(sp, s), "every point once (Optuna brute force)", enumerates=True
    ),  # fmt: skip
    SamplerSpec(
        "exhaustive", lambda sp, s: ExhaustiveSampler(sp), "every point once in order, any space size", enumerates=True
    ),  # fmt: skip
    SamplerSpec(
        "ilp",
        lambda sp, s: _S.TPESampler(seed=s, multivariate=True),
        "sensitivity table + integer program (scipy milp) under the budgets, then TPE refines",
        constraints=True,
    ),  # fmt: skip
):
    register_sampler(_spec)
