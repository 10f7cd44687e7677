"""A resumed study's records are untrusted (issue 30): each crafted record is skipped with one line naming the
storage and the trial, the resume goes on with the valid trials, and nothing of the bad record reaches
best.json; config numbers are finite and in range; budgets no point can meet are refused before the search;
a failed trial's reason is always recorded."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from search_helpers import make_checkpoint, search_toml

from qfx import cli
from qfx.search.config import ConfigError, load_config
from qfx.search.records import check_resumed, record_problem
from qfx.search.session import run_search


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: Any) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: Any, ckpt: Path) -> tuple[Path, Path]:
    """A 6-trial random search into an sqlite study (the file later copies are crafted from)."""
    d = tmp_path_factory.mktemp("run")
    cfg = d / "c.toml"
    cfg.write_text(search_toml("random", 6, num_samples=64))
    db = d / "s.db"
    run_search(cfg, str(ckpt), d / "o", f"sqlite:///{db}", "k")
    return cfg, db


def _sql(db: Path, query: str, *args: Any) -> None:
    with sqlite3.connect(db) as c:
        c.execute(query, args)


def _record(db: Path, number: int) -> dict[str, Any]:
    with sqlite3.connect(db) as c:
        row = c.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'qfx' AND trial_id = "
                        "(SELECT trial_id FROM trials WHERE number = ?)", (number,)).fetchone()  # fmt: skip
    return json.loads(row[0])


def _attr(db: Path, number: int, key: str, value: Any) -> None:
    """Set ``key`` of trial ``number``'s stored record (the "qfx" user attr); value None drops the key."""
    rec = _record(db, number)
    rec.pop(key) if value is None else rec.update({key: value})
    _sql(db, "UPDATE trial_user_attributes SET value_json = ? WHERE key = 'qfx' AND trial_id = "
         "(SELECT trial_id FROM trials WHERE number = ?)", json.dumps(rec), number)  # fmt: skip


def _cfg_edit(db: Path, number: int, edit: Any) -> None:
    cfg = _record(db, number)["sampled_config"]
    edit(cfg)
    _attr(db, number, "sampled_config", cfg)


