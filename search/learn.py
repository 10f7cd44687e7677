"""``qfx learn``: learned precision on a config's model, its front measured in hardware, written to a directory.

The float model comes from the checkpoint (or is trained as ``qfx search`` trains it); precisions are learned
on the train split over the config's ``[learn]`` beta ramp (:mod:`qfx.passes.transforms.learn_precision`);
every front epoch (chosen on validation) is measured: test accuracy of its quantized graph (reported, never
used to choose), EBOPs, and da4ml's LUTs and adder depth of the whole network's logic (what ``qfx export
--format verilog`` writes). Outputs (a second run into the same directory replaces exactly these):

- ``front.json`` / ``front.csv``: the front, one row per kept epoch; ``front.png``: test accuracy vs LUTs;
- ``graphs/epoch_N/``: each front point as a saved quantized graph (``qfx export --graph ...``);
- ``best/``: the point picked by ``pick`` (``max:accuracy`` on validation by default, or the smallest design
  with validation accuracy at least X: ``min:fpga_luts,accuracy>=X``).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qfx.graph.safeio import check_out_dir, out_path
from qfx.hw.fpga import fpga_cost
from qfx.passes.transforms.learn_precision import LearnConfig, learn_precision
from qfx.search.config import RunConfig
from qfx.search.outputs import clear_owned
from qfx.search.session import prepare

MANIFEST = "learn.json"
OWNED = frozenset({"front.json", "front.csv", "front.png", "graphs/", "best/"})
MAX_MEASURED = 16  # front points measured in hardware (evenly thinned when the front is longer)
_PICK = re.compile(r"^(max:accuracy|min:fpga_luts(,accuracy>=(0(\.\d+)?|1(\.0+)?))?)$")


@dataclass
class FrontPoint:
    epoch: int
    beta: float
    val_accuracy: float
    test_accuracy: float
    ebops: float
    fpga_luts: float
    fpga_latency: float
    graph: str


@dataclass
class LearnRun:
    points: list[FrontPoint]
    best: FrontPoint
    out: Path
    seconds: dict[str, float] = field(default_factory=dict)


def check_pick(pick: str) -> str:
    """``max:accuracy`` or ``min:fpga_luts[,accuracy>=X]`` (ValueError saying so otherwise)."""
    if not _PICK.match(pick):
        raise ValueError(f"pick {pick!r}: allowed are max:accuracy and min:fpga_luts[,accuracy>=X] with X in 0..1")
    return pick


def choose(points: list[FrontPoint], pick: str) -> tuple[FrontPoint, str]:
    """The picked point (on validation accuracy) and a note when the floor is unreachable."""
    check_pick(pick)
    if pick == "max:accuracy":
        return max(points, key=lambda p: (p.val_accuracy, -p.fpga_luts)), ""
    floor = float(pick.split(">=")[1]) if ">=" in pick else 0.0
    ok = [p for p in points if p.val_accuracy >= floor]
    if not ok:
        best = max(points, key=lambda p: (p.val_accuracy, -p.fpga_luts))
        return best, f"no front point reaches validation accuracy {floor:g}: picked the most accurate"
    return min(ok, key=lambda p: (p.fpga_luts, -p.val_accuracy)), ""


def _thin(recs: list[Any], n: int) -> list[Any]:
    if len(recs) <= n:
        return recs
    idx = sorted({round(i * (len(recs) - 1) / (n - 1)) for i in range(n)})
    return [recs[i] for i in idx]


def run_learn(
    cfg: RunConfig, checkpoint: str | None, out: Path, pick: str = "max:accuracy", progress: bool = True,
    trust: bool = False, say: Callable[[str], None] = print,
) -> LearnRun:  # fmt: skip
    """See the module docstring."""
    check_pick(pick)
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prep = prepare(cfg, checkpoint, out, progress, trust)
    lc = cfg.learn or LearnConfig()
    ds = prep.dataset
    t1 = time.perf_counter()
    res = learn_precision(prep.graph, ds.train, ds.val, lc, progress)
    t2 = time.perf_counter()
    clear_owned(out, MANIFEST, OWNED)
    recs = _thin(res.front, MAX_MEASURED)
    if len(recs) < len(res.front):
        say(f"front: {len(res.front)} epochs; measuring {len(recs)} of them, evenly spread")
    points = []
    for i, rec in enumerate(recs):
        q = res.graph(rec.epoch)
        with torch.no_grad():
            test = float((q(ds.test.x).argmax(1) == ds.test.y).float().mean())
        luts, depth = fpga_cost(q)
        rel = f"graphs/epoch_{rec.epoch}"
        q.save(out_path(out, rel))
        points.append(FrontPoint(rec.epoch, rec.beta, rec.val_accuracy, test, rec.ebops, luts, depth, rel))
        if progress:
            say(f"  [{i + 1}/{len(recs)}] epoch {rec.epoch}: {luts:,.0f} LUTs, depth {depth:g}")
    best, note = choose(points, pick)
    if note:
        say(note)
    shutil.copytree(out / best.graph, out_path(out, "best"), dirs_exist_ok=True)
    t3 = time.perf_counter()
    secs = {"prepare": t1 - t0, "learn": t2 - t1, "measure": t3 - t2}
    _write(out, points, best, lc, pick, secs)
    return LearnRun(points, best, out, secs)


def _write(out: Path, points: list[FrontPoint], best: FrontPoint, lc: LearnConfig, pick: str, secs: dict) -> None:
    data = {"learn": lc.model_dump(), "pick": pick, "best": asdict(best), "front": [asdict(p) for p in points],
            "seconds": secs}  # fmt: skip
    out_path(out, "front.json").write_text(json.dumps(data, indent=1))
    with out_path(out, "front.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(points[0])))
        w.writeheader()
        w.writerows(asdict(p) for p in points)
    _plot(points, best, out_path(out, "front.png"))
    files = sorted(OWNED)
    out_path(out, MANIFEST).write_text(json.dumps({"files": files}))


def _plot(points: list[FrontPoint], best: FrontPoint, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    pts = sorted(points, key=lambda p: p.fpga_luts)
    ax.plot([p.fpga_luts for p in pts], [p.val_accuracy for p in pts], "o-", label="validation (chosen on)", alpha=0.8)
    ax.plot([p.fpga_luts for p in pts], [p.test_accuracy for p in pts], "s", label="test (reported)", alpha=0.8)
    which = best.graph.removeprefix("graphs/").replace("_", " ").replace(" epoch", ", epoch")  # trial N, epoch E
    ax.plot([best.fpga_luts], [best.val_accuracy], "*", ms=16, color="black", label=f"best: {which}")
    ax.set_xlabel("da4ml LUTs (whole network)")
    ax.set_ylabel("accuracy")
    trials = any(p.graph.startswith("graphs/trial_") for p in points)
    ax.set_title(f"learned precision: front over {'all trials' if trials else 'the beta ramp'}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
