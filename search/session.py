"""The library API the CLI is a thin layer over: prepare a model (checkpoint or a freshly trained baseline),
train and save, compare FP32 with quantized, override a config, build and run a search.

From Python: ``run_search("jsc_tiny_by_type", n_trials=10)`` returns the study and its best trials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
import torch.nn as nn

from qfx.graph.trace import QGraph, trace
from qfx.passes.analysis import CalibrationPass, analyze
from qfx.search.config import ConfigError, RunConfig, StrategySetup, load_config
from qfx.search.ilp import unreachable_budgets
from qfx.search.metrics import METRICS
from qfx.search.runner import Evaluator
from qfx.search.selection import apply_anchor, referee, rescore, split_off
from qfx.search.space import SearchSpace
from qfx.search.study import Objective, best_trials, run_study, write_outputs
from qfx.zoo.data import Dataset, Split, load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import (
    auto_threads,
    evaluate,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    torch_threads,
    train,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model: nn.Module
    dataset: Dataset
    graph: QGraph
    checkpoint: Path


def train_and_save(
    out: str | Path, model: str, dataset: str, epochs: int, batch_size: int = 32, lr: float = 1e-2, seed: int = 0,
    weight_decay: float = 0.0, progress: bool = True,
) -> tuple[Path, dict[str, Any], list[dict[str, float]]]:  # fmt: skip
    """Train zoo ``model`` on ``dataset`` (seeded) and save a checkpoint holding model, dataset, seed, epochs,
    test metrics and the training history. Returns (checkpoint path, test metrics, history)."""
    ds = load_dataset(dataset, seed=seed)
    torch.manual_seed(seed)
    m = build_model(model, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
    hist = train(m, ds, epochs, batch_size, lr, seed, progress, weight_decay)
    metrics = evaluate(m, ds.test, ds.num_classes)
    info = {"model": model, "dataset": dataset, "seed": seed, "epochs": epochs, "metrics": metrics, "history": hist}
    return save_checkpoint(out, m, info), metrics, hist


def prepare(cfg: RunConfig, checkpoint: str | None, out: Path, progress: bool = True, trust: bool = False) -> Prepared:
    """Load ``checkpoint`` (or ``load_name``), else train the config's model and save it under out/baseline.

    Checkpoints load with ``weights_only=True``; ``trust`` allows full unpickling (``--trust-checkpoint``).
    """
    ck = checkpoint or cfg.load_name
    if ck is None:
        base = out / "baseline" / "model.pt"
        reuse = False
        if base.is_file():
            info = read_checkpoint(base, trust)
            reuse = (
                info.get("model") == cfg.model
                and info.get("dataset") == cfg.dataset
                and info.get("seed") == cfg.seed
                and info.get("epochs") == cfg.max_epochs
            )
        if not reuse:
            log.info("no checkpoint given: training %s on %s for %d epochs", cfg.model, cfg.dataset, cfg.max_epochs)
            train_and_save(base, cfg.model, cfg.dataset, cfg.max_epochs, cfg.batch_size, cfg.learning_rate, cfg.seed,
                           cfg.weight_decay, progress)  # fmt: skip
        ck = str(base)
    model, ds, info = load_checkpoint(ck, trust)
    if info["model"] != cfg.model:
        log.warning("checkpoint holds model %r, config says %r: using the checkpoint's", info["model"], cfg.model)
    if info["dataset"] != cfg.dataset:
        log.warning(
            "checkpoint was trained on dataset %r, config says %r: evaluating on the checkpoint's (%r)",
            info["dataset"],
            cfg.dataset,
            info["dataset"],
        )
    graph = analyze(trace(model, ds.val.x[:8]))
    if cfg.uses_auto():  # "auto" fracs: calibrated once here, resolved by lookup in every trial
        calibrate(cfg, graph, ds)
    return Prepared(model, ds, graph, Path(ck))


def calibrate(cfg: RunConfig, graph: QGraph, ds: Dataset, widths: tuple[int, ...] = ()) -> dict[str, Any]:
    """CalibrationPass as ``[calibration]`` says, refined (with labels) at ``widths`` or the config's widths."""
    c = cfg.calibration
    split = ds.split(c.split).head(c.num_samples)
    widths = widths or cfg.integer_widths()
    refine = {"targets": split.y, "refine_widths": widths} if c.refine and widths else {}
    return CalibrationPass(split.x, c.method, c.percentile, **refine)(graph).info


