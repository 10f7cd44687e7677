"""Per-trial wall time of the search split into sample / rebuild / evaluate / hw.

jsc-tiny with 512 validation samples and jsc-s (digits), TPE sampler, in-memory storage; then a whole
search as a user runs it (random sampler, 400 trials, outputs written) per storage (memory, journal, sqlite)
against a bare Optuna loop on the same distributions and storage, with output writing's share of the run;
then the whole ``qfx search`` command in a fresh interpreter (the issue's scenario: trained jsc-tiny, random
sampler, 400 trials) with write_outputs' share of it; then a full QuantizePass rebuild against node count on
MLPs of growing depth (a search rebuilds through ``Rebuilder``: only what a configuration changes).
Goals (issue 22): a journal-storage search <= 1.5x the bare loop per trial; <= 1.5 ms per trial in memory;
rebuild linear in node count.
For comparison (measured once against MASE commit 90cee927 on this kind of machine, same jsc-tiny weights,
same Lab 3 TOML, 512 evaluation samples, interleaved runs; MASE is not installable here, so this script
does not rerun it): with both tools on one thread and MASE's DataLoader workers off, MASE 9.1 ms vs qfx
4.8 ms per trial (1.9x); with each tool's defaults 146 vs 4.2 ms (35x, mostly MASE forking DataLoader
workers every trial).
Run: python bench/search_throughput.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from tabulate import tabulate

from qfx.graph import trace
from qfx.passes.analysis import analyze
from qfx.passes.transforms.quantize import QuantizePass
from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.records import record_of
from qfx.search.runner import Evaluator
from qfx.search.space import SearchSpace
from qfx.search.study import run_study
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

SEEDS = {
    "linear": {
        "name": ["integer"],
        "data_in_width": [4, 8, 16],
        "weight_width": [2, 4, 8, 16],
        "bias_width": [2, 4, 8, 16],
    },
    "relu": {"name": ["NA", "integer"], "data_in_width": [4, 8]},
}


def _search_inputs(model_name: str) -> tuple:
    """A briefly trained model's graph, the by-type space, an evaluator on 512 rows and the two metrics."""
    ds = load_dataset("digits")
    torch.manual_seed(0)
    m = build_model(model_name, ds.num_features, ds.num_classes)
    train(m, ds, epochs=3, progress=False)
    g = analyze(trace(m, ds.val.x[:8]))
    space = SearchSpace(g, "type", SEEDS)
    # digits' validation split has 288 rows: time on 512 training rows instead (timing only)
    ev = Evaluator(g, ds.train.head(512), ds.num_classes, ["accuracy", "average_bitwidth"])
    metrics = {"accuracy": MetricSpec(scale=1.0), "average_bitwidth": MetricSpec(scale=-0.01)}
    return g, space, ev, metrics


def per_trial(model_name: str, n_trials: int) -> list[str]:
    g, space, ev, metrics = _search_inputs(model_name)
    setup = StrategySetup(n_trials=n_trials, sampler="tpe")
    t0 = time.perf_counter()
    study, _ = run_study(space, ev, metrics, setup, None, progress=False)
    wall = (time.perf_counter() - t0) / len(study.trials)
    tm = [r.timings for t in study.trials if "cached" not in (r := record_of(t)).timings]  # evaluated
    med = {k: 1e3 * statistics.median(t[k] for t in tm) for k in ("sample", "rebuild", "evaluate", "hw")}
    trial_ms = [1e3 * t.duration.total_seconds() for t in study.trials]
    return [
        model_name,
        len(g.nodes),
        len(ev.y),
        n_trials,
        f"{statistics.median(trial_ms):.2f}",
        f"{1e3 * wall:.2f}",
        *(f"{med[k]:.2f}" for k in med),
    ]


