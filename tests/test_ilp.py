"""The exact bit allocation (search/ilp.py): the integer program is the brute-force optimum of its model,
the sensitivity table is role-accurate, and the ILP's first point meets the budget."""

from __future__ import annotations

import json
import random

import pytest

from qfx.search.ilp import Table, brute_force, measure_table, solve, width_dims


def _table(seed: int, dims: int = 4, choices: int = 4) -> Table:
    rng = random.Random(seed)
    names = [f"n{i}/weight_width" for i in range(dims)]
    ch = {d: list(range(2, 2 + choices)) for d in names}
    top = {d: choices - 1 for d in names}
    loss = {d: [rng.uniform(0, 1) * (choices - 1 - i) ** 2 for i in range(choices)] for d in names}
    size = {d: [rng.uniform(50, 150) * (i - (choices - 1)) for i in range(choices)] for d in names}
    return Table(ch, top, loss, {"model_size": size}, {"model_size": 1000.0}, {"model_size": True})


@pytest.mark.parametrize("seed", range(8))
def test_ilp_equals_brute_force_under_a_budget(seed):
    t = _table(seed)
    lo = t.hw_top["model_size"] + sum(min(v) for v in t.hw["model_size"].values())
    for frac in (0.2, 0.5, 0.8):
        cap = lo + frac * (t.hw_top["model_size"] - lo)
        bounds = {"model_size": (None, cap)}
        got, want = solve(t, bounds), brute_force(t, bounds)
        assert want is not None and got is not None
        assert t.predict("model_size", got) <= cap + 1e-6
        assert t.predict("loss", got) == pytest.approx(t.predict("loss", want), abs=1e-9)
    assert solve(t, {"model_size": (None, lo - 1.0)}) is None  # no point meets it: None, never a guess


class _Recorder:
    """An evaluator stand-in: records every config; loss from weight widths, size additive in them."""

    def __init__(self) -> None:
        self.configs: list[dict] = []

    def evaluate(self, config: dict, hardware=None):  # noqa: ANN201, ANN001
        from qfx.search.runner import TrialResult

        self.configs.append(config)
        ws = [
            u["config"]["weight_width"]
            for k, u in config.items()
            if isinstance(u, dict) and "weight_width" in u.get("config", {})
        ]
        return TrialResult({"loss": sum(1.0 / w for w in ws), "accuracy": 0.5}, {"model_size": float(sum(ws))}, {})


def test_sensitivity_of_a_weights_only_space_varies_weights_only():
    import torch

    from qfx.graph import trace
    from qfx.passes.analysis import analyze
    from qfx.search.space import SearchSpace
    from qfx.zoo.models import build_model

    torch.manual_seed(0)
    g = analyze(trace(build_model("jsc-s", 16, 5).eval(), torch.randn(8, 16)))
    seed = {"name": ["integer"], "data_in_width": [8], "weight_width": [2, 4, 6, 8], "bias_width": [8]}
    lin = ["seq_blocks_2", "seq_blocks_5"]
    space = SearchSpace(g, "name", {"default": {"name": ["NA"]}, **{n: dict(seed) for n in lin}})
    assert set(width_dims(space)) == {f"{n}/weight_width" for n in lin}
    ev = _Recorder()
    t = measure_table(space, ev, ["model_size"])
    top = ev.configs[0]
    for cfg in ev.configs:
        for n in lin:
            assert cfg[n]["config"]["data_in_width"] == 8 and cfg[n]["config"]["bias_width"] == 8  # as the space fixes
        changed = [n for n in lin if cfg[n]["config"]["weight_width"] != top[n]["config"]["weight_width"]]
        assert len(changed) <= 1 or cfg in ev.configs[-3:]  # one dimension per probe (then the additivity checks)
    assert t.evaluations == len(ev.configs) == 1 + 2 * 3 + 3
    assert t.additive == {"model_size": True}
    assert t.loss["seq_blocks_2/weight_width"][0] == pytest.approx(1 / 2 - 1 / 8)


def _weights_only(nodes: tuple[str, ...]) -> str:
    """A space where only each node's weight width (2-8) varies; inputs 8-bit, fracs calibrated."""
    seeds = '[search.search_space.seed.default.config]\nname = ["NA"]\n'
    for n in nodes:
        seeds += (
            f'[search.search_space.seed.{n}.config]\nname = ["integer"]\ndata_in_width = [8]\n'
            'data_in_frac_width = ["auto"]\nweight_width = [2, 3, 4, 5, 6, 7, 8]\nweight_frac_width = ["auto"]\n'
            'bias_width = [8]\nbias_frac_width = ["auto"]\n'
        )
    return seeds


@pytest.mark.slow  # trains jsc-s briefly, then a short search
def test_ilp_sampler_first_point_meets_the_budget(tmp_path, capsys):
    from search_helpers import search_toml

    from qfx import cli

    cfg = tmp_path / "weights_only.toml"
    space = _weights_only(("seq_blocks_2", "seq_blocks_5", "seq_blocks_8", "seq_blocks_11"))
    toml = search_toml("ilp", 3, by="name", metrics="accuracy.scale = 1.0", space=space, model="jsc-s")
    cfg.write_text(toml + "\n[search.strategy.constraints]\naverage_bitwidth.max = 4.0\n")
    assert cli.main(["-v", "search", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    trials = json.loads((tmp_path / "o" / "trials.json").read_text())
    for t in trials[:2]:  # the ILP optimum, then the widest uniform width within the budget
        assert t["feasible"] and t["hardware_metrics"]["average_bitwidth"] <= 4.0
    widths = {
        c["config"]["weight_width"]
        for c in trials[1]["sampled_config"].values()
        if isinstance(c, dict) and "weight_width" in c.get("config", {})
    }
    assert len(widths) == 1  # uniform
    assert "ilp: sensitivity table of 4 dims from 28 evaluations; 2 point(s) enqueued" in capsys.readouterr().err
