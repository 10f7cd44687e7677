"""Search results: best / Pareto trials by distinct configuration, the Best table, and the output files
(``best.json``, ``trials.csv/json``, ``best_model/``, ``pareto/``, plots).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from tabulate import tabulate

from qfx.graph.background import beside
from qfx.passes.debug import NumericsPass
from qfx.passes.debug.views import plot_sqnr
from qfx.search.objective import Objective, trial_record
from qfx.search.plots import StudyData, pareto_mask, plot_study
from qfx.search.records import config_of, feasible, metrics_of
from qfx.search.runner import Evaluator

log = logging.getLogger(__name__)


def config_key(t: optuna.trial.FrozenTrial) -> str:
    """A trial's configuration as one comparable string (equal configurations, equal keys)."""
    return json.dumps(config_of(t), sort_keys=True, default=str)


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
    done = [t for t in completed(study, skip) if feasible(t)]
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


TABLE_COLS = 120  # the Best table fits a terminal this wide; the full record of every trial is in best.json

_ROLE = {"data_in": "in", "weight": "w", "bias": "b"}


def _short(dim: str) -> str:
    """A free dimension's column label: ``seq_blocks_0/data_in_width`` -> ``seq_blocks_0 in``."""
    unit, _, field = dim.rpartition("/")
    for role, s in _ROLE.items():
        field = field.replace(role, s)
    field = field.replace("_frac_width", ".f").replace("_width", "").replace("_exponent", ".e")
    return f"{unit} {field}"


def _choice(v: Any) -> str:
    """A chosen value as table text: a width as is, a unit's whole configuration compactly."""
    if isinstance(v, dict):
        if v.get("name") in (None, "NA"):
            return "float"
        return ("" if v["name"] == "integer" else f"{v['name']}:") + " ".join(
            f"{_short('/' + k).strip()}{x}" for k, x in v.items() if k != "name" and x != "NA"
        )
    return "float" if v == "NA" else str(v)


def _num(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def best_table(
    trials: list[optuna.trial.FrozenTrial],
    metric_names: list[str],
    drawn: Counter[str] | None = None,
    space: Any = None,
    budgets: Collection[str] = (),
) -> str:
    """MASE's "Best trial(s)" table, made to fit :data:`TABLE_COLS` columns: trial, how many trials drew the
    configuration (with ``drawn``), every objective and budget metric as a number, and the chosen value of
    every free dimension of ``space``: one column per dimension when that fits, else a second table with one
    row per dimension and one column per trial (in as many blocks as the width needs)."""
    shown = list(dict.fromkeys(["accuracy", *metric_names, *budgets]))
    heads = ["trial", *(["drawn"] if drawn is not None else []), *shown]
    rows = []
    for t in trials:
        m = metrics_of(t)
        n = [drawn[config_key(t)]] if drawn is not None else []
        rows.append([t.number, *n, *(_num(m.get(k)) for k in shown)])
    if space is None or not space.free_dims:
        return tabulate(rows, headers=heads, tablefmt="github")
    free = list(space.free_dims)
    chosen = [space.values(space.point_of(t.params)) for t in trials]
    wide = tabulate([r + [_choice(c[d]) for d in free] for r, c in zip(rows, chosen, strict=True)],
                    headers=heads + [_short(d) for d in free], tablefmt="github")  # fmt: skip
    if max(map(len, wide.splitlines())) <= TABLE_COLS:
        return wide
    parts = [tabulate(rows, headers=heads, tablefmt="github"), "", "chosen values (a column per trial):"]
    label = max(len(_short(d)) for d in free) + 4
    per = max(1, (TABLE_COLS - label) // (max(len(_choice(c[d])) for c in chosen for d in free) + 5))
    for i in range(0, len(trials), per):
        block = list(range(i, min(i + per, len(trials))))
        body = [[_short(d), *(_choice(chosen[j][d]) for j in block)] for d in free]
        parts.append(tabulate(body, headers=["dimension", *(f"t{trials[j].number}" for j in block)], tablefmt="github"))
    return "\n".join(parts)


def study_data(study: optuna.Study, objective: Objective) -> StudyData:
    """The completed trials as the plain data the plots read (measured metrics, chosen values)."""
    trials = completed(study, objective.skipped)
    free = objective.space.free_dims
    return StudyData(
        numbers=[t.number for t in trials],
        values=[t.values[0] for t in trials],
        metrics=[metrics_of(t) for t in trials],
        objectives={k: m.direction == "maximize" for k, m in objective.metrics.items()},
        single=objective.single,
        choices=[objective.space.values(objective.space.point_of(t.params)) for t in trials],
        dims={d: objective.space.dims[d] for d in free},
        feasible=[feasible(t) for t in trials],
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
        q = ev.scored_graph(config_of(t), copy_weights=False)  # fine-tuned as scored (QAT)
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
    _clear_previous(out)
    data = None
    try:
        data = study_data(study, objective)
    except Exception as e:  # noqa: BLE001 - plots must not lose the results
        log.warning("plots failed: %s", e)
    with beside(lambda: _plots(data, out, ("metric_vs_config.png", "pareto.png"))):  # in a worker thread meanwhile
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
                     **({"anchor": selection["anchor"]} if i == 0 and "anchor" in (selection or {}) else {}),
                     **({"pick": selection["pick"]} if i == 0 and "pick" in (selection or {}) else {})}
            for i, t in enumerate(best)
        }  # fmt: skip
        (out / "best.json").write_text(json.dumps(best_json, indent=1, default=str))
        _plots(data, out, ("history.png",))
    owned = [n for n in OWNED if (out / n.rstrip("/")).exists()]
    (out / MANIFEST).write_text(json.dumps({"written_by": "qfx search", "files": owned}, indent=1))
    return best_json


MANIFEST = "outputs.json"  # what the last write_outputs wrote into OUT: the next run removes exactly these first
OWNED = ("best.json", "trials.json", "trials.csv", "best_model/", "pareto/", "sqnr.png", "history.png", "pareto.png",
         "metric_vs_config.png", "export/")  # fmt: skip


def _clear_previous(out: Path) -> None:
    """Remove what an earlier search wrote into ``out`` (see :func:`clear_owned`); a stale ``pareto/`` or
    ``export/`` of a run before manifests too. The baseline checkpoint and the trial journal are kept."""
    clear_owned(out, MANIFEST, OWNED, ("pareto/", "export/"))


def clear_owned(out: Path, manifest: str, owned: Iterable[str], always: Iterable[str] = ()) -> None:
    """Remove the names an earlier run listed in ``out/manifest`` that are among ``owned`` (plus ``always``),
    so every output is this run's. Never follows a link: a link is removed, not its target."""
    m = out / manifest
    owned = set(owned)
    names = set(always)
    if m.is_file() and not m.is_symlink():
        try:
            listed = json.loads(m.read_text()).get("files", [])
        except (ValueError, AttributeError):
            listed = []
        names |= {n for n in listed if isinstance(n, str) and n in owned}  # only names qfx itself writes
    for n in sorted(names):
        p = out / n.rstrip("/")
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
