#!/usr/bin/env python
"""qfx: trace, analyse, quantize and search mixed-precision integer quantizations.

Errors print one line and a hint; pass --debug for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("qfx")


_QUIET = [False]  # set per main() call by --quiet


def _note(msg: str, about: str = "") -> None:
    """A side remark on stdout (``note: ...``); --quiet drops it."""
    if not _QUIET[0]:
        print(f"note ({about}): {msg}" if about else f"note: {msg}")


def _threads(args: argparse.Namespace, model: Any, cfg: Any = None) -> None:
    """The thread policy, applied by the CLI only: --threads, else the config's ``threads``, else chosen
    from the model's size (``model`` None: only an explicit choice is applied, e.g. before training)."""
    import torch

    from qfx.zoo.train import auto_threads

    n = args.threads or getattr(cfg, "threads", None) or (auto_threads(model) if model is not None else None)
    if n:
        torch.set_num_threads(n)


class UsageError(Exception):
    """A user-facing error: message plus hint."""

    def __init__(self, msg: str, hint: str = "") -> None:
        super().__init__(msg)
        self.hint = hint


def _out_dir(args: argparse.Namespace, cfg_path: str | None, kind: str) -> Path:
    """``--out``, else ``outputs/<config name>`` (plus ``/<study name>@<storage kind>`` for a named persistent
    study, so the same study name on sqlite and on a journal never share one directory).
    Refused when a symlink inside it leads out of it (outputs are never written through one)."""
    from qfx.graph.safeio import check_out_dir

    if getattr(args, "out", None):
        return check_out_dir(args.out)
    stem = Path(cfg_path).stem if cfg_path else kind
    study = getattr(args, "study_name", None)
    if not study:
        return check_out_dir(Path("outputs") / stem)
    storage = getattr(args, "storage", None) or ""
    backend = "journal" if storage.startswith("journal:") or storage.endswith(".log") else storage.split(":")[0]
    return check_out_dir(Path("outputs") / stem / f"{study}@{backend.split('+')[0] or 'memory'}")


