"""The life cycle of a search study: open (or resume) it with the configured sampler and storage, warm-start
it, run trials until the cap / timeout / space ends, wait for killed workers' trials; outputs are written by
:mod:`qfx.search.outputs` (re-exported here), trials run through :mod:`qfx.search.objective`.

Outputs in ``out_dir``: ``best.json``, ``trials.csv``, ``trials.json``, ``trials.jsonl``
(appended after every finished trial, so a crash loses nothing), ``best_model/`` (the
best quantized graph), ``history.png``, ``pareto.png``, ``metric_vs_config.png``.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.ilp import measure_table, proposals, uniform_points
from qfx.search.metrics import METRICS
from qfx.search.objective import FINISHED, HARD_LIMIT, Objective, Progress
from qfx.search.outputs import (
    MAX_SQNR_PLOTS,
    best_table,
    best_trials,
    completed,
    config_key,
    draws,
    study_data,
    write_outputs,
)
from qfx.search.records import check_resumed, feasible
from qfx.search.runner import Evaluator
from qfx.search.samplers import make_sampler, sampler_spec
from qfx.search.sensitivity import sensitivity, space_frac, space_widths, warm_start_points
from qfx.search.space import SearchSpace
from qfx.search.storage import GRACE_S, HEARTBEAT_S, counted, create_study, fail_stale, make_storage

log = logging.getLogger(__name__)


class _OneLineFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback; keep the one line (the record holds the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and "failed with parameters" in msg:
            record.exc_info = None
            record.exc_text = None
        return not msg.endswith("failed with value None.")  # the line above already said it


def _await_stale(
    study: optuna.Study, storage: Any, n_trials: int, points: int | None = None, patience_s: float = 10 * GRACE_S
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
        fail_stale(study, storage)  # marks killed trials FAIL and re-queues them
    return False


def _open_study(
    objective: Objective, setup: StrategySetup, storage: str | None, study_name: str | None
) -> optuna.Study:
    """Create (or load, for a named persistent study) the study with the configured sampler."""
    directions = [setup.direction] if objective.single else objective.directions
    sampler = make_sampler(setup.sampler, objective.space, setup.seed, len(directions))
    study, objective.storage = create_study(
        storage, sampler=sampler, study_name=study_name, directions=directions, load_if_exists=study_name is not None
    )
    _describe(study, objective, setup)
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
        refused = objective.hard_pruned
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
        if not persistent:
            # points refused for a hardware budget were not evaluated and do not count: draw again for them
            remaining = max(n_trials - counted(study.get_trials(False)), 0)
            if objective.hard_pruned > refused and objective.hard_pruned <= HARD_LIMIT * n_trials:
                continue
            break
        if not _await_stale(study, objective.storage, n_trials, points):
            break


def _warm_start(study: optuna.Study, objective: Objective) -> None:
    """Enqueue the greedy bit allocations of a per-node sensitivity analysis as the first trials."""

    space, ev = objective.space, objective.evaluator
    sens = sensitivity(ev, space_widths(space), space_frac(space))  # the fracs the trials will use
    budgets = {k: b for k, b in objective.constraints.items() if b.max is not None and METRICS[k].kind == "hardware"}
    single = objective.metrics if objective.single else None
    points = warm_start_points(sens, space, ev, budgets, objective=single, spread=0 if objective.single else 5)
    for p in points:
        study.enqueue_trial(p, skip_if_exists=True)
    log.info("warm start: %d sensitivity-guided trial(s) enqueued", len(points))


def _uniform(objective: Objective) -> list[dict[str, Any]]:
    """Optuna parameters of the widest uniform-width point within the hardware budgets (none when no such)."""

    space = objective.space
    budgets = {k: b for k, b in objective.constraints.items() if METRICS[k].kind == "hardware"}
    return [space.params(p) for p in uniform_points(space, objective.evaluator, budgets)]


def anchor_trial(study: optuna.Study, objective: Objective) -> optuna.trial.FrozenTrial | None:
    """The finished feasible trial of the uniform anchor (see ``run_study(anchor=True)``), or None."""
    want = _uniform(objective)
    for t in completed(study, objective.skipped):
        if want and t.params == want[0] and feasible(t):
            return t
    return None


def _warm_start_ilp(study: optuna.Study, objective: Objective) -> None:
    """Enqueue the integer program's optimum under the hardware budgets (and, for hardware objectives of a
    multi-objective search, its optima over a sweep of budgets) as the first trials."""

    space, ev = objective.space, objective.evaluator
    budgets = {k: b for k, b in objective.constraints.items() if METRICS[k].kind == "hardware"}
    sweep = [k for k in objective.metrics if METRICS[k].kind == "hardware" and k not in budgets]
    table = measure_table(space, ev, list(dict.fromkeys([*budgets, *sweep])))
    points = proposals(table, space, ev, budgets, sweep if not objective.single or not budgets else None)
    for p in points:
        study.enqueue_trial(p, skip_if_exists=True)
    approx = [k for k, ok in table.additive.items() if not ok]
    log.info(
        "ilp: sensitivity table of %d dims from %d evaluations; %d point(s) enqueued%s",
        len(table.dims), table.evaluations, len(points),
        f" ({', '.join(approx)} not additive: each point checked against the real metric)" if approx else "",
    )  # fmt: skip
    if not points:
        log.warning("ilp: no point of the space meets the budgets %s by the model; the sampler continues", budgets)


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
    anchor: bool = False,
) -> tuple[optuna.Study, Objective]:
    """Create or resume a study and run it until ``setup.n_trials`` trials have finished in total.

    Trials that raise are recorded as FAIL and the study continues; Ctrl-C stops the study,
    keeps the trials finished so far and sets ``objective.interrupted``. ``constraints`` (metric -> Bound):
    budgets; each trial gets Optuna constraints (``Trial.set_constraint``) that constraint-aware samplers
    read; violating trials are recorded infeasible and never count as best. ``anchor``: the widest uniform-width
    point within the hardware budgets is the first trial (:func:`anchor_trial` finds it afterwards).
    """
    spec = sampler_spec(setup.sampler)
    n_trials = min(setup.n_trials, space.size) if spec.name == "exhaustive" else setup.n_trials
    objective = Objective(space, evaluator, metrics, setup.sum_scaled_metrics, exhaustive=spec.name == "exhaustive",
                          n_trials=n_trials, unique=spec.enumerates, constraints=dict(constraints or {}),
                          shared=storage is not None or setup.n_jobs > 1)  # fmt: skip
    study = _open_study(objective, setup, storage, study_name)
    fresh = _check_resumed(study, objective, storage)
    if anchor and fresh:
        for p in _uniform(objective):
            study.enqueue_trial(p, skip_if_exists=True)
    if setup.warm_start == "sensitivity" and fresh:
        _warm_start(study, objective)
    if (setup.warm_start == "ilp" or spec.name == "ilp") and fresh:
        _warm_start_ilp(study, objective)
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
    bar = objective.progress = Progress(remaining, jsonl, objective.single, progress, setup.direction == "maximize")
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


def _check_resumed(study: optuna.Study, objective: Objective, storage: str | None) -> bool:
    """True for a fresh study. A resumed study's records come from a file: validated like fresh ones, bad ones
    skipped (``objective.skipped``); a record Optuna itself cannot read refuses the study, naming the storage.
    Then the trials of killed workers are failed and re-queued, before this worker starts."""
    where = _safe_url(storage or "memory")
    try:
        trials = study.get_trials(False)
    except Exception as e:  # noqa: BLE001 - whatever Optuna raises on an edited or corrupted record
        raise ValueError(
            f"{where}: study {study.study_name!r} holds a trial record that cannot be read ({type(e).__name__}: "
            f"{str(e)[:120]}); the file was edited or corrupted: use another --study-name"
        ) from None
    if trials:
        n_values = 1 if objective.single else len(objective.metrics)
        objective.skipped = check_resumed(study, objective.space, objective.metrics, n_values, where)
        if objective.storage is not None:  # trials of killed workers: failed and re-queued before this one starts
            fail_stale(study, objective.storage)
    return not trials


def _safe_url(storage: str) -> str:
    """A storage URL fit to print: a password in it is masked."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", storage)


def summarize(study: optuna.Study) -> dict[str, Any]:
    states = [t.state for t in study.get_trials(False)]
    return {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}


__all__ = [
    "FINISHED",
    "anchor_trial",
    "MAX_SQNR_PLOTS",
    "Objective",
    "best_table",
    "best_trials",
    "config_key",
    "draws",
    "make_storage",
    "run_study",
    "study_data",
    "summarize",
    "write_outputs",
]
