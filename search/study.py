"""Run an Optuna study over a SearchSpace and write its outputs.

Outputs in ``out_dir``: ``best.json``, ``trials.csv``, ``trials.json``, ``trials.jsonl``
(appended after every finished trial, so a crash loses nothing), ``best_model/`` (the
best quantized graph), ``history.png``, ``pareto.png``, ``metric_vs_config.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import TrialState
from tabulate import tabulate
from tqdm.auto import tqdm

from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.metrics import scalarize, violations
from qfx.search.plots import StudyData, pareto_mask, plot_study
from qfx.search.runner import Evaluator
from qfx.search.samplers import exhaustive_index, make_sampler, sampler_spec
from qfx.search.space import SearchSpace
from qfx.search.storage import GRACE_S, HEARTBEAT_S, counted, create_study, make_storage, set_user_attrs

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
    progress: _Progress | None = None  # bar and JSONL record of every finished trial

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

    @property
    def directions(self) -> list[str]:
        return ["maximize"] if self.single else [m.direction for m in self.metrics.values()]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        t0 = time.perf_counter()
        state, values, attrs, params = "FAIL", None, {}, None
        try:
            out, attrs, params = self._run(trial)
            state, values = "COMPLETE", [out] if self.single else out
            return out
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
        attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id) if self.exhaustive else {}
        if self.exhaustive and exhaustive_index(trial.study, trial.number, attrs) >= self.space.size:
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
            res = self.evaluator.evaluate(config)
        except Exception as e:
            fail = {"error": traceback.format_exc(), "sampled_config": config}  # the full story stays in the record
            set_user_attrs(trial, fail)
            raise _TrialError(fail) from e
        scaled = {k: spec.scale * res.metric(k) for k, spec in self.metrics.items()}
        attrs = {**res.software, **res.hardware}  # flat numeric attrs: sortable dashboard columns
        attrs.update(
            software_metrics=res.software,
            hardware_metrics=res.hardware,
            scaled_metrics=scaled,
            sampled_config=config,
            timings={"sample": t_sample, **res.timings},
        )
        if self.constraints:
            c = violations(res.metric, self.constraints)
            for name, v in c.items():
                trial.set_constraint(name, v)  # Optuna-native: constraint-aware samplers read these
            attrs.update(constraints=c, feasible=all(v <= 0 for v in c.values()))
        set_user_attrs(trial, attrs)
        return (scalarize(res.metric, self.metrics) if self.single else list(scaled.values())), attrs, params


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


def _trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    duration = t.duration.total_seconds() if t.duration else None
    return _record(t.number, t.state.name, t.values, t.params, t.user_attrs, duration)


class _Progress:
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


def config_key(t: optuna.trial.FrozenTrial) -> str:
    """A trial's configuration as one comparable string (equal configurations, equal keys)."""
    return json.dumps(t.user_attrs.get("sampled_config", t.params), sort_keys=True, default=str)


def draws(study: optuna.Study) -> Counter[str]:
    """How many completed trials drew each configuration (:func:`config_key`)."""
    return Counter(config_key(t) for t in study.get_trials(False, states=(TrialState.COMPLETE,)))


