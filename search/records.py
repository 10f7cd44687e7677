"""A trial's stored record, validated when a study is resumed: a journal or database file is untrusted input.

Fresh trials are written by :class:`~qfx.search.objective.Objective` from validated configurations; a resumed
study's trials are read back from a file someone may have edited. :func:`check_resumed` validates every finished
trial with the same rules a fresh one obeys — its params are a point of the space, its sampled configuration is
the one that point gives (so widths, nodes and formats are the space's), its values are finite and one per
objective, its metrics finite numbers and every objective's metric present — and returns the ones to skip, with
one reason each.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from qfx.search.config import MetricSpec
    from qfx.search.space import SearchSpace


RECORD = "qfx"  # the user attr holding a trial's TrialRecord (JSON)


class TrialRecord(BaseModel):
    """What a trial measured, stored as one user attr (one storage write) and validated whenever it is read back:
    a finished trial's configuration, metrics (raw and as scored), timings, budget slack; or why it failed or was
    refused. The objective metrics are also flat user attrs, the columns optuna-dashboard sorts on."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)  # no bool or "1.0" as a number
    sampled_config: dict[str, Any]
    software_metrics: dict[str, float] = {}
    hardware_metrics: dict[str, float] = {}
    scaled_metrics: dict[str, float] = {}
    timings: dict[str, float | bool] = {}
    constraints: dict[str, float] | None = None
    feasible: bool = True
    error: str | None = None
    refused: str | None = None

    @classmethod
    def of(cls, **fields: Any) -> TrialRecord:
        """A fresh trial's record from Python values (ints and numpy floats taken as numbers)."""
        return cls.model_validate(fields, strict=False)

    @property
    def metrics(self) -> dict[str, float]:
        return {**self.software_metrics, **self.hardware_metrics}


def write_record(trial: optuna.Trial, rec: TrialRecord, flat: dict[str, float] | None = None) -> None:
    """``rec`` as the trial's record, then ``flat`` as sortable numeric columns (public ``set_user_attr``)."""
    trial.set_user_attr(RECORD, rec.model_dump(mode="json", exclude_defaults=True))
    for k, v in (flat or {}).items():
        trial.set_user_attr(k, v)


def record_of(t: optuna.trial.FrozenTrial) -> TrialRecord | None:
    """The trial's validated record; None when it has none (running, killed, pruned early) or a stored one that
    does not validate (a resumed study's edited file: :func:`check_resumed` names it and the search skips it)."""
    raw = t.user_attrs.get(RECORD)
    try:
        return None if raw is None else TrialRecord.model_validate(raw)
    except ValidationError:
        return None


def config_of(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The configuration a trial evaluated (its record's); the params for a trial without one."""
    rec = record_of(t)
    return rec.sampled_config if rec is not None else dict(t.params)


def metrics_of(t: optuna.trial.FrozenTrial) -> dict[str, float]:
    rec = record_of(t)
    return {} if rec is None else rec.metrics


def feasible(t: optuna.trial.FrozenTrial) -> bool:
    rec = record_of(t)
    return True if rec is None else rec.feasible


def record_problem(t: optuna.trial.FrozenTrial, space: SearchSpace, metrics: dict[str, MetricSpec],
                   n_values: int) -> str | None:  # fmt: skip
    """Why trial ``t``'s stored record is not one a fresh trial could have written (None: it is)."""
    if t.state != TrialState.COMPLETE:
        return None
    try:
        point = space.point_of(t.params)
    except Exception as e:  # noqa: BLE001 - SpaceError or a type error on crafted params
        return f"params are not a point of the search space ({str(e)[:120]})"
    if RECORD not in t.user_attrs:
        return f"no {RECORD!r} record (written by another tool or an older qfx)"
    try:
        a = TrialRecord.model_validate(t.user_attrs[RECORD])
    except ValidationError as e:
        err = e.errors()[0]
        return f"user attr {'.'.join(map(str, (RECORD, *err['loc'])))}: {err['msg']}"
    expected = json.loads(json.dumps(space.to_config(point), default=str))
    if json.loads(json.dumps(a.sampled_config, default=str)) != expected:
        return "sampled_config is not the configuration its params give"
    got = {**a.software_metrics, **a.hardware_metrics}
    missing = [k for k in metrics if k not in got]
    if missing:
        return f"metric(s) {missing} missing"
    values = t.values or []
    if len(values) != n_values or not all(isinstance(v, float) and math.isfinite(v) for v in values):
        return f"values {str(values)[:60]} are not {n_values} finite number(s)"
    return None


def check_resumed(study: optuna.Study, space: SearchSpace, metrics: dict[str, MetricSpec], n_values: int,
                  where: str) -> dict[int, str]:  # fmt: skip
    """``{trial number: reason}`` of the finished trials whose records are refused; each is logged once,
    naming ``where`` (the storage) and the trial. The search goes on with the others."""
    import logging

    log = logging.getLogger("qfx.search")
    bad = {}
    for t in study.get_trials(False, states=(TrialState.COMPLETE,)):
        why = record_problem(t, space, metrics, n_values)
        if why is not None:
            bad[t.number] = why
            log.warning("%s: trial %d skipped: %s", where, t.number, why)
    return bad