def _positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _number(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {v}")
    return x


def _at_most(v: str, hi: int, why: str) -> int:
    n = _positive(v)
    if n > hi:
        raise argparse.ArgumentTypeError(f"must be at most {hi:,} ({why}), got {n:,}")
    return n


def _n_jobs(v: str) -> int:
    from qfx.search.config import MAX_JOBS

    return _at_most(v, MAX_JOBS, "4 per core of this machine")


def _verify_rows(v: str) -> int:
    from qfx.passes.export.api import MAX_VERIFY_ROWS

    return _at_most(v, MAX_VERIFY_ROWS, "rows verified per format")


def _seed(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if not 0 <= n < 2**32:
        raise argparse.ArgumentTypeError(f"must be in 0..2**32-1, got {n}")
    return n


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _pick_arg(v: str) -> str:
    from qfx.search.pick import PickError, parse_pick

    try:
        parse_pick(v)
    except PickError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return v


def _study_name(v: str) -> str:
    """A study name is a name, never a path: letters, digits, ``_ . + -``, no ``..`` (it names a directory)."""
    if not STUDY_NAME.fullmatch(v) or ".." in v:
        raise argparse.ArgumentTypeError(
            f"{v[:60]!r} is not a study name: 1-100 letters, digits, '_', '.', '+', '-', starting with a letter or "
            "digit, no '..' or path separators"
        )
    return v


def _clock(v: str) -> float:
    x = _positive_float(v)
    if x > 1000:
        raise argparse.ArgumentTypeError(f"a clock period in ns up to 1000, got {v}")
    return x


def _clock_arg(p: argparse.ArgumentParser) -> None:
    h = "an II = 1 pipeline at this clock period in ns (verilog/vhdl; stages from a stated delay model: 0.6 ns per "
    p.add_argument("--clock-ns", type=_clock, help=h + "adder level + 0.5 ns per stage); default: combinational")


def _learn_pick(v: str) -> str:
    from qfx.search.learn import check_pick

    try:
        return check_pick(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(v: str) -> float:
    x = _number(v)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {v}")
    return x


def _threads_arg(v: str) -> int:
    from qfx.search.config import MAX_THREADS

    n = _positive(v)
    if n > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {n}")
    return n


def _tolerance(v: str) -> float:
    x = _number(v)
    if not (x >= 0 and x < float("inf")):  # NaN fails both
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {v}")
    return x


def _widths(v: str) -> list[int]:
    """``--widths 2,4,8``: integers in 1..32."""
    try:
        ws = [int(w) for w in v.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a comma-separated list of integers (e.g. 2,4,8)") from None
    if not ws or not all(1 <= w <= 32 for w in ws):
        raise argparse.ArgumentTypeError(f"widths must be integers in 1..32, got {v!r}")
    return ws


def _sampler_list(v: str) -> list[str]:
    """``--samplers tpe,random``: a non-empty list of sampler names (NAME+sensitivity allowed)."""
    names = [s.strip() for s in v.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one sampler name, e.g. tpe,random")
    return names


def _model_from_spec(spec: str, dataset: str) -> tuple[Any, Any]:
    """A zoo name (with a dataset for its sizes), a checkpoint, or ``module:function``."""
    import torch

    if ":" in spec and not Path(spec).exists():
        mod, _, fn = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"cannot import {spec!r}: {e}", "use module.path:function_returning_a_model") from e
        built = obj()
        if isinstance(built, tuple):
            if len(built) != 2 or not isinstance(built[0], torch.nn.Module):
                raise UsageError(
                    f"{spec} returned a tuple of {len(built)} ({', '.join(type(b).__name__ for b in built)}), "
                    "not (model, example_inputs)",
                    "return (nn.Module, tensor or tuple of tensors)",
                )
            ins = built[1] if isinstance(built[1], tuple) else (built[1],)
            if not ins or not all(isinstance(i, torch.Tensor) for i in ins):
                raise UsageError(f"{spec}: example inputs must be tensors, got {built[1]!r}"[:300], "")
            return built[0], built[1]
        if not isinstance(built, torch.nn.Module):
            raise UsageError(
                f"{spec} returned {type(built).__name__}, not an nn.Module", "return (model, example_inputs)"
            )
        inputs = getattr(built, "example_inputs", None)
        if inputs is None:
            raise UsageError(
                f"{spec} returned a model without example inputs",
                "return (model, example_inputs) or set model.example_inputs",
            )
        return built, inputs
    from qfx.zoo.data import load_dataset
    from qfx.zoo.models import MODELS, build_model

    if spec not in MODELS:
        raise UsageError(f"unknown model {spec!r}", f"zoo models: {', '.join(MODELS)}; or module:function")
    ds = load_dataset(dataset)
    torch.manual_seed(0)
    return build_model(spec, ds.num_features, ds.num_classes, image_shape=ds.image_shape), ds.val.x[:8]


# ---- commands ---------------------------------------------------------------------
def cmd_analyze(args: argparse.Namespace) -> int:
    from qfx.graph import trace
    from qfx.passes.analysis import analyze
    from qfx.zoo.train import load_checkpoint

    if args.checkpoint:
        model, ds, _ = load_checkpoint(args.checkpoint, args.trust_checkpoint)
        inputs = ds.val.x[: args.batch]
    else:
        if not args.model:
            raise UsageError("analyze needs --model or --checkpoint", "e.g. qfx analyze --model jsc-toy")
        model, inputs = _model_from_spec(args.model, args.dataset)
    g = analyze(trace(model, inputs))
    print(g if args.format == "table" else __import__("qfx.graph.dump", fromlist=["to_json"]).to_json(g))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from qfx.search.session import train_and_save

    t0 = time.perf_counter()
    p, metrics, _ = train_and_save(args.out, args.model, args.dataset, args.epochs, args.batch_size, args.lr,
                                   args.seed, progress=not args.no_progress)  # fmt: skip
    print(
        f"trained {args.model} on {args.dataset} in {time.perf_counter() - t0:.1f}s: "
        f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}; checkpoint {p}"
    )
    return 0


def _print_metrics(title: str, m: dict[str, Any], classes: list[str]) -> None:
    from tabulate import tabulate

    keys = ["accuracy", "loss", "precision", "recall", "f1", "precision_macro", "recall_macro", "f1_macro"]
    print(title)
    print(tabulate([[k, f"{m[k]:.4f}"] for k in keys], headers=["metric", "value"], tablefmt="github"))
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(tabulate([[c, *r] for c, r in zip(classes, m["confusion_matrix"], strict=True)], headers=["", *classes]))


def cmd_eval(args: argparse.Namespace) -> int:
    from qfx.zoo.train import evaluate, load_checkpoint

    model, ds, info = load_checkpoint(args.checkpoint, args.trust_checkpoint)
    _threads(args, model)
    split = ds.split(args.split)
    m = evaluate(model, split, ds.num_classes)
    _print_metrics(f"{info['model']} on {info['dataset']} ({args.split}, {len(split)} samples)", m, ds.classes)
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1))
    return 0


def cmd_transform(args: argparse.Namespace) -> int:
    from qfx.passes.transforms.quantize import QuantizePass, SummaryPass
    from qfx.search.config import load_config
    from qfx.search.session import fp32_vs_quantized, prepare, save_transform

    cfg = load_config(args.config)
    if cfg.passes.quantize is None:
        raise UsageError(f"{args.config}: no [passes.quantize] section", "see configs/jsc_toy_by_name.toml")
    out = _out_dir(args, args.config, "transform")
    _threads(args, None, cfg)  # a baseline trained by prepare() uses the explicit choice
    prep = prepare(cfg, args.checkpoint, out, not args.no_progress, args.trust_checkpoint)
    _threads(args, prep.model, cfg)
    res = QuantizePass(cfg.passes.quantize)(prep.graph)
    for n in res.info["notes"]:
        _note(n)
    summ = SummaryPass()(res.graph).info
    print(summ["text"])
    cmp = fp32_vs_quantized(prep, res.graph, args.split)
    print(f"\n{args.split} set, {cmp['samples']} samples")
    print(cmp["table"])
    if args.numerics:
        from qfx.passes.debug import NumericsPass, numerics_table
        from qfx.passes.debug.views import plot_sqnr

        NumericsPass(prep.graph, prep.dataset.split(args.split).x[: args.numerics_samples])(res.graph)
        print(f"\nper-node numerics vs FP32 ({min(cmp['samples'], args.numerics_samples)} {args.split} samples)")
        print(numerics_table(res.graph))
        print(f"plot: {plot_sqnr(res.graph, out / 'sqnr.png')}")
    print(f"\nquantized graph saved to {save_transform(out, res.graph, summ, cmp)}")
    return 0


def _search_config(args: argparse.Namespace) -> Any:
    """The config with the command line's setup overrides (an invalid one names its flag)."""
    from pydantic import ValidationError

    from qfx.search.config import load_config
    from qfx.search.session import with_overrides

    cfg = load_config(args.config, require_search=True)
    if getattr(args, "pick", None):
        st = cfg.search.strategy.model_copy(update={"pick": args.pick})
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"strategy": st})})
    upd = {k: getattr(args, k) for k in ("n_trials", "sampler", "seed", "n_jobs", "timeout")}
    try:
        return with_overrides(cfg, **upd)
    except ValidationError as e:
        err = e.errors()[0]
        opt = "--" + str(err["loc"][0]).replace("_", "-")
        raise UsageError(f"{opt}: {err['msg'].removeprefix('Value error, ')}", "see qfx search --help") from None


def _search_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Path]:
    """Config, prepared model, space, evaluator and output directory (sensitivity, compare-samplers)."""
    from qfx.search.session import build_search, prepare

    cfg = _search_config(args)
    out = _out_dir(args, args.config, "search")
    _threads(args, None, cfg)  # a baseline trained by prepare() uses the explicit choice
    prep = prepare(cfg, args.checkpoint, out, not args.no_progress, args.trust_checkpoint)
    _threads(args, prep.model, cfg)
    space, ev = build_search(cfg, prep)
    return cfg, prep, space, ev, out


def _fp32_note(cfg: Any, ev: Any) -> None:
    """What the float model reaches on the samples the search scores: the ceiling every trial is read against."""
    import torch

    with torch.no_grad():
        acc = float((ev.pristine.gm.eval()(ev.x).argmax(1).cpu() == ev.y).float().mean())
    why = ""
    if acc < 0.8:
        why = (
            f"; {cfg.model} is a small model for this dataset, so quantization has little headroom to show: "
            "`qfx search --config jsc_s_by_name` searches a model near 97%"
        )
    _note(f"FP32 {cfg.model} reaches {acc:.1%} accuracy on the {len(ev.y)} samples the search scores{why}")


