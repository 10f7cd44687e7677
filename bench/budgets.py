"""The best configuration under a budget: TPE, TPE + ILP warm start, the ILP sampler, the exhaustive
validation optimum and uniform width, scored on the test split.

Per model (jsc-s and cnn, trained here on digits), the space is the weight width (2-8) of each of the four
MAC layers with 8-bit inputs (7^4 = 2,401 points, enumerated once). Budgets: the average bitwidth of
uniform 3-, 4- and 6-bit weights. Every method searches on the validation split; the configuration it
picks (its best feasible trial) is reported on the test split. "(selection)": the search scores on half of
the validation split and its 5 best distinct configurations are re-scored on the other half, which picks
(``[search.strategy.selection]``). "(anchor)": the search's pick is kept only when it classifies the validation
rows significantly better than uniform width (exact one-sided McNemar test, p < 0.05), else uniform
(``[search.strategy.selection] anchor = "uniform"``). Evaluations count distinct configurations evaluated
(the ILP's table included; "chosen at": when the chosen one was first evaluated); wall time is the
method's own. ``ilp`` is TPE after the integer program's points, so ``tpe+ilp`` (the warm start) is the same algorithm.

    python bench/budgets.py                    # 3 seeds, 40 trials per method
    python bench/budgets.py --seeds 1 --trials 30 --models jsc-s
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from qfx.search.config import Bound, load_config
from qfx.search.records import feasible
from qfx.search.runner import Evaluator
from qfx.search.selection import correct, mcnemar_greater
from qfx.search.session import build_search, prepare, with_overrides
from qfx.search.study import run_study

LAYERS = {"jsc-s": ("seq_blocks_2", "seq_blocks_5", "seq_blocks_8", "seq_blocks_11"),
          "cnn": ("conv1", "conv2", "conv3", "fc")}  # fmt: skip
SEED = """
[search.search_space.seed.{n}.config]
name = ["integer"]
data_in_width = [8]
data_in_frac_width = ["auto"]
weight_width = [2, 3, 4, 5, 6, 7, 8]
weight_frac_width = ["auto"]
bias_width = [8]
bias_frac_width = ["auto"]
"""
HEAD = """model = "{model}"
dataset = "digits"
max_epochs = {epochs}
[search.search_space]
name = "graph/quantize/mixed_precision_ptq"
[search.search_space.setup]
by = "name"
[search.search_space.seed.default.config]
name = ["NA"]
"""
TAIL = """
[search.strategy]
name = "optuna"
[search.strategy.sw_runner.basic_evaluation]
data_loader = "val_dataloader"
num_samples = 512
[search.strategy.setup]
n_trials = 40
sampler = "tpe"
direction = "maximize"
[search.strategy.metrics]
accuracy.scale = 1.0
[search.strategy.constraints]
average_bitwidth.max = 32
"""


def _key(config: Any) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class Counting:
    """An evaluator wrapper counting distinct configurations (and caching them)."""

    def __init__(self, ev: Evaluator) -> None:
        self.ev, self.cache = ev, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ev, name)

    def evaluate(self, config: Any, hardware: Any = None) -> Any:
        key = _key(config)
        if key not in self.cache:
            self.cache[key] = self.ev.evaluate(config)
        return self.cache[key]

    def index(self, config: Any) -> int:
        """1-based position of ``config`` among the distinct evaluations (when it was first evaluated)."""
        return list(self.cache).index(_key(config)) + 1


METHODS = ("tpe", "tpe+ilp", "ilp", "tpe (selection)", "ilp (selection)", "tpe (anchor)", "ilp (anchor)")
ALPHA = 0.05


def _setup(model: str, out: Path, epochs: int) -> tuple[Any, Any, Any, Any]:
    path = out / f"{model}.toml"
    path.write_text(HEAD.format(model=model, epochs=epochs) + "".join(SEED.format(n=n) for n in LAYERS[model]) + TAIL)
    cfg = load_config(path, require_search=True)
    prep = prepare(cfg, None, out / model, progress=False)
    space, ev = build_search(cfg, prep)
    test = copy.copy(ev)
    test.x, test.y = prep.dataset.test.x, prep.dataset.test.y
    test.memo = {}
    return cfg, space, ev, test


def _uniform(space: Any, w: int) -> dict[str, int]:
    return {d: space.dims[d].index(w) for d in space.free_dims}


def _run(
    cfg: Any, space: Any, ev: Any, method: str, budget: float, seed: int, trials: int
) -> tuple[Any, int, int, float, set[str]]:
    """One search; the chosen configuration is its best feasible trial on validation, or with " (selection)"
    the best of its top 5 on a held-out half of validation (the search then scores on the other half)."""
    from qfx.search.selection import referee, rescore, split_off

    name, _, select = method.partition(" (")
    sampler, _, warm = name.partition("+")
    c = with_overrides(cfg, sampler=sampler, seed=seed, n_trials=trials, warm_start=warm or "none")
    st = c.search.strategy
    fresh = copy.copy(ev)
    fresh.memo = {}  # the method pays for its own evaluations (the enumeration's are not reused)
    held = None
    if select:
        part, held = split_off(ev.split, 0.5, seed)
        fresh = referee(ev, part)
    cev = Counting(fresh)
    t0 = time.perf_counter()
    study, objective = run_study(space, cev, st.metrics, st.setup, None, progress=False,
                                 constraints={"average_bitwidth": Bound(max=budget)})  # fmt: skip
    if held is not None:
        (best,), _ = rescore(study, objective, referee(ev, held), referee(ev, held), 5)
    else:
        done = [t for t in study.trials if t.state.name == "COMPLETE" and feasible(t)]
        best = max(done, key=lambda t: t.value)
    wall = time.perf_counter() - t0
    chosen = space.to_config(space.point_of(best.params))
    return chosen, len(cev.cache) + (5 if held is not None else 0), cev.index(chosen), wall, set(cev.cache)


def bench_model(
    model: str, seeds: int, trials: int, epochs: int, out: Path, methods: tuple[str, ...] = METHODS
) -> list[list[Any]]:
    cfg, space, ev, test = _setup(model, out, epochs)
    t0 = time.perf_counter()
    every = [space.point(i) for i in range(space.size)]
    scored = [(p, ev.evaluate(space.to_config(p))) for p in every]
    t_all = time.perf_counter() - t0
    print(f"  {model}: {len(every)} points enumerated in {t_all:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for w in (3, 4, 6):
        u = _uniform(space, w)
        budget = ev.evaluate(space.to_config(u)).hardware["average_bitwidth"]
        ok = [(p, r) for p, r in scored if r.hardware["average_bitwidth"] <= budget + 1e-9]
        ex = max(ok, key=lambda pr: pr[1].software["accuracy"])[0]
        acc = {"uniform": test.evaluate(space.to_config(u)).software["accuracy"],
               "exhaustive (val optimum)": test.evaluate(space.to_config(ex)).software["accuracy"]}  # fmt: skip
        rows.append([model, w, f"{budget:.3f}", "uniform", f"{100 * acc['uniform']:.1f}", "-", "1", "-"])
        exh = f"{100 * acc['exhaustive (val optimum)']:.1f}"
        rows.append([model, w, f"{budget:.3f}", "exhaustive (val optimum)", exh, "-", f"{len(every)}", f"{t_all:.0f}"])
        bar = max(acc.values())
        anchor = correct(ev, space.to_config(u))
        for method in methods:
            accs, evals, found, walls = [], [], [], []
            for s in range(seeds):
                chosen, n, at, wall, seen = _run(cfg, space, ev, method.replace(" (anchor)", ""), budget, s, trials)
                if method.endswith("(anchor)"):  # the product enqueues the anchor as the first trial
                    n += 0 if _key(space.to_config(u)) in seen else 1
                    if mcnemar_greater(correct(ev, chosen), anchor) >= ALPHA:
                        chosen, at = space.to_config(u), 1  # not significantly better than uniform on validation
                accs.append(test.evaluate(chosen).software["accuracy"])
                evals.append(n)
                found.append(at)
                walls.append(wall)
            mean = statistics.mean(accs)
            hits = f"{sum(a >= bar - 1e-9 for a in accs)}/{seeds}"
            ev_s = f"{statistics.mean(evals):.0f} (chosen at {statistics.mean(found):.0f})"
            rows.append(
                [model, w, f"{budget:.3f}", method, f"{100 * mean:.1f}", hits, ev_s, f"{statistics.mean(walls):.1f}"]
            )
            print(f"  {model} {w}-bit budget {method}: test {100 * mean:.1f}%", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--models", default="jsc-s,cnn")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"a subset of: {', '.join(METHODS)}")
    a = ap.parse_args()
    methods = tuple(m.strip() for m in a.methods.split(","))
    if set(methods) - set(METHODS):
        ap.error(f"--methods: unknown {sorted(set(methods) - set(METHODS))}; choose from {', '.join(METHODS)}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for m in a.models.split(","):
            rows += bench_model(m, a.seeds, a.trials, a.epochs, Path(d), methods)
    head = ["model", "uniform bits", "budget (avg bits)", "method", "test acc % (mean)", "≥ best of uniform/exh.",
            "evaluations (distinct)", "wall s"]  # fmt: skip
    print(tabulate(rows, headers=head, tablefmt="github"))


if __name__ == "__main__":
    main()
