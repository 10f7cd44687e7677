"""Search results: best / Pareto trials by distinct configuration, the Best table, and the output files
(``best.json``, ``trials.csv/json``, ``best_model/``, ``pareto/``, plots).
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from tabulate import tabulate

from qfx.graph.fork import beside
from qfx.passes.debug import NumericsPass
from qfx.passes.debug.views import plot_sqnr
from qfx.passes.transforms.quantize import QuantizePass
from qfx.search.objective import Objective, trial_record
from qfx.search.plots import StudyData, pareto_mask, plot_study
from qfx.search.runner import Evaluator

log = logging.getLogger(__name__)


def config_key(t: optuna.trial.FrozenTrial) -> str:
    """A trial's configuration as one comparable string (equal configurations, equal keys)."""
    return json.dumps(t.user_attrs.get("sampled_config", t.params), sort_keys=True, default=str)


def completed(study: optuna.Study, skip: Collection[int] = ()) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials, less ``skip`` (resumed trials whose stored records were refused, see
    :mod:`qfx.search.records`)."""
    return [t for t in study.get_trials(False, states=(TrialState.COMPLETE,)) if t.number not in skip]


def draws(study: optuna.Study, skip: Collection[int] = ()) -> Counter[str]:
    """How many completed trials drew each configuration (:func:`config_key`)."""
    return Counter(config_key(t) for t in completed(study, skip))


def best_trials(
    study: optuna.Study, distinct: bool = True, skip: Collection[int] = ()
) -> list[optuna.trial.FrozenTrial]:
    """The best feasible trial (single objective) or the Pareto front of the feasible trials, by number;
    with ``distinct`` (the default) one trial per configuration (the first that drew it); ``skip``: trial
    numbers left out."""
    done = [t for t in completed(study, skip) if t.user_attrs.get("feasible", True)]
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
    trials = completed(study, objective.skipped)
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
    records = [trial_record(t) for t in trials]
    for r in records:  # a skipped record is kept, marked, with none of its (refused) contents read
        if r["number"] in objective.skipped:
            r.update(skipped=objective.skipped[r["number"]], software_metrics={}, hardware_metrics={})
    (out / "trials.json").write_text(json.dumps(records, indent=1, default=str))
    metric_keys = sorted({k for r in records for k in {**r["software_metrics"], **r["hardware_metrics"]}})
    free = objective.space.free_dims
    with open(out / "trials.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "value", *metric_keys, *free, "duration_s"])
        for r, t in zip(records, trials, strict=True):
            m = {**r["software_metrics"], **r["hardware_metrics"]}
            ok = len(t.params) == len(free) and t.number not in objective.skipped
            vals = objective.space.values(objective.space.point_of(t.params)) if ok else {}
            w.writerow([r["number"], r["state"], json.dumps(r["value"]), *(m.get(k, "") for k in metric_keys),
                        *(vals.get(d, "") for d in free), r["duration_s"]])  # fmt: skip


BEST_KEYS = ("number", "value", "software_metrics", "hardware_metrics", "scaled_metrics", "sampled_config",
             "weakest_nodes")  # fmt: skip


MAX_SQNR_PLOTS = 3  # distinct best configurations drawn in sqnr.png; the rest: qfx debug --graph OUT/pareto/...


def _write_best_graphs(
    best: list[optuna.trial.FrozenTrial], out: Path, ev: Evaluator
) -> dict[int, list[dict[str, Any]]]:
    """best_model/ (the first best configuration's quantized graph), pareto/trial_N/ for the other distinct
    Pareto configurations, and one sqnr.png drawing the first ``MAX_SQNR_PLOTS`` of them; returns each one's
    weakest nodes. The plot and weakest nodes use the same batch (``Evaluator.SQNR_BATCH`` samples); they are
    computed here, for the distinct best configurations only, not in every trial."""

    weakest = {}
    xb = ev.x[: ev.SQNR_BATCH]
    drawn = {}
    for i, t in enumerate(best):
        q = QuantizePass(t.user_attrs["sampled_config"], copy_weights=False)(ev.pristine).graph  # saved: read only
        q.save(out / ("best_model" if i == 0 else f"pareto/trial_{t.number}"))
        weakest[t.number] = ev.weakest_nodes(q) if hasattr(ev, "weakest_nodes") else []
        if i < MAX_SQNR_PLOTS:
            NumericsPass(ev.pristine, xb)(q)
            drawn[f"trial {t.number}"] = q
    if drawn:
        what = "best configuration" if len(drawn) == 1 else f"first {len(drawn)} Pareto configurations"
        plot_sqnr(drawn, out / "sqnr.png", f"Output SQNR vs float per node, {what} ({len(xb)} samples)")
    return weakest


def _plots(data: StudyData | None, out: Path, names: tuple[str, ...]) -> None:
    """``names`` of the study plots from ``data`` (None: it could not be read; nothing drawn)."""
    try:
        if data is not None:
            plot_study(data, out, names)
    except Exception as e:  # noqa: BLE001 - plots must not lose the results
        log.warning("plots failed: %s", e)


def write_outputs(
    study: optuna.Study,
    out: Path,
    objective: Objective,
    best: list[optuna.trial.FrozenTrial] | None = None,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """best.json, trials.csv/json, best_model/, plots; returns best.json's content. ``best``: the reported
    trials (default :func:`best_trials`); ``selection``: split sizes and each candidate's selection/test
    figures (:mod:`qfx.search.selection`), written beside the search figures."""
    out.mkdir(parents=True, exist_ok=True)
    data = None
    try:
        data = study_data(study, objective)
    except Exception as e:  # noqa: BLE001 - plots must not lose the results
        log.warning("plots failed: %s", e)
    with beside(lambda: _plots(data, out, ("metric_vs_config.png", "pareto.png"))):  # on another core meanwhile
        _write_trials(study.get_trials(False), out, objective)
        best = best_trials(study, skip=objective.skipped) if best is None else best
        figs = (selection or {}).get("trials", {})
        drawn = draws(study, objective.skipped)
        numbers: dict[str, list[int]] = {}
        for t in completed(study, objective.skipped):
            numbers.setdefault(config_key(t), []).append(t.number)
        weakest = _write_best_graphs(best, out, objective.evaluator) if best else {}
        best_json = {
            str(i): {**{k: trial_record(t)[k] for k in BEST_KEYS}, "weakest_nodes": weakest.get(t.number, []),
                     "trials": drawn[config_key(t)], "trial_numbers": numbers.get(config_key(t), [t.number]),
                     **({"split_sizes": selection["splits"], **figs[t.number]} if t.number in figs else {}),
                     **({"anchor": selection["anchor"]} if i == 0 and "anchor" in (selection or {}) else {})}
            for i, t in enumerate(best)
        }  # fmt: skip
        (out / "best.json").write_text(json.dumps(best_json, indent=1, default=str))
        _plots(data, out, ("history.png",))
    return best_json