def trial_floor(model_name: str, n_trials: int, storage_kind: str) -> list[str]:
    """A whole search as a user runs it (random sampler, ``storage_kind`` storage, outputs written) against a bare
    Optuna loop on the same distributions and storage: per evaluated trial sample / rebuild / evaluate / hw /
    record (the rest of the trial: attrs, storage, progress; medians), the median of trials that drew a
    configuration again (answered from the evaluator's memo), and output writing's share of the run."""
    from search_overhead import bare

    from qfx.search.study import write_outputs

    _, space, ev, metrics = _search_inputs(model_name)
    setup = StrategySetup(n_trials=n_trials, sampler="random", seed=0)
    with tempfile.TemporaryDirectory() as d:
        url = {"memory": None, "journal": f"journal:{Path(d) / 'j.log'}", "sqlite": f"sqlite:///{Path(d) / 's.db'}"}
        t0 = time.perf_counter()
        study, objective = run_study(space, ev, metrics, setup, Path(d) / "out", url[storage_kind],
                                     "s" if url[storage_kind] else None, progress=False)  # fmt: skip
        t1 = time.perf_counter()
        write_outputs(study, Path(d) / "out", objective)
        t2 = time.perf_counter()
        url = {"memory": None, "journal": f"journal:{Path(d) / 'b.log'}", "sqlite": f"sqlite:///{Path(d) / 'b.db'}"}
        bare_ms = 1e3 * statistics.median(bare(space, "random", url[storage_kind], n_trials))
        trials = study.get_trials(False)  # while the storage file exists
    fresh = [t for t in trials if "cached" not in record_of(t).timings]  # evaluated, not drawn again
    med = {k: 1e3 * statistics.median(record_of(t).timings.get(k, 0.0) for t in fresh)
           for k in ("sample", "rebuild", "evaluate", "hw")}  # fmt: skip
    trial_ms = statistics.median(1e3 * t.duration.total_seconds() for t in fresh)
    again = [1e3 * t.duration.total_seconds() for t in trials if t not in fresh]
    record = max(trial_ms - sum(med.values()), 0.0)  # attrs, storage writes, progress record
    wall = 1e3 * (t1 - t0) / n_trials
    return [model_name, storage_kind, n_trials, f"{len(fresh)}", f"{trial_ms:.2f}",
            f"{statistics.median(again):.2f}" if again else "-", f"{wall:.2f}", *(f"{med[k]:.2f}" for k in med),
            f"{record:.2f}", f"{bare_ms:.2f}", f"{wall / bare_ms:.1f}x",
            f"{t2 - t1:.2f} s ({(t2 - t1) / (t2 - t0):.0%})"]  # fmt: skip


def timed_command(argv: list[str]) -> None:
    """Child of :func:`whole_command`: ``qfx`` with ``argv``, printing write_outputs' seconds to stderr."""
    from qfx import cli
    from qfx.search import session

    real, spent = session.write_outputs, []

    def timed(*a, **k):  # noqa: ANN002, ANN003, ANN202
        t = time.perf_counter()
        r = real(*a, **k)
        spent.append(time.perf_counter() - t)
        return r

    session.write_outputs = timed
    rc = cli.main(argv)
    print(f"write_outputs {sum(spent):.3f}", file=sys.stderr)
    sys.exit(rc)


