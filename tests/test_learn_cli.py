"""`qfx learn` from a user's seat: relative paths with spaces, a second run, crafted configs, flags and links."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qfx import cli
from qfx.search.learn import FrontPoint, choose

SMALL = ["--epochs", "4", "--no-progress"]


def _config(tmp: Path, extra: str = "") -> str:
    p = tmp / "cfg learn.toml"
    p.write_text('model = "jsc-tiny"\ndataset = "digits"\nmax_epochs = 2\n\n[learn]\nbeta = 1e-4\n' + extra)
    return p.name


def test_learn_writes_the_front_and_a_second_run_replaces_it(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path)
    assert cli.main(["learn", "--config", cfg, "--out", "my out", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "da4ml LUTs" in out and "'my out/rtl'" in out  # the printed export command is quoted as a shell needs
    d = tmp_path / "my out"
    front = json.loads((d / "front.json").read_text())
    assert {p["graph"] for p in front["front"]} == {f"graphs/{p.name}" for p in (d / "graphs").iterdir()}
    assert (d / "best" / "graph.json").is_file() and (d / "front.png").stat().st_size > 1000
    (d / "graphs" / "epoch_999").mkdir()  # what an earlier run would have left
    (d / "graphs" / "epoch_999" / "graph.json").write_text("{}")
    assert cli.main(["learn", "--config", cfg, "--out", "my out", "--seed", "1", *SMALL]) == 0
    assert not (d / "graphs" / "epoch_999").exists()
    assert json.loads((d / "front.json").read_text())["learn"]["seed"] == 1


def test_learn_refuses_a_link_planted_in_its_output(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "o").mkdir()
    os.symlink(outside, tmp_path / "o" / "best")
    assert cli.main(["learn", "--config", cfg, "--out", "o", *SMALL]) == 2
    assert "symlink" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "says"),
    [("betta = 1\n", "learn.betta': unknown key"), ("beta = -1\n", "learn.beta"), ("round = 'up'\n", "learn.round"),
     ("epochs = 1e9\n", "learn.epochs")],
)  # fmt: skip
def test_learn_config_errors_name_the_key(tmp_path: Path, capsys: Any, monkeypatch: Any, extra: str, says: str) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "jsc-tiny"\n[learn]\n' + extra.replace("beta = 1e-4", ""))
    assert cli.main(["learn", "--config", str(cfg), *SMALL]) == 2
    err = capsys.readouterr().err
    assert says in err and "c.toml" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--pick", "min:accuracy"), ("--pick", "min:fpga_luts,accuracy>=2"), ("--beta", "-1"), ("--beta", "nan"),
     ("--epochs", "0"), ("--seed", "-3")],
)  # fmt: skip
def test_learn_flags_are_checked(tmp_path: Path, capsys: Any, monkeypatch: Any, flag: str, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["learn", "--config", "jsc_s_learned", flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_pick_rules() -> None:
    pts = [FrontPoint(e, 0.0, acc, acc, 0.0, luts, 1.0, "g") for e, acc, luts in
           ((1, 0.90, 5000), (2, 0.95, 9000), (3, 0.97, 20000))]  # fmt: skip
    assert choose(pts, "max:accuracy")[0].epoch == 3
    assert choose(pts, "min:fpga_luts")[0].epoch == 1
    assert choose(pts, "min:fpga_luts,accuracy>=0.93")[0].epoch == 2
    best, note = choose(pts, "min:fpga_luts,accuracy>=0.99")
    assert best.epoch == 3 and "no front point reaches" in note


TRIALS = """
[learn_search]
beta = [1e-5, 1e-2]
epochs = [2, 3]
round = ["half_up", "trunc"]
overflow = ["wrap", "saturate"]
width = [0.5, 1.0]
n_trials = 3
sampler = "random"
measured_per_trial = 2
"""


def test_learn_trials_pool_a_pareto_front_over_trials(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    """[learn_search]: each trial's sampled options are recorded with its measured points; the product is the
    Pareto front over all of them (no pooled point dominates a front point), best/ is a front point whose LUTs
    are the exported whole network's; a second run removes the first one's graphs."""
    from qfx.graph import QGraph
    from qfx.hw.fpga import fpga_timing

    monkeypatch.chdir(tmp_path)
    p = tmp_path / "cfg trials.toml"
    p.write_text('model = "jsc-toy"\ndataset = "digits"\nmax_epochs = 2\n\n[learn]\nbeta = 1e-4\n' + TRIALS)
    assert cli.main(["learn", "--config", p.name, "--out", "t out", "--no-progress"]) == 0
    d = tmp_path / "t out"
    trials = json.loads((d / "trials.json").read_text())
    assert len(trials) == 3 and all(t["state"] == "COMPLETE" and 1 <= len(t["points"]) <= 2 for t in trials)
    assert {t["params"]["width"] for t in trials} <= {0.5, 1.0} and all(1e-5 <= t["params"]["beta"] <= 1e-2
                                                                        for t in trials)  # fmt: skip
    pooled = [pt for t in trials for pt in t["points"]]
    front = json.loads((d / "front.json").read_text())["front"]
    for f in front:
        assert not any(o["val_accuracy"] >= f["val_accuracy"] and o["fpga_luts"] <= f["fpga_luts"]
                       and (o["val_accuracy"], o["fpga_luts"]) != (f["val_accuracy"], f["fpga_luts"])
                       for o in pooled)  # fmt: skip
    best = json.loads((d / "front.json").read_text())["best"]
    assert best in front
    assert fpga_timing(QGraph.load(d / "best")).luts == pytest.approx(best["fpga_luts"])
    stale = d / "graphs" / "trial_99_epoch_1"
    stale.mkdir()
    assert cli.main(["learn", "--config", p.name, "--out", "t out", "--no-progress", "--n-trials", "2"]) == 0
    assert not stale.exists() and len(json.loads((d / "trials.json").read_text())) == 2


def test_learn_trials_refuse_a_width_the_model_cannot_take(tmp_path: Path, capsys: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text('model = "jsc-tiny"\ndataset = "digits"\nmax_epochs = 1\n[learn]\nbeta = 1e-4\n' + TRIALS)
    assert cli.main(["learn", "--config", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "learn_search.width" in err and "jsc-tiny" in err and "Traceback" not in err
    p.write_text('model = "jsc-toy"\n[learn_search]\nbeta = [0.1, 0.01]\n')
    assert cli.main(["learn", "--config", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "beta range" in capsys.readouterr().err
