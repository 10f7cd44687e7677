"""A trial's typed record: what it measured, stored as one user attr and validated whenever it is read back."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel, ConfigDict, ValidationError

RECORD = "qfx"  # the user attr holding a trial's TrialRecord (JSON)


class TrialRecord(BaseModel):
    """What a trial measured, stored as one user attr (one storage write) and validated whenever it is read back:
    a finished trial's configuration, metrics (raw and as scored), timings, budget slack; or why it failed or was
    refused. Budgeted metrics are also flat user attrs, columns optuna-dashboard sorts on (the objectives are the
    trial's values)."""

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