def _budgets(constraints: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {op} {v:g}" for k, b in constraints.items() for op, v in (("<=", b.max), (">=", b.min)) if v is not None
    )


def cmd_search(args: argparse.Namespace) -> int:
    from qfx.passes.export.api import parse_formats
    from qfx.search.session import run_search

    if args.export:
        try:
            parse_formats(args.export)  # before the search, not after it
        except ValueError as e:
            raise UsageError(f"--export: {e}", "comma-separated formats from the list") from None
    started = time.time() - 1  # files written from here on are this run's outputs (mtime resolution)
    cfg = _search_config(args)
    out = _out_dir(args, args.config, "search")

    def ready(prep: Any, space: Any, ev: Any) -> None:
        print(f"{prep.graph.gm.__class__.__name__} from {prep.checkpoint}; {space.describe()}")
        _fp32_note(cfg, ev)

    run = run_search(cfg, args.checkpoint, out, args.storage, args.study_name, progress=not args.no_progress,
                     trust=args.trust_checkpoint, tracebacks=args.debug, threads=args.threads or "auto",
                     ready=ready)  # fmt: skip
    if run.objective.interrupted:
        print("interrupted: the outputs of the finished trials were written", file=sys.stderr)
    _report_search(run, cfg, out, started)
    if args.export and run.best:
        _export_best(args, run, out)
    return 130 if run.objective.interrupted else 0


def _selection_note(run: Any, st: Any) -> None:
    """With a selection split: its size, how many candidates it judged, and search/selection/test figures."""
    a = run.selection.get("anchor")
    if a is not None and "p_value" in a and a["p_value"] is not None:
        _note(
            f"anchor: the best vs the uniform-width trial {a['anchor_trial']} on the {a['rows']} rows of the "
            f"{a['split']}: right only by the best {a['best_right_anchor_wrong']}, only by the anchor "
            f"{a['anchor_right_best_wrong']}; McNemar p = {a['p_value']:.3g} (alpha {a['alpha']:g}): "
            f"kept the {a['kept']}"
        )
    elif a is not None:
        _note(f"anchor: kept the {a['kept']}" + (f" ({a['why']})" if "why" in a else ""))
    if "splits" not in run.selection:
        return
    n = run.selection["splits"]
    _note(
        f"selection: the {len(run.selection['trials'])} best distinct configuration(s) of the search "
        f"({n['search']} samples) re-scored on a held-out selection split ({n['selection']} samples); "
        f"test split {n['test']} samples (reported, never used to choose)"
    )
    for b in run.best_json.values():
        if "selection_metrics" in b:
            fig = {k: b[f] for k, f in (("search", "software_metrics"), ("selection", "selection_metrics"),
                                        ("test", "test_metrics"))}  # fmt: skip
            acc = ", ".join(f"{k} {100 * v['accuracy']:.1f}%" for k, v in fig.items() if "accuracy" in v)
            _note(f"trial {b['number']}: accuracy {acc}")


def _report_search(run: Any, cfg: Any, out: Path, started: float) -> None:
    """The Best table (one row per distinct configuration), budget and weakest-node notes, the files written."""
    from qfx.search.records import TrialRecord, feasible, record_of
    from qfx.search.study import best_table, draws, summarize

    st, study, best = cfg.search.strategy, run.study, run.best
    print("\nBest trial(s):")
    done = [t for t in study.get_trials(False) if t.state.name == "COMPLETE" and t.number not in run.objective.skipped]
    refused = sum(bool((r := record_of(t)) and r.refused) for t in study.get_trials(False) if t.state.name == "PRUNED")
    none = "(no feasible trial: every trial broke a budget)" if done or refused else "(no trial completed)"
    sp, skip = run.objective.space, run.objective.skipped
    print(best_table(best, list(st.metrics), draws(study, skip), sp, list(st.constraints)) if best else none)
    if st.constraints:
        infeasible = sum(not feasible(t) for t in done)
        _note(
            f"budgets {_budgets(st.constraints)}: {infeasible} of {len(done)} evaluated trial(s) infeasible; "
            f"{refused} sampled point(s) broke a hardware budget and were refused before evaluation"
        )
    _selection_note(run, st)
    p = run.selection.get("pick")
    if p:
        _note(f"best_model/ is trial {p['trial']} (pick {p['rule']!r}): {p['why']}; the other front points: pareto/")
    for b in run.best_json.values():
        if b["weakest_nodes"]:
            desc = ", ".join(f"{w['node']} ({w['sqnr_db']} dB)" for w in b["weakest_nodes"])
            n = run.objective.evaluator.SQNR_BATCH
            _note(f"trial {b['number']}: weakest nodes vs float (output SQNR, {n} samples): {desc}")
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.stat().st_mtime >= started)
    print(f"\ntrials: {summarize(study)}; outputs in {out}/ ({', '.join(written)})")
    if not best and not run.objective.interrupted:
        failed = [t for t in study.get_trials(False) if t.state.name == "FAIL"]
        if failed:
            err = ((record_of(failed[0]) or TrialRecord.of(sampled_config={})).error or "").strip().splitlines()
            why = err[-1] if err else "none recorded: its worker stopped before recording it (killed or timed out?)"
            raise UsageError(
                f"all {len(failed)} trial(s) failed; first error (trial {failed[0].number}): {why}",
                f"tracebacks are in {out / 'trials.json'} (key 'error'); rerun with --debug to print them",
            )


def _print_exports(done: list[Any]) -> None:
    from tabulate import tabulate

    rows = []
    for e in done:
        a = e.agreement
        rows.append(
            [
                e.fmt,
                str(e.path),
                a.get("checked_by", "-"),
                a.get("samples", "-"),
                a.get("required", "-"),
                {True: "yes", False: "NO"}.get(a.get("ok"), "-"),  # type: ignore[arg-type]
                a.get("bit_identical", "-"),
                a.get("max_abs_diff", "-"),
                a.get("same_class", "-"),
            ]
        )
    headers = [
        "format",
        "written",
        "checked by",
        "rows",
        "required",
        "passed",
        "bit-identical",
        "max |diff|",
        "same class",
    ]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    for e in done:
        for n in e.notes:
            _note(n, e.fmt)


