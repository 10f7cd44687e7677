"""The Optuna objective of a search: sample a point, evaluate its configuration, record the trial.

``Objective`` claims points across workers (enumerating samplers), stops at the trial cap, writes a trial's
metrics as flat user attrs in one storage call, and reports each finished trial to the progress bar and
``trials.jsonl``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import TrialState
from tqdm.auto import tqdm

from qfx.search.config import MetricSpec
from qfx.search.metrics import METRICS, scalarize, violations
from qfx.search.records import TrialRecord, record_of, write_record
from qfx.search.runner import Evaluator
from qfx.search.samplers import exhaustive_index
from qfx.search.space import SearchSpace
from qfx.search.storage import HEARTBEAT_S, Heartbeat, counted, fail_stale

log = logging.getLogger(__name__)
_CLAIM = "qfx:claimed"  # user attr: this trial checked its point was free and evaluates it
FINISHED = (TrialState.COMPLETE, TrialState.FAIL)  # what n_trials counts (PRUNED = stopped by a cap)


class _TrialError(Exception):
    """An evaluation failed: carries the attrs recorded for it; the original exception is its cause."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        super().__init__()
        self.attrs = attrs


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step)
    return trial.suggest_categorical(name, dist.choices)


@dataclass
class Objective:
    """Scores one trial: single value (sum of scaled metrics) or one value per metric."""

    space: SearchSpace
    evaluator: Evaluator
    metrics: dict[str, MetricSpec]
    single: bool
    exhaustive: bool = False
    unique: bool = False  # enumerating samplers (bruteforce, grid, exhaustive): never evaluate a point twice
    n_trials: int | None = None
    interrupted: bool = False
    constraints: dict[str, Any] = field(default_factory=dict)  # metric -> Bound (budgets)
    shared: bool = True  # other workers/threads may run trials at once: cap checks and point claims needed
    storage: Any = None  # the persistent storage (None: in memory): trials beat, killed workers' trials are failed
    progress: Progress | None = None  # bar and JSONL record of every finished trial
    hard_pruned: int = 0  # points refused before evaluation for breaking a hardware budget
    skipped: dict[int, str] = field(default_factory=dict)  # resumed trials whose stored records are refused
    _stale_checked: float = -1e9  # monotonic time of this worker's last stale-trial check
    _heartbeat: Heartbeat = field(default_factory=Heartbeat)  # one beating thread for this worker's trials

    @staticmethod
    def _claim(trial: optuna.Trial, point: dict[str, Any]) -> None:
        """Prune (uncounted) a trial whose point another trial holds: COMPLETE, claimed, waiting as a
        re-queue, or running with a lower number. Params are written before this check and the claim
        after it, so of two workers that drew the same point at once exactly one evaluates it."""
        held = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        for t in trial.study.get_trials(False, states=held):
            if t.number == trial.number or t.params != point:
                continue
            if t.state != TrialState.RUNNING or _CLAIM in t.user_attrs or t.number < trial.number:
                raise optuna.TrialPruned(f"point already taken by trial {t.number}")
        trial.set_user_attr(_CLAIM, True)

    def _check_budgets(self, trial: optuna.Trial, config: dict[str, Any]) -> dict[str, float] | None:
        """Hardware budgets are functions of the configuration: a point that breaks one is refused before
        any evaluation (pruned, not counted toward n_trials). Returns the hardware metrics it measured (handed
        to the evaluation), None when there is no hardware budget."""
        hard = _hard_budgets(self.constraints)
        if not hard:
            return None
        hw = self.evaluator.hardware(config)
        c = violations(hw.__getitem__, hard)
        if any(v > 0 for v in c.values()):
            _refuse(self, trial, config, hw, c)
        return hw

    @property
    def columns(self) -> list[str]:
        """Metrics written as flat numeric user attrs (columns optuna-dashboard sorts on): the budgeted ones. The
        objectives are the trial's values already (named; a single objective's parts are in the record). Each
        column is one more storage write per trial (an fsync'd append on a journal), so no more than these."""
        return [k for k in self.constraints if self.single or k not in self.metrics]

    @property
    def directions(self) -> list[str]:
        return ["maximize"] if self.single else [m.direction for m in self.metrics.values()]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        t0 = time.perf_counter()
        state, values, attrs, params = "FAIL", None, {}, None
        try:
            if self.storage is not None and time.monotonic() - self._stale_checked >= HEARTBEAT_S:
                self._stale_checked = time.monotonic()  # killed workers' trials, at most once a heartbeat period
                fail_stale(trial.study, self.storage)
            with self._heartbeat.watch(trial) if self.storage is not None else nullcontext():
                out, attrs, params = self._run(trial)
            state, values = "COMPLETE", [out] if self.single else out
            return out
        except _Refused as e:
            state, attrs = "PRUNED", e.attrs
            raise
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except _TrialError as e:
            attrs = e.attrs
            raise e.__cause__ from None
        finally:
            if self.progress is not None:
                self.progress.report(
                    _record(trial.number, state, values, trial.params, attrs, time.perf_counter() - t0)
                )

    def _run(self, trial: optuna.Trial) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        if self.exhaustive and exhaustive_index(trial.study, trial.number, _system_attrs(trial)) >= self.space.size:
            trial.study.stop()
            raise optuna.TrialPruned(f"all {self.space.size} points of the space have been tried")
        t0 = time.perf_counter()
        params = {d: _suggest(trial, d, dist) for d, dist in self.space.distributions.items()}
        point = self.space.point_of(params)
        t_sample = time.perf_counter() - t0
        if self.n_trials is not None and self.shared:
            # Exact total across workers: finished trials plus those running ahead of this one.
            # Checked after sampling so that a pruned trial carries a full point (BruteForceSampler
            # builds its tree from all trials and rejects partial ones). A killed worker's RUNNING
            # trial counts too: this worker then stops early and waits in _await_stale until the
            # stale check fails and re-queues it (not counted, see search.storage), then runs it.
            trials = trial.study.get_trials(False)
            taken = counted(trials) + sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
            if taken >= self.n_trials:
                trial.study.stop()
                raise optuna.TrialPruned(f"the study already has {self.n_trials} trials")
            if taken + 1 >= self.n_trials:
                trial.study.stop()  # this is the last trial the study needs: the loop ends after it
        if self.unique and self.shared:
            self._claim(trial, params)
        config = self.space.to_config(point)
        try:
            hw = self._check_budgets(trial, config)  # a hardware metric that cannot be computed fails the trial here
            # the budget check's hardware metrics, handed over (an evaluator of one argument gets none to take)
            res = self.evaluator.evaluate(config) if hw is None else self.evaluator.evaluate(config, hardware=hw)
        except _Refused:
            raise
        except Exception as e:
            fail = TrialRecord.of(error=traceback.format_exc(), sampled_config=config)  # the full story in the record
            write_record(trial, fail)
            raise _TrialError(fail.model_dump()) from e
        scaled = {k: spec.scale * res.metric(k) for k, spec in self.metrics.items()}
        rec = TrialRecord.of(software_metrics=res.software, hardware_metrics=res.hardware, scaled_metrics=scaled,
                          sampled_config=config, timings={"sample": t_sample, **res.timings})  # fmt: skip
        if self.constraints:
            c = violations(res.metric, self.constraints)
            for name, v in c.items():
                trial.set_constraint(name, v)  # Optuna-native: constraint-aware samplers read these
            rec.constraints, rec.feasible = c, all(v <= 0 for v in c.values())
        write_record(trial, rec, {k: float(res.metric(k)) for k in self.columns})
        attrs = rec.model_dump()
        return (scalarize(res.metric, self.metrics) if self.single else list(scaled.values())), attrs, params


