"""What you run is what you get (issue 31): the graphs a search saves are the ones it scored (PTQ, QAT,
budgeted), best_model/ of a front is an explicit recorded pick, re-runs leave no stale outputs, a failed
export is marked, and the Best table fits a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from search_helpers import make_checkpoint, search_toml

from qfx import cli
from qfx.graph import QGraph
from qfx.search.pick import PickError, parse_pick, pick
from qfx.search.records import record_of
from qfx.search.session import run_search
from qfx.zoo.train import classification_metrics, predict


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: Any) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck"))


MULTI = 'accuracy.scale = 1.0\naverage_bitwidth.scale = 1.0\naverage_bitwidth.direction = "minimize"'


@pytest.mark.parametrize(
    "kind",
    ["ptq", "qat", "budget"],
)
def test_every_saved_graph_scores_what_its_trial_recorded(tmp_path: Path, ckpt: Path, kind: str) -> None:
    """Reload best_model/ and every pareto/trial_N/, evaluate on the search's own split: the accuracy, loss
    and average bitwidth equal the trial's record exactly (QAT: the fine-tuned weights were saved)."""
    text = search_toml("random", 8, single=False, metrics=MULTI, num_samples=128)
    if kind == "qat":
        text = text.replace("[search.strategy.setup]", "[search.strategy.sw_runner.qat]\nsteps = 25\n"
                            "[search.strategy.setup]")  # fmt: skip
    if kind == "budget":
        text += "\n[search.strategy.constraints]\naverage_bitwidth.max = 7\n"
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "o"
    run = run_search(cfg, str(ckpt), out)
    ev = run.objective.evaluator
    best = json.loads((out / "best.json").read_text())
    dirs = {b["number"]: out / ("best_model" if i == "0" else f"pareto/trial_{b['number']}") for i, b in best.items()}
    assert len(dirs) == len(run.best) >= 1
    for number, d in dirs.items():
        g = QGraph.load(d)
        with torch.no_grad():
            m = classification_metrics(predict(g.gm, ev.x), ev.y, ev.num_classes, full=False)
        t = next(t for t in run.study.trials if t.number == number)
        rec = record_of(t).software_metrics
        assert m["accuracy"] == rec["accuracy"] and m["loss"] == pytest.approx(rec["loss"], rel=1e-6), (kind, number)
        from qfx.hw.estimates import hw_metrics

        hw = hw_metrics(g, ev.hw.compare_to, ev.hw.activations)
        assert hw["average_bitwidth"] == pytest.approx(record_of(t).hardware_metrics["average_bitwidth"])
    if kind == "qat":  # the fine-tuned weights differ from the pristine ones: a PTQ rebuild would not match
        q = QGraph.load(dirs[run.best[0].number])
        fc = [p for n, p in q.gm.named_parameters() if n.endswith("weight")]
        ref = [p for n, p in ev.pristine.gm.named_parameters() if n.endswith("weight")]
        assert any(not torch.equal(a, b) for a, b in zip(fc, ref, strict=False))


# ---- picks ---------------------------------------------------------------------------------------------
def _front() -> list[optuna.trial.FrozenTrial]:
    pts = [(0.80, 2.0), (0.90, 4.0), (0.94, 6.0), (0.95, 8.0)]
    return [
        optuna.trial.create_trial(
            values=[a, b], user_attrs={"qfx": {"sampled_config": {}, "software_metrics": {"accuracy": a},
                                               "hardware_metrics": {"average_bitwidth": b}}},  # fmt: skip
        )
        for a, b in pts
    ]


def _numbered(front: list[Any]) -> list[Any]:
    for i, t in enumerate(front):
        t.number = 10 + i
    return front


def test_pick_rules() -> None:
    from qfx.search.config import MetricSpec

    front = _numbered(_front())
    obj = {"accuracy": MetricSpec(), "average_bitwidth": MetricSpec(direction="minimize")}
    t, why = pick(front, parse_pick("knee"), obj)
    assert t.number == 11 and "knee" in why  # (0.9, 4): scaled (0.67, 0.33), nearest the ideal (1, 0)
    t, why = pick(front, parse_pick("min:average_bitwidth,accuracy>=0.9"), obj)
    assert t.number == 11 and "lowest average_bitwidth (4)" in why and "accuracy >= 0.9" in why
    t, _ = pick(front, parse_pick("max:accuracy"), obj)
    assert t.number == 13
    assert pick(front, parse_pick("trial:10"), obj)[0].number == 10
    with pytest.raises(PickError, match="not on the front"):
        pick(front, parse_pick("trial:3"), obj)
    t, why = pick(front, parse_pick("min:average_bitwidth,accuracy>=0.99"), obj)
    assert t.number == 11 and why.startswith("no front point is within accuracy >= 0.99: the knee")
    for bad in ("best", "min:acc", "max:accuracy,accuracy>0.5", "trial:1,accuracy>=0.5", "min:accuracy,x<=inf"):
        with pytest.raises(PickError):
            parse_pick(bad)