def _debugged(args: argparse.Namespace) -> Any:
    """The saved graph with NumericsPass run against its float version on the chosen batch."""
    from qfx.graph import QGraph
    from qfx.passes.debug import debug_against_float

    g = QGraph.load(args.graph, trust=args.trust_checkpoint)
    x = (_dataset_rows(args.data, args.split, args.samples, g),) if args.data else None
    try:
        return debug_against_float(g, x)
    except ValueError as e:
        raise UsageError(f"{args.graph}: {e}", "save a quantized graph") from None


def cmd_learn(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from qfx.passes.transforms.learn_precision import LearnConfig
    from qfx.search.config import load_config
    from qfx.search.learn import run_learn
    from qfx.search.learn_trials import run_learn_search

    cfg = load_config(args.config)
    upd = {k: getattr(args, k) for k in ("epochs", "beta", "beta_start", "seed") if getattr(args, k) is not None}
    try:
        lc = LearnConfig.model_validate({**(cfg.learn or LearnConfig()).model_dump(), **upd})
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}", "see qfx learn --help") from None
    cfg = cfg.model_copy(update={"learn": lc})
    if args.n_trials is not None and cfg.learn_search is not None:
        cfg = cfg.model_copy(update={"learn_search": cfg.learn_search.model_copy(update={"n_trials": args.n_trials})})
    out = _out_dir(args, args.config, "learn")
    runner = run_learn if cfg.learn_search is None else run_learn_search  # [learn_search]: trials of learn runs
    run = runner(cfg, args.checkpoint, out, args.pick, progress=not args.no_progress, trust=args.trust_checkpoint)
    from tabulate import tabulate

    rows = [(p.epoch, f"{p.beta:.2g}", f"{p.val_accuracy:.4f}", f"{p.test_accuracy:.4f}", f"{p.ebops:,.0f}",
             f"{p.fpga_luts:,.0f}", f"{p.fpga_latency:g}", p.graph, "*" * (p is run.best))
            for p in run.points]  # fmt: skip
    head = ["epoch", "beta", "val acc", "test acc", "EBOPs", "da4ml LUTs", "adder depth", "graph", "best"]
    print(tabulate(rows, head))
    s = run.seconds
    print(
        f"\nlearned in {s['learn']:.0f} s (float model {s['prepare']:.0f} s, hardware measures {s['measure']:.0f} s); "
        f"best ({args.pick}, chosen on validation): epoch {run.best.epoch}, {run.best.fpga_luts:,.0f} LUTs\n"
        f"wrote {out}/front.json, front.csv, front.png, graphs/ and best/ "
        f"(qfx export --graph {shlex.quote(str(out / 'best'))} --format verilog --out {shlex.quote(str(out / 'rtl'))})"
    )
    return 0


def cmd_debug(args: argparse.Namespace) -> int:
    from qfx.graph.safeio import check_out_dir
    from qfx.passes.debug import numerics_table
    from qfx.passes.debug.views import plot_sqnr, worst_nodes, write_dot, write_model_explorer

    out = check_out_dir(Path(args.out)) if args.out else check_out_dir(Path(args.graph) / "debug", derived=True)
    g = _debugged(args)
    out.mkdir(parents=True, exist_ok=True)
    print(numerics_table(g))
    worst = worst_nodes(g)
    if worst:
        print("\nweakest nodes: " + ", ".join(f"{w['node']} ({w['sqnr_db']} dB)" for w in worst))
    from qfx.graph.dump import to_json

    (out / "numerics.json").write_text(to_json(g))
    files = [plot_sqnr(g, out / "sqnr.png"), *write_dot(g, out / "graph.dot")]
    files += list(write_model_explorer(g, out / "model_explorer").values())
    print(f"\nwrote {', '.join(str(f) for f in files[:3])} and {len(files) - 3} Model Explorer file(s)")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from qfx.passes.debug.views import serve

    serve(_debugged(args), args.host, args.port, open_browser=not args.no_open)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from qfx.graph import QGraph
    from qfx.passes.export.api import export_all, parse_formats

    fmts = parse_formats(args.format)
    g = QGraph.load(args.graph, trust=args.trust_checkpoint)
    x = None if args.no_verify else _verification_batch(args, g)
    if args.clock_ns is not None and not any(f in ("verilog", "vhdl") for f in fmts):
        raise UsageError("--clock-ns: a clock target applies to verilog and vhdl", "add --format verilog")
    done = export_all(g, fmts, Path(args.out), x, progress=_note, clock_ns=args.clock_ns)
    _print_exports(done)
    _fail_on_difference(done)
    return 0


# yosys synth_xilinx seconds per 1,000 da4ml LUTs on 2 cores, measured (jsc-s: 93 s at 40k; 3 min at 21k)
SYNTH_S_PER_KLUT = (2.3, 9.0)


def cmd_synth(args: argparse.Namespace) -> int:
    """Verilog of a saved graph through da4ml, then Yosys ``synth_xilinx``: LUT/FF/CARRY/DSP beside da4ml's
    estimate. Absent tools are named in one line (exit 2)."""
    from tabulate import tabulate

    from qfx.graph import QGraph
    from qfx.graph.safeio import check_out_dir
    from qfx.passes.export.da4ml_backend import synth, tools, trace_graph, write_project

    if tools()["yosys"] is None:
        raise UsageError("yosys is not on PATH: synthesis needs it", "apt-get install yosys (or use qfx export)")
    g = QGraph.load(args.graph, trust=args.trust_checkpoint)
    out = check_out_dir(Path(args.out)) if args.out else check_out_dir(Path(args.graph) / "synth", derived=True)
    tr = trace_graph(g)
    pipe = write_project(tr, out, "verilog", args.clock_ns)
    lo, hi = (SYNTH_S_PER_KLUT[0] * tr.luts / 1000, SYNTH_S_PER_KLUT[1] * tr.luts / 1000)
    _note(f"yosys synth_xilinx of {out / 'src'}: ~{tr.luts:,.0f} LUTs, expect {lo:.0f}-{hi:.0f} s (elapsed every 15 s)")
    cells = synth(out, progress=_note)
    rows = [["yosys synth_xilinx", cells["LUT"], cells["FF"], cells["CARRY"], cells["DSP"], cells["MUXF"]]]
    rows.append(["da4ml estimate", f"{tr.luts:.0f}", "-", "-", "-", "-"])
    print(tabulate(rows, headers=["", "LUT", "FF", "CARRY", "DSP", "MUXF7/8"], tablefmt="github"))
    print(f"\nlongest path between registers/ports: {cells['LTP']} cells (LUT/CARRY levels, Yosys ltp)")
    _per_layer(g, args.clock_ns)
    if pipe is None:
        print(f"combinational adder depth {tr.latency:g} (da4ml); cell counts in {out / 'yosys_stat.txt'}")
    else:
        print(
            f"II = 1 pipeline at {pipe.clock_ns:g} ns: {pipe.stages} stages of <= {pipe.levels_per_stage} adder "
            f"levels (a delay model, not a timing analysis), latency {pipe.latency_cycles} cycles = "
            f"{pipe.latency_ns:g} ns; {cells['FF']} flip-flops (Yosys); cell counts in {out / 'yosys_stat.txt'}"
        )
    if args.ice40:
        _ice40(out, tr, pipe)
    return 0