def build_search(cfg: RunConfig, prep: Prepared, eval_split: Any = None) -> tuple[SearchSpace, Evaluator]:
    """The config's search space over the prepared graph and its evaluator (on ``eval_split``, default the
    config's evaluation split)."""
    assert cfg.search is not None
    ss, st = cfg.search.search_space, cfg.search.strategy
    space = SearchSpace(prep.graph, ss.setup.by, ss.seed)
    for note in space.notes:
        log.warning("search space: %s", note)
    ev = Evaluator(
        prep.graph,
        eval_split=eval_split if eval_split is not None else search_split(cfg, prep),
        num_classes=prep.dataset.num_classes,
        metrics=list(dict.fromkeys([*st.metrics, *st.constraints])),  # budgets need their metrics measured
        hw=st.hw_runner.average_bitwidth,
        latency=st.sw_runner.latency,
        qat=st.sw_runner.qat,
        train_split=prep.dataset.train,
        device=cfg.device,
        seed=cfg.seed,
        clock_ns=cfg.fpga.clock_ns,
    )
    return space, ev


def check_budgets_reachable(space: SearchSpace, ev: Evaluator, constraints: dict[str, Any]) -> None:
    """Refuse (ConfigError) hardware budgets that no point of the space can meet, before any trial runs."""
    hard = {k: b for k, b in constraints.items() if METRICS[k].kind == "hardware"}
    try:
        bad = unreachable_budgets(space, ev, hard) if hard else []
    except Exception as e:  # noqa: BLE001 - a metric some points cannot have: those trials record why
        log.warning("budgets %s not checked before the search: %s", ", ".join(hard), str(e).splitlines()[0][:200])
        return
    if bad:
        raise ConfigError(f"[search.strategy.constraints] {'; '.join(bad)}: no configuration can meet it")


def search_split(cfg: RunConfig, prep: Prepared) -> Any:
    """The split the config's search evaluates on (its ``num_samples`` head of ``data_loader``)."""
    be = cfg.search.strategy.sw_runner.basic_evaluation  # type: ignore[union-attr]
    return prep.dataset.split(be.data_loader).head(be.num_samples)


def with_overrides(cfg: RunConfig, **setup: Any) -> RunConfig:
    """A new, validated config with ``[search.strategy.setup]`` keys replaced (None values ignored); the
    given config is not changed. Raises pydantic's ValidationError naming the key."""
    upd = {k: v for k, v in setup.items() if v is not None}
    if not upd:
        return cfg
    if cfg.search is None:
        raise ConfigError("the config has no [search] section to override")
    st = cfg.search.strategy
    new = StrategySetup.model_validate({**st.setup.model_dump(), **upd})
    strategy = st.model_copy(update={"setup": new})
    return cfg.model_copy(update={"search": cfg.search.model_copy(update={"strategy": strategy})})


def fp32_vs_quantized(prep: Prepared, quantized: QGraph, split: str = "test") -> dict[str, Any]:
    """Accuracy, loss and F1 of the float and the quantized graph on one split: ``{"fp32", "quantized",
    "table", "samples"}`` (the table has a delta column)."""
    from tabulate import tabulate

    data = prep.dataset.split(split)
    fp = evaluate(prep.graph.gm, data, prep.dataset.num_classes)
    q = evaluate(quantized.gm, data, prep.dataset.num_classes)
    rows = [[k, f"{fp[k]:.4f}", f"{q[k]:.4f}", f"{q[k] - fp[k]:+.4f}"] for k in ("accuracy", "loss", "f1")]
    table = tabulate(rows, headers=["metric", "fp32", "quantized", "delta"], tablefmt="github")
    return {"fp32": fp, "quantized": q, "table": table, "samples": len(data)}


def _select(
    study: optuna.Study, objective: Objective, ev: Evaluator, held: Split | None, prep: Prepared, st: Any,
    best: list[optuna.trial.FrozenTrial], n_search: int,
) -> tuple[list[optuna.trial.FrozenTrial], dict[str, Any]]:  # fmt: skip
    """The reported best under ``[search.strategy.selection]``: re-scored on the selection split (``held``),
    then (single objective, ``anchor = "uniform"``) kept only when significantly better than the anchor."""

    figures: dict[str, Any] = {}
    test = referee(ev, prep.dataset.test)
    sel = referee(ev, held) if held is not None else None
    if sel is not None:
        best, trials = rescore(study, objective, sel, test, st.selection.top_k)
        figures = {"splits": {"search": n_search, "selection": len(held), "test": len(prep.dataset.test)},
                   "trials": trials}  # fmt: skip
    if st.selection.anchor == "uniform" and objective.single:
        best, figures = apply_anchor(study, objective, ev, sel, test, st.selection.alpha, best, figures)
    return best, figures


def _picked(front: list[Any], rule: str, objective: Objective) -> tuple[list[Any], dict[str, Any]]:
    """The front with the point ``rule`` chooses first (it becomes best_model/), and the record of the pick."""
    from qfx.search.pick import parse_pick, pick

    t, why = pick(front, parse_pick(rule), objective.metrics)
    return [t, *(u for u in front if u is not t)], {"rule": rule, "trial": t.number, "why": why}


