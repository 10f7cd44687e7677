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
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from qfx.search.trial_record import RECORD, TrialRecord, config_of, feasible, metrics_of, record_of, write_record

if TYPE_CHECKING:
    from qfx.search.config import MetricSpec
    from qfx.search.space import SearchSpace


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


__all__ = ["RECORD", "TrialRecord", "check_resumed", "config_of", "feasible", "metrics_of", "record_of",
           "record_problem", "write_record"]  # fmt: skip
