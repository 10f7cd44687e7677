"""Budgets: [search.strategy.constraints] through Optuna's constraints_func; infeasible trials recorded,
never best; samplers without constraints_func still only report feasible trials."""

import json

import pytest
from search_helpers import make_checkpoint, search_toml

from qfx import cli
from qfx.search.config import ConfigError, load_config
from qfx.search.records import record_of
from qfx.search.session import run_search


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck"), epochs=3)


def _cfg(tmp_path, sampler, budget, single=True, n=12):
    p = tmp_path / f"{sampler}.toml"
    p.write_text(search_toml(sampler, n, single=single) + f"\n[search.strategy.constraints]\n{budget}\n")
    return p


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_average_bitwidth_budget(tmp_path, ckpt, sampler):
    run = run_search(_cfg(tmp_path, sampler, "average_bitwidth.max = 9.0"), checkpoint=str(ckpt), out=tmp_path / "o")
    done = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    bw = {t.number: record_of(t).hardware_metrics["average_bitwidth"] for t in done}
    assert all(record_of(t).feasible == (bw[t.number] <= 9.0) for t in done)
    assert all(record_of(t).constraints == {"average_bitwidth<=9": pytest.approx(bw[t.number] - 9.0)}
               for t in done)  # fmt: skip
    assert all(t.constraints == record_of(t).constraints for t in done)  # Optuna-native constraints
    assert all(t.user_attrs["average_bitwidth"] == bw[t.number] for t in done)  # a budget is a dashboard column
    assert run.best and all(bw[t.number] <= 9.0 for t in run.best)
    feasible = [t for t in done if record_of(t).feasible]
    assert run.best[0].value == max(t.value for t in feasible)
    best = json.loads((tmp_path / "o" / "best.json").read_text())
    assert all(b["hardware_metrics"]["average_bitwidth"] <= 9.0 for b in best.values())
    records = json.loads((tmp_path / "o" / "trials.json").read_text())
    assert {r["number"]: r["feasible"] for r in records if r["state"] == "COMPLETE"} == {
        t.number: record_of(t).feasible for t in done
    }
    assert (tmp_path / "o" / "pareto.png").is_file()


def test_multi_objective_budget_with_nsgaii(tmp_path, ckpt):
    run = run_search(_cfg(tmp_path, "nsgaii", "accuracy.min = 0.45\nmemory_bytes.max = 900", single=False),
                     checkpoint=str(ckpt))  # fmt: skip
    assert run.best
    for t in run.best:
        assert record_of(t).software_metrics["accuracy"] >= 0.45
        assert record_of(t).hardware_metrics["memory_bytes"] <= 900
        # budgets are dashboard columns, except an objective's: the trial's values show those already
        assert t.user_attrs["memory_bytes"] == record_of(t).hardware_metrics["memory_bytes"]
        assert "accuracy" not in t.user_attrs


def test_cli_reports_infeasible_count_and_no_feasible_trial(tmp_path, ckpt, capsys):
    cfg = _cfg(tmp_path, "random", "accuracy.min = 1.5", n=3)  # no trial can meet it; known only by evaluating
    assert cli.main(["search", "--config", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "(no feasible trial: every trial broke a budget)" in out
    assert "budgets accuracy >= 1.5: 3 of 3 evaluated trial(s) infeasible; 0 sampled point(s)" in out


def test_cli_refuses_a_hardware_budget_no_point_meets(tmp_path, ckpt, capsys):
    """A hardware budget is a function of the configuration: one the narrowest configuration breaks is refused
    before any trial (it used to take 61 refused samples to say "no feasible trial")."""
    cfg = _cfg(tmp_path, "random", "average_bitwidth.max = 0.5", n=3)
    assert cli.main(["search", "--config", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: [search.strategy.constraints] average_bitwidth.max = 0.5 is below the smallest")
    assert not (tmp_path / "o" / "trials.json").exists()


def test_hardware_budget_checked_before_evaluation(tmp_path, ckpt):
    """No evaluation is spent on a point that breaks a hardware budget; the study still gets n evaluated
    trials, all feasible."""
    run = run_search(_cfg(tmp_path, "random", "average_bitwidth.max = 9.0", n=10), checkpoint=str(ckpt))
    done = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    refused = [t for t in run.study.trials if t.state.name == "PRUNED" and record_of(t).refused]
    assert len(done) == 10 and all(record_of(t).feasible for t in done)
    assert refused and all(record_of(t).hardware_metrics["average_bitwidth"] > 9.0 for t in refused)
    assert all(not record_of(t).software_metrics for t in refused)  # never evaluated


@pytest.mark.parametrize(
    "budget, message",
    [
        ("acuracy.min = 0.5", "unknown metric(s) ['acuracy']"),
        ("accuracy.mni = 0.5", "unknown key"),
        ("accuracy = {}", "give max and/or min"),
        ("accuracy.min = 0.9\naccuracy.max = 0.5", "min 0.9 is above max 0.5"),
    ],
)
def test_bad_budgets_are_named(tmp_path, budget, message):
    with pytest.raises(ConfigError, match="search.strategy.constraints") as e:
        load_config(_cfg(tmp_path, "tpe", budget), require_search=True)
    assert message in str(e.value)


def test_reachable_budget_checked_with_one_evaluation_and_an_unreachable_one_by_descent():
    """The reachability check of a budget: the narrowest (widest) point first; where it meets the budget, no
    descent (a whole-network FPGA metric costs a trace per point: 93 evaluations took 39 s on jsc-s); where it
    breaks it, the coordinate descent finds the extreme and the message names it."""
    from types import SimpleNamespace

    from qfx.search.ilp import unreachable_budgets

    dims = {"a/weight_width": [2, 4, 8], "b/weight_width": [2, 4, 8], "c/data_in_width": [3, 6]}
    space = SimpleNamespace(dims=dims, free_dims={d: len(c) for d, c in dims.items()},
                            to_config=lambda p: {d: dims[d][i] for d, i in p.items()})  # fmt: skip
    calls = []

    def hardware(cfg):
        calls.append(cfg)
        return {"bits": float(sum(cfg.values()))}

    ev = SimpleNamespace(hardware=hardware)
    bound = SimpleNamespace
    assert unreachable_budgets(space, ev, {"bits": bound(max=7.0, min=None)}) == []
    assert calls == [{"a/weight_width": 2, "b/weight_width": 2, "c/data_in_width": 3}]  # one point: the narrowest
    calls.clear()
    assert unreachable_budgets(space, ev, {"bits": bound(max=None, min=20.0)}) == []
    assert calls == [{"a/weight_width": 8, "b/weight_width": 8, "c/data_in_width": 6}]  # the widest
    calls.clear()
    (msg,) = unreachable_budgets(space, ev, {"bits": bound(max=6.0, min=None)})
    assert msg == "bits.max = 6 is below the smallest bits of the space (7)"
    assert len(calls) == 1 + 6  # the check, then the descent (1 + the other choices of each dimension)