def _per_layer(g: Any, clock_ns: float | None) -> None:
    """Where the logic goes: each deployment-IR layer's share of da4ml's LUTs and register bits (they sum to the
    whole network's) and the adder level its outputs settle at."""
    from tabulate import tabulate

    from qfx.hw.fpga import fpga_timing

    t = fpga_timing(g, clock_ns)
    if not t.layers:
        return
    rows = [[name, f"{luts:,.0f}", f"{ffs:,}" if clock_ns else "-", f"{lat:g}"] for name, luts, ffs, lat in t.layers
            if luts or ffs]  # fmt: skip
    rows.append(["whole network", f"{t.luts:,.0f}", f"{t.ffs:,}" if clock_ns else "-", f"{t.depth:g}"])
    print("\nper layer (da4ml's estimate; the shares sum to the whole network's):")
    print(tabulate(rows, headers=["layer", "LUTs", "register bits", "outputs at adder level"], tablefmt="github"))


def _ice40(out: Path, tr: Any, pipe: Any) -> None:
    """``qfx synth --ice40``: place and route for an iCE40 HX8K (nextpnr) and print the achieved Fmax."""
    from qfx.passes.export.pnr import ice40_fmax
    from qfx.passes.export.testbench import write_ports

    write_ports(out, tr.comb, pipe)
    r = ice40_fmax(out, target_mhz=1000 / pipe.clock_ns if pipe is not None else 50.0, progress=_note)
    cycles = pipe.latency_cycles if pipe is not None else 1
    print(
        f"iCE40 HX8K (yosys synth_ice40 + nextpnr-ice40, between harness registers): Fmax {r['fmax_mhz']:.1f} MHz, "
        f"{r['logic_cells']:,} logic cells, ~{max(r['flip_flops'] - r['harness_ffs'], 0):,} flip-flops of the model; "
        f"latency {cycles} cycle(s) = {1000 * cycles / r['fmax_mhz']:.1f} ns at that clock"
    )


def _verification_batch(args: argparse.Namespace, g: Any) -> Any:
    """``--data``'s split (else the graph's example inputs) plus saturating rows: ``--verify-rows`` in all."""
    from qfx.passes.export.api import verification_inputs

    if args.data:
        x = _dataset_rows(args.data, args.split, None, g)
    elif g.example_inputs:
        x = g.example_inputs[0]
    else:
        raise UsageError(f"{args.graph}: no example inputs to verify on", "pass --data or --no-verify")
    return verification_inputs(x, args.verify_rows)


def _dataset_rows(data: str, split: str, samples: int | None, g: Any) -> Any:
    """Rows of ``--data``'s split, refused (naming ``--data``) when their shape is not the graph's input shape."""
    from qfx.zoo.data import load_dataset

    x = load_dataset(data).split(split).x[:samples]
    ex = g.example_inputs[0] if g.example_inputs else None
    if ex is not None and hasattr(ex, "shape") and tuple(x.shape[1:]) != tuple(ex.shape[1:]):
        raise UsageError(
            f"--data {data}: rows of shape {tuple(x.shape[1:])} do not fit the graph's input of shape "
            f"{tuple(ex.shape[1:])}",
            "pass the dataset the graph was built for",
        )
    return x


def _fail_on_difference(done: list[Any]) -> None:
    """A verification that found a difference is an error (exit 2), naming the first differing node."""
    from qfx.passes.export.verify import VerificationError

    for e in done:
        a = e.agreement
        if a and not a["ok"]:
            raise VerificationError(
                f"{e.fmt} export differs from the graph on {1 - a['identical_rows']:.1%} of {a['samples']} rows "
                f"(max |diff| {a['max_abs_diff']:.4g}; required: {a['required']}), {a['first_difference']}"
            )


def _export_best(args: argparse.Namespace, run: Any, out: Path) -> None:
    from qfx.passes.export.api import parse_formats
    from qfx.search.session import export_best

    for i, (t, done) in enumerate(export_best(run, parse_formats(args.export), out, progress=_note)):
        pareto = f" (Pareto {i + 1}/{len(run.best)})" if len(run.best) > 1 else ""
        print(f"\nexport of trial {t.number}{pareto}:")
        _print_exports(done)
        _fail_on_difference(done)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from qfx.search.sensitivity import sensitivity, space_frac, space_widths

    cfg, prep, space, ev, out = _search_setup(args)
    widths = args.widths or space_widths(space) or [2, 4, 8]
    args.frac = args.frac or space_frac(space)
    if args.frac == "auto" and not cfg.uses_auto():  # prepare() calibrates only configs that use "auto"
        from qfx.search.session import calibrate

        calibrate(cfg, prep.graph, prep.dataset, tuple(widths))
    print(f"{prep.graph.gm.__class__.__name__} from {prep.checkpoint}; widths {widths}; {len(ev.y)} samples")
    sens = sensitivity(ev, widths, args.frac, progress=not args.no_progress)
    print(f"FP32 accuracy {sens.fp32['accuracy']:.4f}; cell: accuracy drop (points) / output SQNR (dB), node alone\n")
    print(sens.table())
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(sens.to_dict(), indent=1))
    print(f"\nplot: {sens.plot(out / 'sensitivity.png')}; data: {out / 'sensitivity.json'}")
    return 0