@dataclass
class SearchRun:
    """What :func:`run_search` returns: the study, its best trials (one per distinct configuration; the Pareto
    front when multi-objective), the objective (space, evaluator, metrics), where the outputs were written,
    best.json's content (empty without ``out``) and the prepared model and dataset."""

    study: optuna.Study
    best: list[optuna.trial.FrozenTrial]
    objective: Objective
    out: Path | None
    best_json: dict[str, Any] = field(default_factory=dict)
    prep: Prepared | None = None
    selection: dict[str, Any] = field(default_factory=dict)  # split sizes and per-candidate figures


def run_search(
    config: RunConfig | str | Path, checkpoint: str | None = None, out: str | Path | None = None,
    storage: str | None = None, study_name: str | None = None, progress: bool = False, trust: bool = False,
    tracebacks: bool = False, threads: int | Literal["auto"] | None = None,
    ready: Callable[[Prepared, SearchSpace, Evaluator], None] | None = None, **overrides: Any,
) -> SearchRun:  # fmt: skip
    """Run a config's search from Python (``qfx search`` calls this). ``config``: a RunConfig, a TOML path or a
    shipped config's name; ``overrides``: ``[search.strategy.setup]`` keys (``n_trials=10, sampler="random"``).
    Without ``checkpoint`` (or ``load_name``) a baseline is trained into ``out/baseline`` (a temporary directory
    when ``out`` is None). With ``out`` the usual outputs (best.json, trials.csv, best_model/, plots) are written.
    ``threads``: torch CPU threads for the run (default: the config's ``threads``; ``"auto"``: the config's, else
    chosen from the model's size once it is loaded); the caller's count is restored after. ``ready`` is called
    with the prepared model, the space and the evaluator before the first trial."""
    import tempfile

    cfg = config if isinstance(config, RunConfig) else load_config(config, require_search=True)
    cfg = with_overrides(cfg, **overrides)
    if cfg.search is None:
        raise ConfigError("the config has no [search] section")
    st = cfg.search.strategy
    explicit = cfg.threads if threads in (None, "auto") else threads
    with tempfile.TemporaryDirectory() as tmp, torch_threads(explicit):
        work = Path(out) if out is not None else Path(tmp)
        prep = prepare(cfg, checkpoint, work, progress, trust)
        if threads == "auto" and explicit is None:
            torch.set_num_threads(auto_threads(prep.model))  # restored by torch_threads
        split, held = search_split(cfg, prep), None
        if st.selection.fraction > 0:
            split, held = split_off(split, st.selection.fraction, cfg.seed)
        space, ev = build_search(cfg, prep, split)
        check_budgets_reachable(space, ev, st.constraints)
        if ready is not None:
            ready(prep, space, ev)
        anchor = st.selection.anchor == "uniform"
        study, objective = run_study(space, ev, st.metrics, st.setup, work if out else None, storage, study_name,
                                     progress, tracebacks, constraints=st.constraints, anchor=anchor)  # fmt: skip
        best, figures = best_trials(study, skip=objective.skipped), {}
        if held is not None or anchor:
            best, figures = _select(study, objective, ev, held, prep, st, best, len(split))
        if not objective.single and best:
            best, figures["pick"] = _picked(best, st.pick, objective)
        best_json = write_outputs(study, work, objective, best, figures) if out is not None else {}
    return SearchRun(study, best, objective, Path(out) if out is not None else None, best_json, prep, figures)


def export_best(
    run: SearchRun, formats: list[str], out: Path, rows: int = 1000, progress: Callable[[str], None] | None = None
) -> list[tuple[optuna.trial.FrozenTrial, list[Any]]]:
    """Export the graph each best trial scored (fine-tuned as scored with QAT) in ``formats`` under
    ``out/export`` (``out/export/trial_N`` for a Pareto front) and verify each with its tool on ``rows`` rows
    (the test split, then saturating noise): what ``qfx search --export`` does. Returns, per trial, the
    ``Exported`` records (``agreement`` holds each verdict)."""
    from qfx.passes.export.api import export_all, verification_inputs
    from qfx.search.records import config_of

    assert run.prep is not None
    x = verification_inputs(run.prep.dataset.test.x, rows)
    done = []
    for t in run.best:
        q = run.objective.evaluator.scored_graph(config_of(t))
        where = out / "export" if len(run.best) == 1 else out / "export" / f"trial_{t.number}"
        done.append((t, export_all(q, formats, where, x, progress=progress)))
    return done


def save_transform(out: Path, quantized: QGraph, summary: dict[str, Any], comparison: dict[str, Any]) -> Path:
    """What ``qfx transform`` writes into ``out``: the quantized graph (``quantized/``), SummaryPass's per-node
    table and width histogram (``summary.csv``, ``histogram.csv``) and the FP32-vs-quantized metrics of
    :func:`fp32_vs_quantized` (``metrics.json``). Returns the graph's directory."""
    import json

    quantized.save(out / "quantized")
    (out / "summary.csv").write_text(summary["nodes_csv"])
    (out / "histogram.csv").write_text(summary["histogram_csv"])
    (out / "metrics.json").write_text(json.dumps({k: comparison[k] for k in ("fp32", "quantized")}, indent=1))
    return out / "quantized"