def whole_command(n_trials: int, storage_kind: str) -> list[str]:
    """The issue's scenario as a user runs it: ``qfx search`` in a fresh interpreter on a trained jsc-tiny
    checkpoint, configs/jsc_tiny_by_type.toml, random sampler, ``n_trials`` trials, ``storage_kind`` storage;
    the command's wall time (interpreter start to exit) and write_outputs' share of it."""
    import re
    import subprocess

    from qfx import cli

    cfg = Path(__file__).resolve().parent.parent / "configs" / "jsc_tiny_by_type.toml"
    with tempfile.TemporaryDirectory() as d:
        cli.main(["-q", "train", "--model", "jsc-tiny", "--out", f"{d}/ck", "--no-progress"])
        url = {"memory": [], "journal": ["--storage", f"journal:{d}/j.log", "--study-name", "s"],
               "sqlite": ["--storage", f"sqlite:///{d}/s.db", "--study-name", "s"]}[storage_kind]  # fmt: skip
        argv = ["search", "--config", str(cfg), "--checkpoint", f"{d}/ck", "--n-trials", str(n_trials), "--sampler",
                "random", "--seed", "0", "--out", f"{d}/out", "--no-progress", *url]  # fmt: skip
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--timed-command", *argv], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        files = len([p for p in Path(f"{d}/out").rglob("*") if p.is_file()])
    out_s = float(re.findall(r"write_outputs ([\d.]+)", r.stderr)[-1])
    return ["jsc-tiny", storage_kind, n_trials, f"{wall:.2f}", f"{out_s:.2f}", f"{out_s / wall:.0%}", files]


def rebuild_scaling(depths: list[int]) -> list[list[str]]:
    rows = []
    for d in depths:
        layers: list[nn.Module] = []
        for _ in range(d):
            layers += [nn.Linear(32, 32), nn.ReLU()]
        g = analyze(trace(nn.Sequential(*layers), torch.randn(4, 32)))
        cfg = {"by": "type", "linear": {"name": "integer", "weight_width": 4}, "relu": {"name": "integer"}}
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            QuantizePass(cfg, copy_weights=False)(g)
            ts.append(time.perf_counter() - t0)
        t = min(ts)
        rows.append([d, len(g.nodes), f"{1e3 * t:.2f}", f"{1e6 * t / len(g.nodes):.1f}"])
    return rows


def main() -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("qfx").setLevel(logging.WARNING)
    quick = "--quick" in sys.argv
    torch.set_num_threads(1)
    n = 30 if quick else 100
    rows = [per_trial("jsc-tiny", n), per_trial("jsc-s", n)]
    print("per trial (median ms; 'wall/trial' includes Optuna's own bookkeeping)")
    print(
        tabulate(
            rows,
            headers=[
                "model",
                "nodes",
                "eval samples",
                "trials",
                "trial ms",
                "wall/trial ms",
                "sample",
                "rebuild",
                "evaluate",
                "hw",
            ],
            tablefmt="github",
        )
    )
    print("\nwhole search as a user runs it: random sampler, 400 trials, outputs written, vs a bare Optuna loop")
    rows = [trial_floor(name, 100 if quick else 400, kind) for name in ("jsc-tiny", "jsc-s")
            for kind in (("memory", "journal") if quick else ("memory", "journal", "sqlite"))]  # fmt: skip
    heads = ["model", "storage", "trials", "evaluated", "evaluated trial ms", "repeat trial ms", "wall/trial ms",
             "sample", "rebuild", "evaluate", "hw", "record", "bare ms", "wall/bare", "outputs (share)"]  # fmt: skip
    print(tabulate(rows, headers=heads, tablefmt="github"), flush=True)
    print("\nthe whole `qfx search` command (fresh interpreter, trained jsc-tiny, random sampler, outputs written)")
    rows = [whole_command(100 if quick else 400, kind) for kind in ("memory", "journal")]
    print(tabulate(rows, headers=["model", "storage", "trials", "command s", "write_outputs s", "outputs share",
                                  "files written"], tablefmt="github"), flush=True)  # fmt: skip
    print("\nrebuild (QuantizePass, shared weights) vs node count")
    depths = [10, 100, 500] if quick else [10, 100, 500, 2000]
    print(
        tabulate(
            rebuild_scaling(depths), headers=["linear layers", "nodes", "rebuild ms", "us/node"], tablefmt="github"
        )
    )


if __name__ == "__main__":
    if "--timed-command" in sys.argv:
        timed_command(sys.argv[sys.argv.index("--timed-command") + 1 :])
    else:
        main()