CRAFTED = {
    "width 999": lambda db: _cfg_edit(db, 1, lambda c: c["linear"]["config"].update(weight_width=999)),
    "width 0": lambda db: _cfg_edit(db, 1, lambda c: c["linear"]["config"].update(weight_width=0)),
    "unknown node": lambda db: _cfg_edit(db, 1, lambda c: c.update(not_a_node={"config": {"name": "integer"}})),
    "metric value 'high'": lambda db: _attr(db, 1, "software_metrics", {"accuracy": "high", "loss": 0.1}),
    "no software_metrics": lambda db: _attr(db, 1, "software_metrics", None),
    "no record": lambda db: _sql(db, "DELETE FROM trial_user_attributes WHERE key = 'qfx' AND "
                                 "trial_id = (SELECT trial_id FROM trials WHERE number = 1)"),
    "unknown field": lambda db: _attr(db, 1, "exploit", "x"),
    "value 1e308 * 10": lambda db: _sql(db, "UPDATE trial_values SET value = 1e308 * 10 WHERE trial_id = "
                                        "(SELECT trial_id FROM trials WHERE number = 1)"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_record_is_skipped_and_the_resume_goes_on(first_run: tuple[Path, Path], ckpt: Path, tmp_path: Path,
                                                          capsys: Any, name: str) -> None:  # fmt: skip
    cfg, db0 = first_run
    db = tmp_path / "s.db"
    db.write_bytes(db0.read_bytes())
    CRAFTED[name](db)
    out = tmp_path / "o"
    rc = cli.main(["search", "--config", str(cfg), "--checkpoint", str(ckpt), "--storage", f"sqlite:///{db}",
                   "--study-name", "k", "--n-trials", "8", "--out", str(out), "--no-progress"])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    lines = [line for line in cap.err.splitlines() if "trial 1 skipped" in line]
    assert len(lines) == 1 and f"sqlite:///{db}" in lines[0], cap.err
    best = json.loads((out / "best.json").read_text())
    assert all(b["number"] != 1 for b in best.values())
    trials = {t["number"]: t for t in json.loads((out / "trials.json").read_text())}
    assert "skipped" in trials[1] and len(trials) >= 8


def test_record_optuna_cannot_read_refuses_the_study(first_run: tuple[Path, Path], ckpt: Path, tmp_path: Path,
                                                     capsys: Any) -> None:  # fmt: skip
    """A param of 1e308 is not even readable by Optuna (its categorical index overflows): the resume is refused
    in one line naming the storage and the study; nothing is written."""
    cfg, db0 = first_run
    db = tmp_path / "s.db"
    db.write_bytes(db0.read_bytes())
    _sql(db, "UPDATE trial_params SET param_value = 1e308 WHERE trial_id = (SELECT trial_id FROM trials WHERE "
         "number = 1)")  # fmt: skip
    rc = cli.main(["search", "--config", str(cfg), "--checkpoint", str(ckpt), "--storage", f"sqlite:///{db}",
                   "--study-name", "k", "--n-trials", "8", "--out", str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[0].startswith(f"error: sqlite:///{db}: study 'k'"), err
    assert not (tmp_path / "o" / "best.json").exists()


def _trials(first_run: tuple[Path, Path]) -> tuple[list[optuna.trial.FrozenTrial], Any]:
    cfg, db = first_run
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    return study.get_trials(), study


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def space(first_run: tuple[Path, Path], ckpt: Path, tmp_path_factory: Any) -> Any:
    from qfx.search.session import build_search, prepare

    cfg = load_config(first_run[0], require_search=True)
    prep = prepare(cfg, str(ckpt), tmp_path_factory.mktemp("p"), progress=False)
    return build_search(cfg, prep)[0], cfg.search.strategy.metrics


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_records_are_valid_or_skipped_in_one_line(first_run: tuple[Path, Path], space: Any,
                                                         data: Any) -> None:  # fmt: skip
    """Any edit of a stored record: the trial is kept only if its record is one a fresh trial could write
    (then its config is the space's), else skipped with one reason line; nothing raises."""
    sp, metrics = space
    trials, _ = _trials(first_run)
    t = copy.deepcopy(data.draw(st.sampled_from([t for t in trials if t.state.name == "COMPLETE"])))
    attrs = dict(t.user_attrs["qfx"])
    key = data.draw(st.sampled_from(sorted(attrs) + ["new"]))
    where = data.draw(st.sampled_from(["replace", "inside", "drop"]))
    if where == "drop":
        attrs.pop(key, None)
    elif where == "inside" and isinstance(attrs.get(key), dict) and attrs[key]:
        k = data.draw(st.sampled_from(sorted(attrs[key])))
        attrs[key] = {**attrs[key], k: data.draw(JSONISH)}
    else:
        attrs[key] = data.draw(JSONISH)
    t.user_attrs = {**t.user_attrs, "qfx": attrs}
    study = optuna.create_study(directions=["maximize"])
    study.add_trial(t)
    skipped = check_resumed(study, sp, metrics, 1, "memory")
    why = record_problem(study.trials[0], sp, metrics, 1)
    assert (0 in skipped) == (why is not None)
    if why is None:  # accepted: what the outputs read is well-formed
        a = study.trials[0].user_attrs["qfx"]
        assert a["sampled_config"] == json.loads(json.dumps(sp.to_config(sp.point_of(study.trials[0].params))))
        assert all(isinstance(v, float) for v in a.get("software_metrics", {}).values())
    else:
        assert "\n" not in why


# ---- numbers in configs, budgets, failure reasons ----------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("accuracy.scale", "accuracy.scale = inf"),
        ("learning_rate", "learning_rate = nan"),
        ("qat.lr", "[search.strategy.sw_runner.qat]\nlr = inf"),
        ("compare_to", "[search.strategy.hw_runner.average_bitwidth]\ncompare_to = nan"),
        ("n_jobs", "[search.strategy.setup]\nn_jobs = 100000"),
    ],
)
def test_config_numbers_are_finite_and_bounded(tmp_path: Path, capsys: Any, key: str, line: str) -> None:
    text = search_toml("random", 4)
    if line.startswith("accuracy"):
        text = text.replace("accuracy.scale = 1.0", line)
    elif line.startswith("learning_rate"):
        text = line + "\n" + text
    elif "n_jobs" in line:
        text = text.replace("[search.strategy.setup]", line)
    else:
        text = text.replace("[search.strategy.setup]", line + "\n[search.strategy.setup]")
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        load_config(p, require_search=True)
    assert cli.main(["search", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and key.split(".")[-1] in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("bound", "says"), [("max = -1", "below the smallest"), ("max = 1.5", "below the smallest"),
                                             ("min = 40", "above the largest")])  # fmt: skip
def test_unreachable_budget_is_refused_before_the_search(tmp_path: Path, ckpt: Path, capsys: Any, bound: str,
                                                         says: str) -> None:  # fmt: skip
    text = search_toml("random", 4) + f"\n[search.strategy.constraints]\naverage_bitwidth.{bound}\n"
    p = tmp_path / "c.toml"
    p.write_text(text)
    rc = cli.main(["search", "--config", str(p), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                   "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[0].startswith("error: ") and "average_bitwidth" in err[0] and says in err[0], err
    assert not (tmp_path / "o" / "trials.json").exists()  # no trial ran


def test_a_failed_trial_always_says_why(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    """A budget on fpga_luts over a float batch norm: the hardware metric cannot be computed; every trial
    records the reason, and the CLI prints it (never "unknown")."""
    text = search_toml("random", 3) + "\n[search.strategy.constraints]\nfpga_luts.max = 100000\n"
    p = tmp_path / "c.toml"
    p.write_text(text)
    rc = cli.main(["search", "--config", str(p), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                   "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2, err
    line = next(x for x in err if x.startswith("error: "))
    assert "first error (trial 0)" in line and "node 'seq_blocks_0'" in line and "not quantize" in line, err
    trials = json.loads((tmp_path / "o" / "trials.json").read_text())
    assert all(t["error"] for t in trials if t["state"] == "FAIL")


def test_selection_fraction_must_leave_each_class_on_both_sides(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text(search_toml("random", 2) + "\n[search.strategy.selection]\nfraction = 1e-9\n")
    rc = cli.main(["search", "--config", str(p), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                   "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[0].startswith("error: [search.strategy.selection] fraction = 1e-09"), err
    assert "use a fraction in" in err[0]