HARD_LIMIT = 20  # refused points per requested trial before the study gives up on finding feasible ones


def _hard_budgets(constraints: dict[str, Any]) -> dict[str, Any]:

    return {k: b for k, b in constraints.items() if METRICS[k].kind == "hardware"}


def _refuse(obj: Objective, trial: optuna.Trial, config: dict[str, Any], hw: dict[str, float], c: dict) -> None:
    """Record a point that breaks a hardware budget (never evaluated) and prune its trial (uncounted)."""
    for name, v in c.items():
        trial.set_constraint(name, v)  # constraint-aware samplers learn the infeasible region from it
    rec = TrialRecord.of(hardware_metrics=hw, sampled_config=config, constraints=c, feasible=False,
                      refused="breaks a hardware budget: not evaluated")  # fmt: skip
    write_record(trial, rec)
    attrs = rec.model_dump()
    obj.hard_pruned += 1
    if obj.n_trials is not None and obj.hard_pruned > HARD_LIMIT * obj.n_trials:
        trial.study.stop()
        log.warning("%d sampled points broke the hardware budgets %s; stopping", obj.hard_pruned, list(c))
    raise _Refused(attrs)


class _Refused(optuna.TrialPruned):
    def __init__(self, attrs: dict[str, Any]) -> None:
        super().__init__("breaks a hardware budget: not evaluated")
        self.attrs = attrs


