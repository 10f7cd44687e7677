"""``qfx learn`` with ``[learn_search]``: Optuna trials over what gradients cannot choose.

Each trial samples a final penalty ``beta`` (log scale), ``epochs``, the rounding and overflow modes and a
hidden-width multiplier, trains learned precision from a float model of that width (the config's checkpoint at
width 1, else a float model trained with the config's recipe, once per width), measures up to
``measured_per_trial`` points of its front in hardware (whole-network da4ml LUTs and adder depth, at
``[fpga] clock_ns`` flip-flops and latency in ns; EBOPs; validation and test accuracy) and is scored, for the
sampler, by the point ``--pick`` chooses among them (validation accuracy up, LUTs down: two objectives). The
product is the Pareto front over every measured point of every trial (chosen on validation, test reported),
written like a single ``qfx learn`` run: front.json/csv/png, graphs/, best/, plus trials.json (one typed
record per trial, its sampled options and its points).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from qfx.graph import trace
from qfx.graph.safeio import check_out_dir, out_path
from qfx.hw.fpga import fpga_timing
from qfx.passes.analysis import analyze
from qfx.passes.transforms.learn_precision import LearnConfig, learn_precision
from qfx.search.config import ConfigError, LearnSearch, RunConfig
from qfx.search.learn import FrontPoint, LearnRun, _thin, _write, check_pick, choose
from qfx.search.outputs import clear_owned
from qfx.search.plots import pareto_mask
from qfx.search.session import Prepared, prepare
from qfx.search.trial_record import TrialRecord, write_record
from qfx.zoo.models import WIDTH_MODELS, build_model
from qfx.zoo.train import train

MANIFEST = "learn.json"
OWNED = frozenset({"front.json", "front.csv", "front.png", "graphs/", "best/", "trials.json"})


def check_space(cfg: RunConfig, ls: LearnSearch) -> None:
    """Width multipliers other than 1 need a zoo model that takes them (ConfigError naming the key)."""
    if any(w != 1.0 for w in ls.width) and cfg.model not in WIDTH_MODELS:
        raise ConfigError(f"learn_search.width {ls.width}: model {cfg.model!r} takes no width multiplier "
                          f"(models that do: {', '.join(WIDTH_MODELS)}); use width = [1.0]")  # fmt: skip


class _Floats:
    """The float graph of each width: the prepared (checkpoint) one at 1, else trained once with the recipe."""

    def __init__(self, cfg: RunConfig, prep: Prepared, progress: bool) -> None:
        self.cfg, self.prep, self.progress = cfg, prep, progress
        self.graphs: dict[float, Any] = {1.0: prep.graph}

    def __call__(self, width: float) -> Any:
        if width not in self.graphs:
            c, ds = self.cfg, self.prep.dataset
            torch.manual_seed(c.seed)
            m = build_model(c.model, ds.num_features, ds.num_classes, width=width)
            train(m, ds, epochs=c.max_epochs, batch_size=c.batch_size, lr=c.learning_rate, progress=self.progress)
            self.graphs[width] = analyze(trace(m.eval(), ds.val.x[:8]))
        return self.graphs[width]


def _options(trial: optuna.Trial, ls: LearnSearch, base: LearnConfig) -> tuple[LearnConfig, float]:
    beta = trial.suggest_float("beta", ls.beta[0], ls.beta[1], log=True)
    start = None if base.beta_start is None else min(beta, beta * base.beta_start / max(base.beta, 1e-12))
    upd = {"beta": beta, "beta_start": start, "epochs": trial.suggest_categorical("epochs", ls.epochs),
           "round": trial.suggest_categorical("round", ls.round),
           "overflow": trial.suggest_categorical("overflow", ls.overflow)}  # fmt: skip
    return LearnConfig.model_validate({**base.model_dump(), **upd}), trial.suggest_categorical("width", ls.width)


def _measure(res: Any, ls: LearnSearch, prep: Prepared, clock: float | None, out: Path, number: int
             ) -> list[tuple[FrontPoint, dict[str, float]]]:  # fmt: skip
    """The trial's front, thinned, measured and saved as graphs/trial_N_epoch_E."""
    ds, points = prep.dataset, []
    for rec in _thin(res.front, ls.measured_per_trial):
        q = res.graph(rec.epoch)
        with torch.no_grad():
            test = float((q(ds.test.x).argmax(1) == ds.test.y).float().mean())
        t = fpga_timing(q, clock)
        rel = f"graphs/trial_{number}_epoch_{rec.epoch}"
        q.save(out_path(out, rel))
        p = FrontPoint(rec.epoch, rec.beta, rec.val_accuracy, test, rec.ebops, t.luts, t.depth, rel)
        points.append((p, t.metrics()))
    return points


