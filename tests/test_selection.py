"""Selection that generalizes: a held-out selection split, disjoint from the search's and from test, picks
the reported configuration among the search's best; best.json carries search, selection and test figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from search_helpers import make_checkpoint, search_toml

from qfx.search.records import config_of, record_of
from qfx.search.selection import split_off
from qfx.zoo.data import Split, load_dataset


def test_split_off_is_disjoint_stratified_and_seeded():
    ds = load_dataset("digits")
    a, b = split_off(ds.val, 0.5, 0)
    assert len(a) + len(b) == len(ds.val) and abs(len(a) - len(b)) <= 1
    rows = {tuple(r.tolist()) for r in a.x}
    assert not any(tuple(r.tolist()) in rows for r in b.x)  # no row in both
    for c in range(10):  # stratified: every class in both halves, in proportion
        n = int((ds.val.y == c).sum())
        assert abs(int((a.y == c).sum()) - n / 2) <= 1
    a2, _ = split_off(ds.val, 0.5, 0)
    assert torch.equal(a.x, a2.x)
    tiny = Split(torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 0, 1]))  # a class of one: unstratified, no crash
    assert len(split_off(tiny, 0.5, 0)[1]) == 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck"), epochs=3)


def test_reported_best_is_chosen_on_the_selection_split(tmp_path, ckpt):
    from qfx.search.session import run_search

    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("random", 12) + "\n[search.strategy.selection]\nfraction = 0.5\ntop_k = 4\n")
    run = run_search(cfg, checkpoint=str(ckpt), out=tmp_path / "o")
    n = run.selection["splits"]
    assert n["search"] + n["selection"] == 256 and n["test"] == 360
    assert len(run.objective.evaluator.y) == n["search"]  # the search never saw the selection rows
    figs = run.selection["trials"]
    assert 1 <= len(figs) <= 4
    (best,) = run.best
    assert figs[best.number]["selection_value"] == max(f["selection_value"] for f in figs.values())
    b = json.loads((tmp_path / "o" / "best.json").read_text())["0"]
    assert b["number"] == best.number and b["split_sizes"] == n
    assert {"accuracy", "loss"} <= set(b["selection_metrics"]) and {"accuracy", "loss"} <= set(b["test_metrics"])
    assert b["software_metrics"]["accuracy"] == pytest.approx(record_of(best).software_metrics["accuracy"])


def test_compare_samplers_reports_test_accuracy_of_the_chosen_configuration(tmp_path, ckpt, capsys):
    from qfx import cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("tpe", 8) + "\n[search.strategy.constraints]\naverage_bitwidth.max = 9.0\n")
    args = ["compare-samplers", "--config", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    assert cli.main([*args, "--samplers", "tpe,ilp", "--n-trials", "6", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "test acc % of chosen" in out and "sensitivity table's evaluations" in out
    res = json.loads((tmp_path / "o" / "compare" / "compare.json").read_text())
    for s in ("tpe", "ilp"):
        accs = res["samplers"][s]["test_accuracy_of_chosen"]
        assert len(accs) == 2 and all(0 < a <= 1 for a in accs)
    assert res["optimum_kind"] == "exhaustive"  # the optimum over the feasible points only


def _tail(b: int, n: int) -> float:  # P(X >= b), X ~ Binomial(n, 1/2): the exact one-sided McNemar p-value
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


def test_mcnemar_counts_only_the_rows_where_the_two_disagree():
    from qfx.search.selection import mcnemar_greater

    a = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0], bool)  # anchor
    b = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)  # candidate: 6 rows right alone, 1 wrong alone
    assert mcnemar_greater(b, a) == pytest.approx(_tail(6, 7)) == pytest.approx(8 / 128)
    assert mcnemar_greater(a, b) == pytest.approx(_tail(1, 7))
    assert mcnemar_greater(a, a) == 1.0


def test_the_uniform_anchor_is_the_first_trial_and_the_best_must_beat_it_significantly(tmp_path, ckpt):
    from qfx.passes.transforms.quantize import QuantizePass
    from qfx.search.session import run_search
    from qfx.zoo.train import predict

    cfg = tmp_path / "c.toml"
    budget = "\n[search.strategy.constraints]\naverage_bitwidth.max = 9.0\n"  # uniform 4 bits: 8.6; 8 bits: 11.9
    cfg.write_text(search_toml("random", 10) + budget + '\n[search.strategy.selection]\nanchor = "uniform"\n')
    run = run_search(cfg, checkpoint=str(ckpt), out=tmp_path / "o")
    first = run.study.trials[0]
    widths = {v for k, v in first.params.items() if k.endswith("_width") and not k.endswith("frac_width")}
    assert widths == {4} and record_of(first).hardware_metrics["average_bitwidth"] <= 9.0  # uniform, feasible
    a = json.loads((tmp_path / "o" / "best.json").read_text())["0"]["anchor"]
    assert a["anchor_trial"] == 0
    if a["p_value"] is None:  # the best was the anchor itself
        assert run.best[0].number == 0
        return
    ev = run.objective.evaluator  # recount the paired rows independently
    right = {}
    for t in (first, run.study.trials[a["best_trial"]]):
        q = QuantizePass(config_of(t))(ev.pristine).graph
        right[t.number] = (predict(q.gm, ev.x).argmax(1) == ev.y).numpy()
    anchor, best = right[0], right[a["best_trial"]]
    assert a["best_right_anchor_wrong"] == int((best & ~anchor).sum()) and a["rows"] == len(anchor)
    assert a["anchor_right_best_wrong"] == int((anchor & ~best).sum())
    n = a["best_right_anchor_wrong"] + a["anchor_right_best_wrong"]
    assert a["p_value"] == pytest.approx(_tail(a["best_right_anchor_wrong"], n))
    assert (run.best[0].number == 0) == (a["p_value"] >= a["alpha"]) and a["kept"] in ("best", "anchor")