def test_cli_pick_is_printed_and_recorded(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 10, single=False, metrics=MULTI, num_samples=128))
    out = tmp_path / "o"
    rc = cli.main(["search", "--config", str(cfg), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress",
                   "--pick", "min:average_bitwidth,accuracy>=0.2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    best = json.loads((out / "best.json").read_text())
    p = best["0"]["pick"]
    assert p["rule"] == "min:average_bitwidth,accuracy>=0.2" and p["trial"] == best["0"]["number"]
    within = [b for b in best.values() if b["software_metrics"]["accuracy"] >= 0.2]
    assert best["0"]["hardware_metrics"]["average_bitwidth"] == min(b["hardware_metrics"]["average_bitwidth"]
                                                                   for b in within)  # fmt: skip
    assert f"best_model/ is trial {p['trial']} (pick 'min:average_bitwidth,accuracy>=0.2')" in printed
    with pytest.raises(SystemExit):
        cli.main(["search", "--config", str(cfg), "--pick", "smallest"])
    assert "--pick" in capsys.readouterr().err


# ---- outputs are the run's own ------------------------------------------------------------------------
def test_a_second_run_into_the_same_out_leaves_no_stale_results(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "o"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("the user's own file")
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 10, single=False, metrics=MULTI, num_samples=128))
    run_search(cfg, str(ckpt), out)
    (out / "pareto" / "trial_999").mkdir(parents=True, exist_ok=True)  # what an older run (another front) left
    cfg.write_text(
        search_toml("random", 2, single=False, metrics=MULTI, num_samples=128).replace("seed = 0", "seed = 5")
    )
    run = run_search(cfg, str(ckpt), out)
    now = {p.name for p in (out / "pareto").iterdir()} if (out / "pareto").exists() else set()
    assert now == {f"trial_{t.number}" for t in run.best[1:]} and "trial_999" not in now
    assert (out / "notes" / "mine.txt").read_text() == "the user's own file"  # not ours: kept
    manifest = json.loads((out / "outputs.json").read_text())
    assert "best.json" in manifest["files"] and all(not f.startswith("/") and ".." not in f for f in manifest["files"])


def test_failed_export_is_marked_and_a_rerun_replaces_it(tmp_path: Path) -> None:
    from test_untrusted_files import Small, _int

    from qfx.graph import trace
    from qfx.passes.analysis import analyze
    from qfx.passes.export import ExportError
    from qfx.passes.export.api import export_all, verification_inputs
    from qfx.passes.transforms.quantize import QuantizePass

    torch.manual_seed(0)
    g = analyze(trace(Small().eval(), torch.randn(8, 16)))
    floaty = QuantizePass({"by": "type", "linear": _int(8, 4)})(g).graph  # float batch norm: no circuit
    out = tmp_path / "deploy"
    with pytest.raises(ExportError):
        export_all(floaty, ["vhdl"], out, verification_inputs(torch.randn(8, 16), 64))
    st = json.loads((out / "vhdl" / "status.json").read_text())
    assert st["state"] == "FAILED" and "ExportError" in st["why"]
    (out / "vhdl" / "stale.vhd").write_text("-- from the failed run")
    full = QuantizePass({"by": "type", "linear": _int(8, 4), "relu": _int(8, 4), "add": _int(8, 3),
                         "batch_norm1d": _int(8, 4)})(g).graph  # fmt: skip
    export_all(full, ["vhdl"], out, verification_inputs(torch.randn(8, 16), 64))
    assert json.loads((out / "vhdl" / "status.json").read_text())["state"] == "verified"
    assert not (out / "vhdl" / "stale.vhd").exists()


def test_best_table_fits_120_columns(tmp_path: Path, ckpt: Path) -> None:
    """A per-name space over jsc-tiny's nodes (the issue's jsc_s_fpga rows were ~1,500 characters)."""
    from qfx.search.outputs import TABLE_COLS, best_table, draws

    space = """
[search.search_space.seed.default.config]
name = ["integer"]
data_in_width = [2, 3, 4, 5, 6, 8]
data_in_frac_width = ["NA"]
weight_width = [2, 3, 4, 5, 6, 8]
weight_frac_width = ["NA"]
bias_width = [8]
bias_frac_width = ["NA"]
"""
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 12, single=False, metrics=MULTI, num_samples=64, by="name", space=space))
    run = run_search(cfg, str(ckpt))
    table = best_table(run.best, ["accuracy", "average_bitwidth"], draws(run.study), run.objective.space)
    assert max(map(len, table.splitlines())) <= TABLE_COLS, table
    assert "{" not in table and "'" not in table  # numbers and widths, no Python reprs
    for d in run.objective.space.free_dims:  # every free dimension's chosen value is shown
        assert d.split("/")[0] in table


def test_a_crafted_manifest_removes_nothing_outside_what_qfx_writes(tmp_path: Path, ckpt: Path) -> None:
    """outputs.json is read back: names outside the fixed list (paths, parents) are ignored, and a listed name
    that is a symlink is unlinked, never followed."""
    out, victim, target = tmp_path / "o", tmp_path / "victim.txt", tmp_path / "target.png"
    out.mkdir()
    victim.write_text("keep")
    target.write_text("keep too")
    (out / "history.png").symlink_to(target)
    (out / "outputs.json").write_text(json.dumps({"files": ["../victim.txt", str(victim), "history.png", 3, None]}))
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 2, num_samples=64))
    run_search(cfg, str(ckpt), out)
    assert victim.read_text() == "keep" and target.read_text() == "keep too"
    assert (out / "history.png").is_file() and not (out / "history.png").is_symlink()  # this run's own plot