def _test_referee(ev: Any, prep: Any) -> Any:
    """The evaluator scoring on the test split (what each sampler's chosen configuration is reported on)."""
    from qfx.search.selection import referee

    return referee(ev, prep.dataset.test)


def cmd_compare(args: argparse.Namespace) -> int:
    from qfx.search.compare import compare_samplers, variant
    from qfx.search.config import StrategySetup

    samplers = args.samplers
    for s in samplers:  # validate names up front, before a baseline is trained
        try:
            variant(StrategySetup(), s)
        except ValueError as e:
            from qfx.graph.schema import error_line

            raise UsageError(f"--samplers {s!r}: {error_line(e)}", "see qfx search --help for samplers") from None
    cfg, prep, space, ev, out = _search_setup(args)
    st = cfg.search.strategy
    n = args.n_trials or min(space.size, 200)
    print(f"{space.describe()}; {len(samplers)} sampler(s) x {args.repeats} repeat(s) x {n} trials")
    res = compare_samplers(
        space,
        ev,
        st.metrics,
        st.setup,
        samplers,
        args.repeats,
        n,
        out / "compare",
        args.tolerance,
        exhaustive_limit=args.exhaustive_limit,
        reference_trials=args.reference_trials,
        constraints=st.constraints,
        test=_test_referee(ev, prep),
    )
    print(
        f"objective (maximised): {res['objective']}; reference: {res['optimum']:.4f} ({res['reference']}); "
        f"one evaluation: {res['evaluation_ms']:.1f} ms\n"
    )
    print(res["table"].split("\n", 1)[1])
    if res["hypervolume"]:
        print(
            f"\nmulti-objective runs, hypervolume vs the nadir {res['hypervolume']['reference_point']} "
            f"(plot: {out / 'compare' / 'hypervolume.png'}):\n{res['hypervolume']['table']}"
        )
    print(f"\nplot: {out / 'compare' / 'compare.png'}; data: {out / 'compare' / 'compare.json'}")
    return 0


# ---- parser -------------------------------------------------------------------------
def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoints/graphs that need full unpickling (that can run code from the file); "
        "by default only plain tensors and values are read",
    )


def _graph_batch_args(p: argparse.ArgumentParser) -> None:
    """A saved graph and the batch its numerics are computed on (debug, view)."""
    p.add_argument("--graph", required=True, help="directory written by QGraph.save")
    p.add_argument(
        "--data", help="dataset for the batch (digits, iris, jsc:PATH ...); default: the graph's example inputs"
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--samples", type=_positive, default=256, help="batch size from the dataset (256)")
    _trust_arg(p)


def _tables() -> dict[str, list[str]]:
    """The names help texts list, read from their tables (zoo models, bundled datasets, export formats)."""
    from qfx.passes.export.api import EXPORT_FORMATS
    from qfx.zoo.data import BUNDLED
    from qfx.zoo.models import MODELS

    return {"models": list(MODELS), "datasets": list(BUNDLED), "formats": list(EXPORT_FORMATS)}


def _tables_help() -> str:
    """Samplers and metrics as registered (the same tables config validation reads)."""
    from qfx.search.metrics import METRICS
    from qfx.search.samplers import SAMPLERS

    samplers = "\n".join(
        f"  {n:<11} {s.description}{'' if s.multi_objective else ' (single objective)'}" for n, s in SAMPLERS.items()
    )
    metrics = "\n".join(f"  {n:<19} {m.direction:<8} {m.description}" for n, m in METRICS.items())
    return f"samplers ([search.strategy.setup] sampler):\n{samplers}\n\nmetrics ([search.strategy.metrics]):\n{metrics}"


def _search_args(p: argparse.ArgumentParser) -> None:
    _trust_arg(p)
    p.add_argument("--config", required=True, help="TOML with a [search] section (see configs/)")
    p.add_argument(
        "--checkpoint",
        help="trained checkpoint (qfx train --out); default: config load_name, else train a baseline into OUT/baseline",
    )
    p.add_argument("--out", help="output directory (default: outputs/<config name>)")
    p.add_argument("--n-trials", type=_positive, help="override search.strategy.setup.n_trials")
    from qfx.search.samplers import SAMPLERS

    p.add_argument("--sampler", help=f"override the sampler: {', '.join(SAMPLERS)} (see below)")
    p.add_argument("--seed", type=_seed, help="override the sampler seed")
    p.add_argument("--n-jobs", type=_n_jobs, help="parallel trials in this process")
    p.add_argument("--timeout", type=_positive_float, help="stop after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


EPILOG = """examples:
  qfx analyze --model jsc-toy --dataset digits
  qfx train --model jsc-s --dataset digits --out runs/jsc-s
  qfx eval --checkpoint runs/jsc-s
  qfx transform --config jsc_toy_by_name --out runs/toy-q
  qfx search --config jsc_tiny_by_type
  qfx learn --config jsc_s_learned --epochs 100
  qfx search --config jsc_toy_by_name --storage sqlite:///runs/s.db --study-name toy
  qfx compare-samplers --config jsc_tiny_by_type --samplers tpe,bruteforce --repeats 5
  qfx export --graph outputs/jsc_tiny_by_type/best_model --format qonnx,onnx-qdq,hls4ml --out deploy

--config takes a path or a shipped config's name. Each command has its own --help. Config schema: README.md."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, the function it runs (argument handling around library calls), the function
    adding its arguments, its help line, description and optional epilog (built when the parser is)."""

    name: str
    run: Callable[[argparse.Namespace], int]
    args: Callable[[argparse.ArgumentParser], None]
    help: str
    description: str
    epilog: Callable[[], str] | None = None


COMMANDS: dict[str, Command] = {}  # in the order `qfx --help` lists them


Args = Callable[[argparse.ArgumentParser], None]


def command(name: str, run: Callable[[argparse.Namespace], int], help: str, description: str,
            epilog: Callable[[], str] | None = None) -> Callable[[Args], Args]:  # fmt: skip
    """Declare the decorated function as the argument builder of subcommand ``name`` (run by ``run``)."""

    def add(args: Args) -> Args:
        COMMANDS[name] = Command(name, run, args, help, description, epilog)
        return args

    return add


@command(
    "analyze",
    cmd_analyze,
    help="print the annotated graph (shapes, MACs, FLOPs, params)",
    description="Trace a model and print its per-node metadata as a table or JSON.",
)
def _args_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help=f"zoo name ({', '.join(_tables()['models'])}) or module:function returning (model, example_inputs)",
    )
    p.add_argument("--dataset", default="digits", help="dataset giving a zoo model its sizes (default digits)")
    p.add_argument("--checkpoint", help="analyse a trained checkpoint instead")
    _trust_arg(p)
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input for checkpoints")
    p.add_argument("--format", choices=["table", "json"], default="table")


@command(
    "train",
    cmd_train,
    help="train a zoo model and save a checkpoint",
    description="Train a zoo model (seeded, progress bar); the checkpoint holds model name, "
    "dataset, seed and test metrics.",
)
def _args_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=", ".join(_tables()["models"]))
    p.add_argument("--dataset", default="digits", help=f"{', '.join(_tables()['datasets'])}, or jsc:/path.h5|.csv")
    p.add_argument("--epochs", type=_positive, default=40, help="training epochs (default 40)")
    p.add_argument("--batch-size", type=_positive, default=32, help="mini-batch size (default 32)")
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=_seed, default=0, help="seed for initialisation, shuffling and the data split")
    p.add_argument("--out", required=True, help="checkpoint directory or .pt file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command(
    "eval",
    cmd_eval,
    help="accuracy, loss, precision, recall, F1, confusion matrix of a checkpoint",
    description="Evaluate a checkpoint on its dataset split.",
)
def _args_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by qfx train (directory or .pt)")
    _trust_arg(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="dataset split (default test)")
    p.add_argument("--json", help="also write the metrics to this JSON file")


