"""How well do bit-count proxies and da4ml's estimate rank FPGA cost, and what does fpga_luts cost a search?

For random per-node width configurations (weights and activations 2-8 bits, fracs calibrated) of a
trained jsc-s and a narrow cnn on digits, measured in one run:

- Spearman rank correlation with Yosys ``synth_xilinx`` LUTs (the synthesized count of the same Verilog) of
  average bitwidth, BOPs, EBOPs and da4ml's LUT estimate, and the da4ml / Yosys ratio (median, range);
- per-trial time of a search with ``fpga_luts`` as an objective against the same search with
  ``average_bitwidth`` (same model, space, sampler, trials; the checkpoint trained once), and the Pareto
  front (accuracy, LUTs) it found.

    python bench/fpga_cost.py                       # 30 configs per model, all synthesized; 300 trials
    python bench/fpga_cost.py --configs 30 --synth 8 --trials 100   # fewer Yosys runs (minutes each)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from tabulate import tabulate

from qfx.graph import trace
from qfx.hw import bops, hw_metrics
from qfx.hw.fpga import ebops, fpga_cost, fpga_luts
from qfx.passes.analysis import analyze
from qfx.passes.analysis.calibrate import CalibrationPass
from qfx.passes.export.da4ml_backend import synth, tools, trace_graph, write_project
from qfx.passes.transforms.quantize import QuantizePass, quantizable_nodes
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

ROOT = Path(__file__).resolve().parents[1]


def _graph(name: str, ds):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    m = build_model(
        name, ds.num_features, ds.num_classes, image_shape=ds.image_shape, **({"width": 4} if name == "cnn" else {})
    )
    train(m, ds, epochs=30, progress=False)
    g = analyze(trace(m.eval(), ds.test.x[:8]))
    return CalibrationPass(inputs=(ds.train.x[:256],))(g).graph


def _config(g, rng: random.Random) -> dict:  # noqa: ANN001
    out: dict = {"by": "name"}
    for n in quantizable_nodes(g):
        dw, ww = rng.randint(2, 8), rng.randint(2, 8)
        out[n] = {"name": "integer", "data_in_width": dw, "data_in_frac_width": "auto", "weight_width": ww,
                  "weight_frac_width": "auto", "bias_width": 8, "bias_frac_width": "auto"}  # fmt: skip
    return out


def correlations(
    name: str, n: int, n_synth: int, seed: int = 0, jsonl: Path | None = None, start: int = 0
) -> list[list]:
    ds = load_dataset("digits")
    g = _graph(name, ds)
    rng = random.Random(seed)
    rows = []
    for _ in range(start):  # resume a cut-short run: the same configurations in the same order
        _config(g, rng)
    for i in range(start, n):
        q = QuantizePass(_config(g, rng))(g).graph
        t0 = time.perf_counter()
        luts, lat = fpga_cost(q)
        t_da4ml = time.perf_counter() - t0
        t0 = time.perf_counter()
        per_layer = fpga_luts(q)
        t_layers = time.perf_counter() - t0
        r = {"avg_bits": hw_metrics(q)["average_bitwidth"], "bops": bops(q), "ebops": ebops(q),
             "fpga_luts (per layer)": per_layer, "da4ml (network)": luts}  # fmt: skip
        r["t_da4ml"], r["t_layers"] = t_da4ml, t_layers
        if i < n_synth:
            with tempfile.TemporaryDirectory() as d:
                write_project(trace_graph(q), Path(d), "verilog")
                t0 = time.perf_counter()
                r["yosys"] = synth(Path(d))["LUT"]
                r["t_yosys"] = time.perf_counter() - t0
        rows.append(r)
        if jsonl is not None:  # every configuration's figures as they come (a cut-short run keeps them)
            with jsonl.open("a") as f:
                f.write(json.dumps({"model": name, **r}) + "\n")
        msg = f"  {name} config {i + 1}/{n}: da4ml {luts:,.0f}, per layer {per_layer:,.0f}"
        print(msg + (f", yosys {r['yosys']:,}" if "yosys" in r else ""), file=sys.stderr, flush=True)
    return summarize(name, rows)


def summarize(name: str, rows: list[dict]) -> list[list]:
    """The table rows of one model's measured configurations."""
    syn = [r for r in rows if "yosys" in r]
    out = []
    for proxy in ("avg_bits", "bops", "ebops", "fpga_luts (per layer)", "da4ml (network)"):
        rho = spearmanr([r[proxy] for r in syn], [r["yosys"] for r in syn]).statistic if len(syn) > 2 else float("nan")
        rho_d = spearmanr([r[proxy] for r in rows], [r["da4ml (network)"] for r in rows]).statistic
        out.append([name, proxy, len(syn), f"{rho:.3f}", len(rows), f"{rho_d:.3f}"])
    ratios = [r["da4ml (network)"] / r["yosys"] for r in syn if r["yosys"]]
    if ratios:
        spread = f"median {statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        out.append([name, "da4ml / yosys LUTs", len(ratios), spread, "", ""])
    t_d = [r["t_da4ml"] for r in rows]
    t_y = [r["t_yosys"] for r in syn]
    t_l = [r["t_layers"] for r in rows]
    times = f"network trace {statistics.median(t_d):.2f}, per layer {statistics.median(t_l):.2f} (caches filling)"
    out.append([name, "median seconds per config", "", times, "", f"yosys {statistics.median(t_y):.1f}" if t_y else ""])
    return out