def run_learn_search(
    cfg: RunConfig, checkpoint: str | None, out: Path, pick: str = "max:accuracy", progress: bool = True,
    trust: bool = False, say: Callable[[str], None] = print,
) -> LearnRun:  # fmt: skip
    """See the module docstring."""
    ls = cfg.learn_search
    assert ls is not None
    check_pick(pick)
    check_space(cfg, ls)
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prep = prepare(cfg, checkpoint, out, progress, trust)
    floats, base = _Floats(cfg, prep, progress), cfg.learn or LearnConfig()
    clear_owned(out, MANIFEST, OWNED)
    pooled: list[tuple[int, FrontPoint, dict[str, float]]] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lc, width = _options(trial, ls, base)
        res = learn_precision(floats(width), prep.dataset.train, prep.dataset.val, lc, progress=False)
        points = _measure(res, ls, prep, cfg.fpga.clock_ns, out, trial.number)
        pooled.extend((trial.number, p, hw) for p, hw in points)
        rep, _ = choose([p for p, _ in points], pick)
        hw = next(h for p, h in points if p is rep)
        sw = {"accuracy": rep.val_accuracy, "test_accuracy": rep.test_accuracy}
        write_record(trial, TrialRecord.of(sampled_config={**trial.params, "graph": rep.graph}, software_metrics=sw,
                                           hardware_metrics={"ebops": rep.ebops, "fpga_luts": rep.fpga_luts, **hw}))
        say(f"  trial {trial.number}: beta {lc.beta:.2g}, {lc.epochs} epochs, {lc.round}/{lc.overflow}, width "
            f"{width:g}: {len(points)} point(s); chosen {rep.val_accuracy:.3f} val acc at {rep.fpga_luts:,.0f} LUTs")
        return rep.val_accuracy, rep.fpga_luts

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=_sampler(ls))
    t1 = time.perf_counter()
    study.optimize(objective, n_trials=ls.n_trials, gc_after_trial=False)
    t2 = time.perf_counter()
    front = _front(pooled)
    best, note = choose(front, pick)
    if note:
        say(note)
    shutil.copytree(out / best.graph, out_path(out, "best"), dirs_exist_ok=True)
    secs = {"prepare": t1 - t0, "learn": t2 - t1, "measure": 0.0}
    _write(out, front, best, base, pick, secs)
    _trials_json(out, study, pooled)
    return LearnRun(front, best, out, secs)


def _sampler(ls: LearnSearch) -> optuna.samplers.BaseSampler:
    s = optuna.samplers
    return {"tpe": s.TPESampler, "random": s.RandomSampler, "nsgaii": s.NSGAIISampler,
            "qmc": s.QMCSampler}[ls.sampler](seed=ls.seed)  # fmt: skip


def _front(pooled: list[tuple[int, FrontPoint, dict[str, float]]]) -> list[FrontPoint]:
    """The Pareto points (validation accuracy up, LUTs down) over every trial's measured points."""
    pts = [p for _, p, _ in pooled]
    mask = pareto_mask(np.array([[p.val_accuracy, p.fpga_luts] for p in pts]), [True, False])
    return sorted((p for p, m in zip(pts, mask, strict=True) if m), key=lambda p: p.fpga_luts)


def _trials_json(out: Path, study: optuna.Study, pooled: list[tuple[int, FrontPoint, dict[str, float]]]) -> None:
    rows = []
    for t in study.trials:
        mine = [{**asdict(p), **hw} for n, p, hw in pooled if n == t.number]
        rows.append({"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
                     "points": mine})  # fmt: skip
    out_path(out, "trials.json").write_text(json.dumps(rows, indent=1))
    out_path(out, MANIFEST).write_text(json.dumps({"files": sorted(OWNED)}))  # what a second run removes