@command(
    "transform",
    cmd_transform,
    help="apply [passes.quantize] and compare FP32 vs quantized",
    description="Quantize with the config's [passes.quantize], print the summary and the "
    "FP32-vs-quantized metrics, save the quantized graph.",
)
def _args_transform(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="TOML with a [passes.quantize] section")
    p.add_argument("--checkpoint", help="trained checkpoint; default: config load_name, else train a baseline")
    _trust_arg(p)
    p.add_argument("--out", help="output directory (default: outputs/<config name>)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to compare on")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--numerics", action="store_true", help="per-node SQNR/saturation table and sqnr.png")
    p.add_argument("--numerics-samples", type=_positive, default=256, help="samples for --numerics (256)")


@command(
    "debug",
    cmd_debug,
    help="per-node numerics of a saved quantized graph vs its float version",
    description="Load a saved quantized graph, rebuild its float version (every node restored), run both "
    "on a batch and report per node: output SQNR, max error, cosine, saturation and round-to-zero "
    "fractions of every quantized tensor. Writes numerics.json, sqnr.png, graph.dot(.svg) and Model "
    "Explorer files into --out.",
)
def _args_debug(p: argparse.ArgumentParser) -> None:
    _graph_batch_args(p)
    p.add_argument("--out", help="output directory (default: GRAPH/debug)")


@command(
    "view",
    cmd_view,
    help="open a saved graph in Model Explorer (with numerics overlays)",
    description="Start Google's Model Explorer on a saved graph: metadata as node attributes and one overlay "
    "per metric (SQNR, max error, saturation, bits, FLOPs, params). Ctrl-C stops it.",
)
def _args_view(p: argparse.ArgumentParser) -> None:
    _graph_batch_args(p)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=_positive, default=8080)
    p.add_argument("--no-open", action="store_true", help="do not open a browser")


@command(
    "search",
    cmd_search,
    help="mixed-precision search (Optuna)",
    description="Run the config's search; print the Best trial(s) table and write best.json, "
    "trials.csv/json, best_model/ and plots. With --storage, the study persists: "
    "re-running resumes it and several workers (--study-name) share it.",
    epilog=lambda: _tables_help(),
)
def _args_search(p: argparse.ArgumentParser) -> None:
    _search_args(p)
    p.add_argument("--storage", help="sqlite:///f.db, journal:FILE (or *.log), postgresql://user:pw@host/db")
    p.add_argument(
        "--study-name", type=_study_name, help="name of a persistent study (required with --storage to resume/share)"
    )
    p.add_argument(
        "--export",
        help="export the best trial(s) (every Pareto trial) to OUT/export/<format>/ and verify each bit for bit on "
        f"1,000 rows (the test split, then saturating noise; a difference exits 2): comma-separated "
        f"{', '.join(_tables()['formats'])}",
    )
    p.add_argument(
        "--pick",
        type=_pick_arg,
        help="which Pareto point becomes best_model/ (multi-objective): knee (default: nearest the ideal point), "
        "max:METRIC, min:METRIC or trial:N, plus bounds such as ,accuracy>=0.93 (overrides [search.strategy] pick)",
    )


@command(
    "learn",
    cmd_learn,
    help="learn per-weight and per-input bit widths by gradient (HGQ's method) and measure the front",
    description="Train the config's model with learned precisions (fractional bits per weight and per "
    "input element, EBOPs penalty ramped over the epochs, [learn] section); every Pareto epoch (chosen on "
    "validation) is measured by da4ml (LUTs, adder depth) and saved as a quantized graph.",
)
def _args_learn(p: argparse.ArgumentParser) -> None:
    _trust_arg(p)
    p.add_argument("--config", required=True, help="TOML with a [learn] section (e.g. jsc_s_learned)")
    p.add_argument("--checkpoint", help="trained float checkpoint; default: train a baseline into OUT/baseline")
    p.add_argument("--out", help="output directory (default: outputs/<config name>)")
    p.add_argument("--epochs", type=_positive, help="override learn.epochs")
    p.add_argument("--beta", type=_positive_float, help="override learn.beta (the final penalty strength)")
    p.add_argument("--beta-start", type=_positive_float, help="override learn.beta_start (the ramp's start)")
    p.add_argument("--seed", type=_seed, help="override learn.seed")
    p.add_argument("--n-trials", type=_positive, help="override learn_search.n_trials (configs with [learn_search])")
    p.add_argument("--pick", default="max:accuracy", type=_learn_pick,
                   help="the front point copied to OUT/best: max:accuracy or min:fpga_luts[,accuracy>=X]")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@command(
    "sensitivity",
    cmd_sensitivity,
    help="per-node sensitivity: each node alone at each width",
    description="Quantize every quantizable node alone at each width (all its roles) and report the accuracy "
    "drop, loss increase and output SQNR vs FP32 on the config's evaluation samples: a table, "
    "sensitivity.png (heat map) and sensitivity.json in --out.",
)
def _args_sensitivity(p: argparse.ArgumentParser) -> None:
    _search_args(p)
    p.add_argument(
        "--widths", type=_widths, help="comma-separated widths (default: the width choices of the config's space)"
    )
    hf = "frac widths: width // 2, or calibrated (default: auto when the space's frac choices include it)"
    p.add_argument("--frac", choices=["NA", "auto"], help=hf)


