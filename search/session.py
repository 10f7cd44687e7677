"""Glue for the CLI: model + dataset (checkpoint or a freshly trained baseline) -> analysed graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from qfx.graph.trace import QGraph, trace
from qfx.passes.analysis import analyze
from qfx.search.config import RunConfig
from qfx.search.runner import Evaluator
from qfx.search.space import SearchSpace
from qfx.zoo.data import Dataset, load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import evaluate, load_checkpoint, read_checkpoint, save_checkpoint, train

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    model: nn.Module
    dataset: Dataset
    graph: QGraph
    checkpoint: Path


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
            ds = load_dataset(cfg.dataset, seed=cfg.seed)
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
            log.info("no checkpoint given: training %s on %s for %d epochs", cfg.model, cfg.dataset, cfg.max_epochs)
            train(model, ds, cfg.max_epochs, cfg.batch_size, cfg.learning_rate, cfg.seed, progress, cfg.weight_decay)
            metrics = evaluate(model, ds.test, ds.num_classes)
            save_checkpoint(
                base,
                model,
                {
                    "model": cfg.model,
                    "dataset": cfg.dataset,
                    "seed": cfg.seed,
                    "epochs": cfg.max_epochs,
                    "metrics": metrics,
                },
            )
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
    return Prepared(model, ds, graph, Path(ck))


def build_search(cfg: RunConfig, prep: Prepared) -> tuple[SearchSpace, Evaluator]:
    assert cfg.search is not None
    ss, st = cfg.search.search_space, cfg.search.strategy
    space = SearchSpace(prep.graph, ss.setup.by, ss.seed)
    for note in space.notes:
        log.warning("search space: %s", note)
    be = st.sw_runner.basic_evaluation
    split = prep.dataset.split(be.data_loader).head(be.num_samples)
    ev = Evaluator(
        prep.graph,
        split,
        prep.dataset.num_classes,
        list(st.metrics),
        st.hw_runner.average_bitwidth,
        st.sw_runner.latency,
        st.sw_runner.qat,
        prep.dataset.train,
        cfg.device,
        cfg.seed,
    )
    return space, ev