def best_trials(study: optuna.Study, distinct: bool = True) -> list[optuna.trial.FrozenTrial]:
    """The best feasible trial (single objective) or the Pareto front of the feasible trials, by number;
    with ``distinct`` (the default) one trial per configuration (the first that drew it)."""
    done = [t for t in study.get_trials(False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("feasible", True)]
    if not done:
        return []
    maximize = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    if len(maximize) == 1:
        pick = max if maximize[0] else min
        return [pick(done, key=lambda t: t.values[0])]  # the first of equals, as study.best_trial
    mask = pareto_mask(np.array([t.values for t in done], float), maximize)
    front = [t for t, m in zip(done, mask, strict=True) if m]
    if not distinct:
        return front
    seen: set[str] = set()
    return [t for t in front if not (config_key(t) in seen or seen.add(config_key(t)))]  # type: ignore[func-returns-value]


def _r(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def best_table(
    trials: list[optuna.trial.FrozenTrial], metric_names: list[str], drawn: Counter[str] | None = None
) -> str:
    """MASE's "Best trial(s)" table: number, software/hardware/scaled metrics, config; with ``drawn``
    (:func:`draws`) a column saying how many trials drew each configuration."""
    rows = []
    for t in trials:
        sw = {
            k: v for k, v in t.user_attrs["software_metrics"].items() if k in metric_names or k in ("loss", "accuracy")
        }
        hw = {
            k: v
            for k, v in t.user_attrs["hardware_metrics"].items()
            if k in metric_names or k in ("average_bitwidth", "memory_density")
        }
        cfg = {k: v["config"] for k, v in t.user_attrs["sampled_config"].items() if isinstance(v, dict)}
        cfg = {
            k: ("" if c["name"] == "integer" else f"{c['name']}:")
            + ",".join(f"{f.removesuffix('_width')}={x}" for f, x in c.items() if f != "name" and x != "NA")
            for k, c in cfg.items()
            if k != "default" and c.get("name") not in (None, "NA")
        }
        rows.append([t.number, _r(sw), _r(hw), _r(t.user_attrs["scaled_metrics"]), cfg])
        if drawn is not None:
            rows[-1].insert(1, drawn[config_key(t)])
    headers = ["number", "software_metrics", "hardware_metrics", "scaled_metrics", "config"]
    if drawn is not None:
        headers.insert(1, "trials")
    return tabulate(rows, headers=headers, tablefmt="orgtbl", showindex=True)


def study_data(study: optuna.Study, objective: Objective) -> StudyData:
    """The completed trials as the plain data the plots read (measured metrics, chosen values)."""
    trials = study.get_trials(False, states=(TrialState.COMPLETE,))
    free = objective.space.free_dims
    return StudyData(
        numbers=[t.number for t in trials],
        values=[t.values[0] for t in trials],
        metrics=[{**t.user_attrs["software_metrics"], **t.user_attrs["hardware_metrics"]} for t in trials],
        objectives={k: m.direction == "maximize" for k, m in objective.metrics.items()},
        single=objective.single,
        choices=[objective.space.values(objective.space.point_of(t.params)) for t in trials],
        dims={d: objective.space.dims[d] for d in free},
        feasible=[t.user_attrs.get("feasible", True) for t in trials],
    )


def _write_trials(trials: list[optuna.trial.FrozenTrial], out: Path, objective: Objective) -> None:
    records = [_trial_record(t) for t in trials]
    (out / "trials.json").write_text(json.dumps(records, indent=1, default=str))
    metric_keys = sorted({k for r in records for k in {**r["software_metrics"], **r["hardware_metrics"]}})
    free = objective.space.free_dims
    with open(out / "trials.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "value", *metric_keys, *free, "duration_s"])
        for r, t in zip(records, trials, strict=True):
            m = {**r["software_metrics"], **r["hardware_metrics"]}
            vals = objective.space.values(objective.space.point_of(t.params)) if len(t.params) == len(free) else {}
            w.writerow([r["number"], r["state"], json.dumps(r["value"]), *(m.get(k, "") for k in metric_keys),
                        *(vals.get(d, "") for d in free), r["duration_s"]])  # fmt: skip


BEST_KEYS = ("number", "value", "software_metrics", "hardware_metrics", "scaled_metrics", "sampled_config",
             "weakest_nodes")  # fmt: skip


MAX_SQNR_PLOTS = 3  # SQNR plots written for the first distinct best configurations; the rest: qfx debug


def _write_best_graphs(
    best: list[optuna.trial.FrozenTrial], out: Path, ev: Evaluator
) -> dict[int, list[dict[str, Any]]]:
    """best_model/ (the first best configuration's quantized graph), pareto/trial_N/ for the other distinct
    Pareto configurations, and SQNR plots of the first ``MAX_SQNR_PLOTS``; returns each one's weakest nodes.
    Plots and weakest nodes use the same batch (``Evaluator.SQNR_BATCH`` samples); they are computed here, for
    the distinct best configurations only, not in every trial."""
    from qfx.passes.debug import NumericsPass
    from qfx.passes.debug.views import plot_sqnr
    from qfx.passes.transforms.quantize import QuantizePass

    weakest = {}
    xb = ev.x[: ev.SQNR_BATCH]
    for i, t in enumerate(best):
        q = QuantizePass(t.user_attrs["sampled_config"])(ev.pristine).graph
        q.save(out / ("best_model" if i == 0 else f"pareto/trial_{t.number}"))
        weakest[t.number] = ev.weakest_nodes(q) if hasattr(ev, "weakest_nodes") else []
        if i < MAX_SQNR_PLOTS:
            NumericsPass(ev.pristine, xb)(q)
            name = "sqnr.png" if len(best) == 1 else f"sqnr_trial_{t.number}.png"
            plot_sqnr(q, out / name, f"trial {t.number}: output SQNR vs float per node ({len(xb)} samples)")
    return weakest


def write_outputs(study: optuna.Study, out: Path, objective: Objective) -> dict[str, Any]:
    """best.json, trials.csv/json, best_model/, plots; returns best.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    _write_trials(study.get_trials(False), out, objective)
    best = best_trials(study)
    drawn = draws(study)
    numbers: dict[str, list[int]] = {}
    for t in study.get_trials(False, states=(TrialState.COMPLETE,)):
        numbers.setdefault(config_key(t), []).append(t.number)
    weakest = _write_best_graphs(best, out, objective.evaluator) if best else {}
    best_json = {
        str(i): {**{k: _trial_record(t)[k] for k in BEST_KEYS}, "weakest_nodes": weakest.get(t.number, []),
                 "trials": drawn[config_key(t)], "trial_numbers": numbers.get(config_key(t), [t.number])}
        for i, t in enumerate(best)
    }  # fmt: skip
    (out / "best.json").write_text(json.dumps(best_json, indent=1, default=str))
    try:
        plot_study(study_data(study, objective), out)
    except Exception as e:  # noqa: BLE001 - plots must not lose the results
        log.warning("plots failed: %s", e)
    return best_json


class _OneLineFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback; keep the one line (the record holds the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and "failed with parameters" in msg:
            record.exc_info = None
            record.exc_text = None
        return not msg.endswith("failed with value None.")  # the line above already said it


def _await_stale(
    study: optuna.Study, n_trials: int, points: int | None = None, patience_s: float = 10 * GRACE_S
) -> bool:
    """After this worker's loop ended short of ``n_trials``: wait while other trials are RUNNING (live
    workers finish them; a killed worker's go stale and are re-queued). True when this worker must go on:
    a re-queued trial is waiting, or nothing runs and trials are missing (a running trial it counted was
    pruned) while the space (``points``, for enumerating samplers) has points left; False when nothing is
    left to do, or when the same trials stayed RUNNING for ``patience_s`` (long trials of live workers)."""
    seen: set[int] = set()
    since = time.monotonic()
    while counted(study.get_trials(False)) < n_trials:
        if study.get_trials(False, states=(TrialState.WAITING,)):
            return True
        running = {t.number for t in study.get_trials(False, states=(TrialState.RUNNING,))}
        if not running:
            return points is None or len(study.get_trials(False, states=(TrialState.COMPLETE,))) < points
        if running != seen:
            seen, since = running, time.monotonic()
        elif time.monotonic() - since > patience_s:
            log.warning("trials %s are still running in other workers; leaving them to finish", sorted(running))
            return False
        time.sleep(HEARTBEAT_S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # marks killed trials FAIL and re-queues them
    return False


def _open_study(
    objective: Objective, setup: StrategySetup, storage: str | None, study_name: str | None
) -> optuna.Study:
    """Create (or load, for a named persistent study) the study with the configured sampler; stale trials of
    killed workers are failed and re-queued before this worker starts."""
    directions = [setup.direction] if objective.single else objective.directions
    sampler = make_sampler(setup.sampler, objective.space, setup.seed, len(directions))
    study = create_study(
        storage, sampler=sampler, study_name=study_name, directions=directions, load_if_exists=study_name is not None
    )
    _describe(study, objective, setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if storage is not None:
            optuna.storages.fail_stale_trials(study)
    return study


def _describe(study: optuna.Study, objective: Objective, setup: StrategySetup) -> None:
    """Metric names and the space as study user attrs (what optuna-dashboard shows); a resumed study must
    have been created over the same space."""
    free = objective.space.free_dims
    space = {d: [objective.space.encode(c) for c in ch] for d, ch in objective.space.dims.items() if d in free}
    old = study.user_attrs.get("space")
    if old is not None and old != space:
        raise ValueError(
            f"study {study.study_name!r} was created over a different search space; use another --study-name "
            "or the config it was created with"
        )
    if old is None:
        study.set_user_attr("space", space)
        study.set_user_attr("space_size", objective.space.size)
        study.set_user_attr("sampler", setup.sampler)
        study.set_user_attr("metrics", {k: {"scale": m.scale, "direction": m.direction}
                                        for k, m in objective.metrics.items()})  # fmt: skip
    names = ["sum_of_scaled_metrics"] if objective.single else list(objective.metrics)
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def _optimize(study: optuna.Study, objective: Objective, setup: StrategySetup, persistent: bool) -> None:
    """Run trials until the cap, the timeout or the space stops the study; a persistent study's worker also
    waits for (and then runs) re-queued trials of killed workers."""
    deadline = None if setup.timeout is None else time.monotonic() + setup.timeout
    n_trials = objective.n_trials or setup.n_trials
    remaining = max(n_trials - counted(study.get_trials(False)), 0)
    while remaining:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                # persistent studies may need more trials than `remaining` (re-queued ones of killed
                # workers); the objective's cap stops the loop at n_trials
                n_trials=None if persistent else remaining,
                timeout=left,
                n_jobs=setup.n_jobs,
                catch=(Exception,),
                gc_after_trial=False,
            )
        points = objective.space.size if objective.unique else None
        if not persistent or not _await_stale(study, n_trials, points):
            break


def _warm_start(study: optuna.Study, objective: Objective) -> None:
    """Enqueue the greedy bit allocations of a per-node sensitivity analysis as the first trials."""
    from qfx.search.metrics import METRICS
    from qfx.search.sensitivity import sensitivity, space_frac, space_widths, warm_start_points

    space, ev = objective.space, objective.evaluator
    sens = sensitivity(ev, space_widths(space), space_frac(space))  # the fracs the trials will use
    budgets = {k: b for k, b in objective.constraints.items() if b.max is not None and METRICS[k].kind == "hardware"}
    single = objective.metrics if objective.single else None
    points = warm_start_points(sens, space, ev, budgets, objective=single, spread=0 if objective.single else 5)
    for p in points:
        study.enqueue_trial(p, skip_if_exists=True)
    log.info("warm start: %d sensitivity-guided trial(s) enqueued", len(points))


def run_study(
    space: SearchSpace,
    evaluator: Evaluator,
    metrics: dict[str, MetricSpec],
    setup: StrategySetup,
    out: Path | None,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool = True,
    tracebacks: bool = False,
    constraints: dict[str, Any] | None = None,
) -> tuple[optuna.Study, Objective]:
    """Create or resume a study and run it until ``setup.n_trials`` trials have finished in total.

    Trials that raise are recorded as FAIL and the study continues; Ctrl-C stops the study,
    keeps the trials finished so far and sets ``objective.interrupted``. ``constraints`` (metric -> Bound):
    budgets; each trial gets Optuna constraints (``Trial.set_constraint``) that constraint-aware samplers
    read; violating trials are recorded infeasible and never count as best.
    """
    spec = sampler_spec(setup.sampler)
    n_trials = min(setup.n_trials, space.size) if spec.name == "exhaustive" else setup.n_trials
    objective = Objective(space, evaluator, metrics, setup.sum_scaled_metrics, exhaustive=spec.name == "exhaustive",
                          n_trials=n_trials, unique=spec.enumerates, constraints=dict(constraints or {}),
                          shared=storage is not None or setup.n_jobs > 1)  # fmt: skip
    study = _open_study(objective, setup, storage, study_name)
    if setup.warm_start == "sensitivity" and not study.get_trials(False):
        _warm_start(study, objective)
    finished = counted(study.get_trials(False))
    remaining = max(n_trials - finished, 0)
    if finished:
        log.info("resuming study %r: %d trial(s) already finished, %d to go", study.study_name, finished, remaining)
    jsonl = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        jsonl = out / "trials.jsonl"
        if storage is None:  # a fresh in-memory study: do not mix in trials of an earlier run
            jsonl.unlink(missing_ok=True)
    bar = objective.progress = _Progress(remaining, jsonl, objective.single, progress, setup.direction == "maximize")
    # no callbacks: Optuna would deep-copy every trial for them; the objective stops the study at the cap
    one_line = _OneLineFailures()
    opt_log = logging.getLogger("optuna.study._optimize")
    if not tracebacks:
        opt_log.addFilter(one_line)
    try:
        _optimize(study, objective, setup, storage is not None)
    except KeyboardInterrupt:  # Optuna marks the running trial failed; finished ones are stored
        objective.interrupted = True
    finally:
        opt_log.removeFilter(one_line)
    bar.bar.close()
    return study, objective


def summarize(study: optuna.Study) -> dict[str, Any]:
    states = [t.state for t in study.get_trials(False)]
    return {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}


__all__ = ["Objective", "best_table", "best_trials", "make_storage", "run_study", "write_outputs"]