@command(
    "compare-samplers",
    cmd_compare,
    help="sample efficiency of samplers on one space",
    description="Run each sampler --repeats times with seeds 0..R-1; report best-so-far vs "
    "trial (plot), trials to reach the exhaustive optimum, time per trial.",
)
def _args_compare_samplers(p: argparse.ArgumentParser) -> None:
    _search_args(p)
    p.add_argument(
        "--samplers",
        type=_sampler_list,
        default=["tpe", "bruteforce", "random"],
        help="comma-separated sampler names; NAME+sensitivity / NAME+ilp add that warm start (tpe+ilp)",
    )
    p.add_argument("--reference-trials", type=_positive, help="trials of the long reference run (default 10 x n)")
    p.add_argument("--exhaustive-limit", type=_positive, default=4096, help="enumerate spaces up to this size")
    p.add_argument("--repeats", type=_positive, default=5, help="runs per sampler, seeds 0..R-1 (default 5)")
    p.add_argument("--tolerance", type=_tolerance, default=0.005, help="'near optimum' tolerance in objective units")


@command(
    "export",
    cmd_export,
    help="export a saved quantized graph to qonnx / onnx-qdq / hls4ml / torch",
    description="Write a saved quantized graph (QGraph.save: a search's best_model/ or a transform's "
    "quantized/) in deployment formats and verify each with its own executor (qonnx execute_onnx, "
    "onnxruntime, hls4ml C simulation, plain torch) on the graph's example inputs.",
)
def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--graph", required=True, help="directory written by QGraph.save")
    from qfx.passes.export.api import EXPORT_FORMATS

    p.add_argument("--format", required=True, help="comma-separated: " + "; ".join(
        f"{f.name} ({f.description}; checked by {f.checked_by})" for f in EXPORT_FORMATS.values()))  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (one sub-directory per format)")
    _clock_arg(p)
    p.add_argument("--no-verify", action="store_true", help="write only; do not run the target executors")
    p.add_argument("--data", help="verify on this dataset's split (digits, iris, jsc:PATH ...); default: example rows")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--verify-rows",
        type=_verify_rows,
        default=1000,
        help="rows verified: the data, then saturating noise at 1x/4x/16x/64x its scale (default 1000)",
    )
    _trust_arg(p)


@command(
    "synth",
    cmd_synth,
    help="synthesize a saved quantized graph's Verilog with yosys (LUT/FF/CARRY/DSP)",
    description="Trace the graph into da4ml's adder graphs, write its Verilog and run Yosys synth_xilinx: "
    "an open-source count of the FPGA cells beside da4ml's LUT estimate. Needs yosys on PATH.",
)
def _args_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--graph", required=True, help="directory written by QGraph.save")
    p.add_argument("--out", help="project directory (default GRAPH/synth)")
    _clock_arg(p)
    p.add_argument("--ice40", action="store_true",
                   help="also place and route for a Lattice iCE40 HX8K (nextpnr-ice40): the achieved Fmax")  # fmt: skip
    _trust_arg(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qfx", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"qfx {_version()}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument(
        "--threads",
        type=_threads_arg,
        help="CPU threads for torch (default: 1 for models under 1M parameters, every core above)",
    )
    noise = ap.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    noise.add_argument("-q", "--quiet", action="store_true", help="results and errors only: no progress bars, notes")

    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for c in COMMANDS.values():
        fmt = {"formatter_class": argparse.RawDescriptionHelpFormatter} if c.epilog else {}
        p = sub.add_parser(c.name, help=c.help, description=c.description,
                           epilog=c.epilog() if c.epilog else None, **fmt)  # fmt: skip
        c.args(p)
        p.set_defaults(fn=c.run)
    return ap


def _version() -> str:
    from qfx import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    _QUIET[0] = args.quiet
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    # force: bind the handler to this call's stderr (main() may run several times in one process)
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", force=True)
    import optuna

    optuna.logging.disable_default_handler()  # Optuna's messages go through the handler above
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(level)  # the CLI's choice
    if args.cmd == "search" and args.storage and not args.study_name:
        args.study_name = "qfx"
    try:
        import torch

        torch.set_num_threads(args.threads or 1)  # raised for large models once the model is known (_threads)
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        hint = getattr(e, "hint", "") or _hint(e)
        text = str(e).strip() or {MemoryError: "out of memory"}.get(type(e), "(no message)")
        if isinstance(e, MemoryError):
            text, hint = f"MemoryError: {text}", "use a smaller model, batch, num_samples or search space"
        elif not str(e).strip():
            text = f"{type(e).__name__}: {text}"
        e_lines = text.splitlines()
        print(f"error: {e_lines[0]}", file=sys.stderr)
        for line in e_lines[1:]:
            print(f"  {line.strip()}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 2


def _hint(e: Exception) -> str:
    from qfx.search.config import ConfigError

    if isinstance(e, ConfigError) and "no such config file" in str(e):
        return "pass a TOML path or the name of a shipped config (qfx search --help lists them)"
    if isinstance(e, ConfigError):
        return "fix the key named above; the schema is in README.md ('Config schema'); rerun with --debug for details"
    if isinstance(e, FileNotFoundError):
        return "check the path"
    return "rerun with --debug for the traceback"


def main_exit() -> None:
    """Entry point of the ``qfx`` console script."""
    sys.exit(main())


def _checkout_as_package() -> None:
    """``python cli.py`` in a checkout: import the repository root as ``qfx`` if it is not installed."""
    import importlib.util

    root = Path(__file__).resolve().parent
    found = importlib.util.find_spec("qfx")
    if found is not None and found.submodule_search_locations and root in map(Path, found.submodule_search_locations):
        return
    spec = importlib.util.spec_from_file_location("qfx", root / "__init__.py", submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["qfx"] = mod
    spec.loader.exec_module(mod)


if __name__ == "__main__":
    _checkout_as_package()
    sys.exit(main())
