"""Selection that generalizes: the search's best candidates re-scored on a held-out split, chosen there.

A small validation split is easy to overfit: the configuration that scores best on it is often not the
one that does best on new data. With ``[search.strategy.selection] fraction > 0`` the evaluation split is
cut in two (stratified, seeded): the search scores on one part, and its ``top_k`` best distinct feasible
configurations are re-scored on the other, the *selection* split; the reported best is the best there.
Every candidate also gets its test-split figures (reported, never used to choose).
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import optuna

from qfx.search.config import ConfigError
from qfx.search.metrics import scalarize
from qfx.search.outputs import best_trials, completed
from qfx.search.records import config_of, feasible
from qfx.search.study import anchor_trial
from qfx.zoo.data import Split
from qfx.zoo.train import predict


def split_off(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(search part, selection part)`` of ``split``: ``fraction`` of it held out, stratified by label."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(split)))
    y = split.y.numpy()
    counts = {c: int((y == c).sum()) for c in set(y.tolist())}
    k, n = len(counts), len(idx)
    held = math.ceil(fraction * n)  # what scikit-learn holds out
    if held < k or n - held < k:
        lo, hi = k / n, 1 - k / n
        raise ConfigError(
            f"[search.strategy.selection] fraction = {fraction:g} holds out {held} of {n} evaluation rows; each of "
            f"the {k} classes needs a row on both sides: use a fraction in {lo:.3g}..{hi:.3g} (or more num_samples)"
        )
    strat = y if min(counts.values()) >= 2 else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return Split(split.x[keep], split.y[keep]), Split(split.x[held], split.y[held])


def referee(ev: Any, split: Split) -> Any:
    """The evaluator ``ev`` scoring on ``split`` instead (same metrics, fresh memo)."""
    r = copy.copy(ev)
    r.x, r.y, r.split = split.x.to(ev.x.device), split.y, split
    r.memo = {} if ev.memo is not None else None
    return r


def _key(t: optuna.trial.FrozenTrial) -> str:
    return json.dumps(config_of(t), sort_keys=True, default=str)


def candidates(study: optuna.Study, objective: Any, top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top_k`` best distinct feasible trials by search value (single objective), or the distinct
    Pareto front (multi-objective)."""

    if not objective.single:
        return best_trials(study, skip=objective.skipped)
    done = [t for t in completed(study, objective.skipped) if feasible(t)]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done.sort(key=lambda t: (-t.values[0] if maximize else t.values[0], t.number))
    out, seen = [], set()
    for t in done:
        if _key(t) not in seen:
            seen.add(_key(t))
            out.append(t)
        if len(out) == top_k:
            break
    return out


def trial_figures(t: optuna.trial.FrozenTrial, objective: Any, selection: Any, test: Any) -> dict[str, Any]:
    """A trial's ``selection_metrics``, ``test_metrics`` and ``selection_value`` (signed objective)."""
    cfg = config_of(t)
    s, te = selection.evaluate(cfg), test.evaluate(cfg)
    return {
        "selection_metrics": {**s.software, **s.hardware},
        "test_metrics": {**te.software, **te.hardware},
        "selection_value": scalarize(s.metric, objective.metrics, signed=True),
    }


def rescore(
    study: optuna.Study, objective: Any, selection: Any, test: Any, top_k: int
) -> tuple[list[optuna.trial.FrozenTrial], dict[int, dict[str, Any]]]:
    """Re-score the candidates on the selection split and report them on test: ``(chosen, figures)`` where
    ``chosen`` is the best on selection (single objective; ties to the better search value) or the front,
    and ``figures[number]`` holds ``selection_metrics``, ``test_metrics`` and ``selection_value``."""
    cands = candidates(study, objective, top_k)
    figures = {t.number: trial_figures(t, objective, selection, test) for t in cands}
    if not cands or not objective.single:
        return cands, figures
    best = max(cands, key=lambda t: figures[t.number]["selection_value"])  # cands are in search order: first wins
    return [best], figures


def correct(ev: Any, config: Any) -> np.ndarray:
    """Per row of ``ev``'s split: does ``config``'s quantized graph classify it correctly?"""

    q = ev.scored_graph(config)
    return (predict(q.gm, ev.x).cpu().argmax(1) == ev.y).numpy()


def mcnemar_greater(cand: np.ndarray, anchor: np.ndarray) -> float:
    """Exact one-sided McNemar test: the p-value of "the candidate is right more often than the anchor" on
    paired rows (a binomial test on the rows where exactly one of the two is right)."""
    from scipy.stats import binomtest

    b, c = int((cand & ~anchor).sum()), int((~cand & anchor).sum())
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def anchored(
    ev: Any, best: optuna.trial.FrozenTrial, anchor: optuna.trial.FrozenTrial, alpha: float
) -> tuple[optuna.trial.FrozenTrial, dict[str, Any]]:
    """Keep ``best`` only where it classifies ``ev``'s rows significantly better than ``anchor`` (exact McNemar,
    one-sided, at ``alpha``); otherwise the anchor (the simpler, uniform-width configuration) is chosen. A small
    split crowns a lucky configuration often; a significant difference on paired rows rarely is luck."""
    if _key(best) == _key(anchor):
        return best, {"anchor_trial": anchor.number, "p_value": None, "kept": "best (it is the anchor)"}
    a, b = correct(ev, config_of(anchor)), correct(ev, config_of(best))
    p = mcnemar_greater(b, a)
    info = {"anchor_trial": anchor.number, "best_trial": best.number, "rows": len(a),
            "best_right_anchor_wrong": int((b & ~a).sum()), "anchor_right_best_wrong": int((a & ~b).sum()),
            "p_value": p, "alpha": alpha}  # fmt: skip
    info["kept"] = "best" if p < alpha else "anchor"
    return (best if p < alpha else anchor), info


def apply_anchor(
    study: optuna.Study, objective: Any, ev: Any, held: Any, test: Any, alpha: float,
    best: list[optuna.trial.FrozenTrial], figures: dict[str, Any],
) -> tuple[list[optuna.trial.FrozenTrial], dict[str, Any]]:  # fmt: skip
    """The reported best after the anchor rule (:func:`anchored`), decided on the selection split ``held`` when
    there is one, else on the search's own split; ``figures["anchor"]`` says what was compared and kept."""

    a = anchor_trial(study, objective)
    if a is None or not best:
        figures["anchor"] = {"kept": "best", "why": "no finished uniform-width trial within the budgets"}
        return best, figures
    chosen, info = anchored(held if held is not None else ev, best[0], a, alpha)
    info["split"] = "selection" if held is not None else "search (the split the search scored on)"
    if held is not None and chosen.number not in figures["trials"]:
        figures["trials"][chosen.number] = trial_figures(chosen, objective, held, test)
    figures["anchor"] = info
    return [chosen], figures