def _record(number: int, state: str, values: list[float] | None, params: dict[str, Any], attrs: dict[str, Any],
            duration_s: float | None) -> dict[str, Any]:  # fmt: skip
    return {
        "number": number,
        "state": state,
        "value": values,
        "params": params,
        "software_metrics": attrs.get("software_metrics", {}),
        "hardware_metrics": attrs.get("hardware_metrics", {}),
        "scaled_metrics": attrs.get("scaled_metrics", {}),
        "sampled_config": attrs.get("sampled_config", {}),
        "timings": attrs.get("timings", {}),
        "weakest_nodes": attrs.get("weakest_nodes", []),
        "feasible": attrs.get("feasible", True),
        "constraints": attrs.get("constraints"),
        "error": attrs.get("error"),
        "duration_s": duration_s,
    }


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration else None
    rec = record_of(t)
    return _record(t.number, t.state.name, t.values, t.params, {} if rec is None else rec.model_dump(), duration)


def _system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attrs (a re-queued one's ``failed_trial``), read through the study."""
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == trial.number:
            return t.system_attrs
    return {}


class Progress:
    """tqdm bar with trial count and best value so far; appends each finished trial to JSONL."""

    def __init__(self, total: int, jsonl: Path | None, single: bool, enabled: bool, maximize: bool = True) -> None:
        self.bar = tqdm(total=total, desc="search", unit="trial", disable=not enabled)
        self.jsonl = jsonl
        self.single = single
        self.maximize = maximize
        self.best: tuple[float, int] | None = None  # this worker's best feasible (value, trial), kept per trial
        self.complete = 0
        self._lock = threading.Lock()  # n_jobs > 1: trials finish in several threads

    def report(self, rec: dict[str, Any]) -> None:
        """One finished trial (called by the objective, so no callback has to deep-copy the trial)."""
        if self.jsonl is not None:
            with self._lock, open(self.jsonl, "a") as fh:
                fh.write(json.dumps(rec, default=str) + "\n")
        self.bar.update(1)
        if rec["state"] != "COMPLETE" or self.bar.disable:
            return
        self.complete += 1
        if self.single and rec["feasible"]:
            v = rec["value"][0]
            if self.best is None or (v > self.best[0] if self.maximize else v < self.best[0]):
                self.best = (v, rec["number"])
        if self.best is not None:
            self.bar.set_postfix(best=f"{self.best[0]:.4g}", trial=self.best[1])
        elif not self.single:
            self.bar.set_postfix(complete=self.complete)