def _search(metric: str, trials: int, out: Path, seed: int = 0) -> tuple[float, list[dict]]:
    import contextlib
    import io

    from qfx import cli

    text = (ROOT / "configs" / "jsc_s_fpga.toml").read_text().replace("fpga_luts", metric)
    cfg = out / f"{metric}.toml"
    cfg.write_text(text.replace("n_trials = 150", f"n_trials = {trials}").replace("seed = 0", f"seed = {seed}"))
    run = out / "run"  # one directory: the checkpoint trains once, every search reuses it
    with contextlib.redirect_stdout(io.StringIO()):  # the searches' own tables: not this bench's output
        assert cli.main(["-q", "search", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    rows = json.loads((run / "trials.json").read_text())
    per_trial = statistics.median(r["duration_s"] for r in rows if r.get("duration_s") is not None)
    return per_trial, list(json.loads((run / "best.json").read_text()).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--synth", type=int, default=30, help="configs per model synthesized by yosys")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--models", default="jsc-s,cnn")
    ap.add_argument("--jsonl", type=Path, help="append each configuration's figures to this file")
    ap.add_argument("--summarize", type=Path, help="only print the table of a --jsonl file (a run cut short)")
    ap.add_argument("--start", type=int, default=0, help="skip the first N configurations (resume with --jsonl)")
    a = ap.parse_args()
    headers = ["model", "measure", "synthesized", "Spearman vs yosys LUTs", "configs", "Spearman vs da4ml (network)"]
    if a.summarize:
        recs = [json.loads(line) for line in a.summarize.read_text().splitlines() if line.strip()]
        table = [
            row
            for m in dict.fromkeys(r["model"] for r in recs)
            for row in summarize(m, [r for r in recs if r["model"] == m])
        ]
        print(tabulate(table, headers=headers, tablefmt="github"))
        return
    if tools()["yosys"] is None:
        a.synth = 0
        print("yosys is not on PATH: correlations against da4ml's estimate only", file=sys.stderr)
    rows = []
    for name in filter(None, a.models.split(",")) if a.configs else ():
        rows += correlations(name, a.configs, a.synth, jsonl=a.jsonl, start=a.start)
    if rows:
        print(tabulate(rows, headers=headers, tablefmt="github"), flush=True)
    if not a.trials:
        return
    with tempfile.TemporaryDirectory() as d:
        base, _ = _search("average_bitwidth", a.trials, Path(d))
        fpga, best = _search("fpga_luts", a.trials, Path(d))
        warm, _ = _search("fpga_luts", a.trials, Path(d), seed=1)  # another search: the layer cache is warmer
        hot, _ = _search("fpga_luts", a.trials, Path(d))  # the first search again: every layer config is cached
    print(
        f"\nper-trial median, {a.trials}-trial nsgaii search on jsc-s: average_bitwidth objective "
        f"{base * 1e3:.1f} ms; fpga_luts objective {fpga * 1e3:.1f} ms ({fpga / base:.2f}x) while the layer cache "
        f"fills, {warm * 1e3:.1f} ms ({warm / base:.2f}x) in a second search (seed 1) after it, "
        f"{hot * 1e3:.1f} ms ({hot / base:.2f}x) with every layer configuration cached (seed 0 again)"
    )
    front = sorted(best, key=lambda b: b["hardware_metrics"]["fpga_luts"])
    table = [[b["number"], b["software_metrics"]["accuracy"], b["hardware_metrics"]["fpga_luts"]] for b in front]
    print(tabulate(table, headers=["trial", "accuracy (val)", "fpga_luts"], tablefmt="github"))


if __name__ == "__main__":
    main()
