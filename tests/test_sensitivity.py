"""Per-node sensitivity (each node alone at each width), its CLI, and the sensitivity warm start."""

import json

import pytest
from search_helpers import make_checkpoint, search_toml

from qfx import cli
from qfx.graph.meta import get_meta
from qfx.passes.transforms.quantize import QuantizePass
from qfx.search.config import load_config
from qfx.search.records import record_of
from qfx.search.sensitivity import node_config, sensitivity, warm_start_points
from qfx.search.session import build_search, prepare, run_search

SPACE = """
[search.search_space.seed.default.config]
name = ["integer"]
data_in_width = [2, 4, 8]
weight_width = [2, 4, 8]
bias_width = [8]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sens")
    ck = make_checkpoint(d / "ck", model="jsc-toy", epochs=20)
    cfg = d / "c.toml"
    cfg.write_text(search_toml("tpe", 6, by="name", space=SPACE, model="jsc-toy"))
    return d, ck, cfg


def _searched(setup):
    """The setup's config, search space and evaluator (prepared once per call)."""
    d, ck, cfg = setup
    rc = load_config(cfg, require_search=True)
    space, ev = build_search(rc, prepare(rc, str(ck), d / "o", progress=False))
    return rc, space, ev


def test_each_node_alone_at_each_width(setup):
    d, ck, cfg = setup
    rc, space, ev = _searched(setup)
    sens = sensitivity(ev, [2, 8])
    assert set(sens.rows) == set(sens.op_types) and all(set(r) == {2, 8} for r in sens.rows.values())
    node = next(n for n, t in sens.op_types.items() if t == "linear")
    q = QuantizePass(node_config(node, 2, ("data_in", "weight", "bias")))(ev.pristine).graph
    assert [n.name for n in q.gm.graph.nodes if get_meta(n).quantized] == [node]  # only that node
    direct = ev.evaluate(node_config(node, 2, ("data_in", "weight", "bias"))).software["accuracy"]
    assert sens.drop(node, 2) == pytest.approx(100 * (sens.fp32["accuracy"] - direct))
    assert sum(sens.drop(n, 2) for n in sens.rows) > sum(sens.drop(n, 8) for n in sens.rows)  # 2 bits hurt more
    assert all(r[8]["sqnr_db"] > r[2]["sqnr_db"] for r in sens.rows.values() if r[2]["sqnr_db"] != float("inf"))
    points = warm_start_points(sens, space, ev)
    assert points and all(set(p) <= set(space.free_dims) for p in points)
    for p in points:  # every enqueued allocation is a point of the space
        space.point_of({**space.params(space.point(0)), **p})

    def bits(p):  # the average bitwidth a point really has (hardware estimate of the quantized graph)
        cfg = space.to_config(space.point_of({**space.params(space.point(0)), **p}))
        return ev.evaluate(cfg).hardware["average_bitwidth"]

    specs = load_config(cfg, require_search=True).search.strategy.metrics
    # bits dear: lowest widths. The price must outweigh any summed predicted drop (each node may add up to 100
    # points, so 10 was not always enough: whether it was depended on the trained weights)
    for bit_price, pick in ((0.0, max), (1e6, min)):  # bits free: keep widths
        obj = {"accuracy": specs["accuracy"],
               "average_bitwidth": specs["accuracy"].model_copy(update={"scale": -bit_price})}  # fmt: skip
        tol = len(warm_start_points(sens, space, ev))
        guided = warm_start_points(sens, space, ev, objective=obj, tolerances=())
        assert guided and bits(guided[0]) == pick(bits(p) for p in [*points[:tol], *guided])
    front = warm_start_points(sens, space, ev, tolerances=(), spread=4)
    assert [bits(p) for p in front] == sorted((bits(p) for p in front), reverse=True)  # along the greedy path


def test_cli_sensitivity_table_heatmap_json(setup, capsys):
    d, ck, cfg = setup
    out = d / "cli"
    assert cli.main(["sensitivity", "--config", str(cfg), "--checkpoint", str(ck), "--out", str(out),
                     "--widths", "2,4", "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "2-bit Δacc / SQNR" in text and "seq_blocks_2" in text
    data = json.loads((out / "sensitivity.json").read_text())
    assert data["widths"] == [2, 4] and (out / "sensitivity.png").stat().st_size > 5000


def test_warm_start_enqueues_allocations_under_the_budget(setup):
    d, ck, cfg = setup
    text = cfg.read_text().replace("seed = 0\n", 'seed = 0\nwarm_start = "sensitivity"\n', 1)
    c2 = d / "warm.toml"
    c2.write_text(text + "\n[search.strategy.constraints]\naverage_bitwidth.max = 6.0\n")
    run = run_search(c2, checkpoint=str(ck))
    first = run.study.trials[0]
    assert first.system_attrs.get("fixed_params")  # an enqueued trial
    assert record_of(first).hardware_metrics["average_bitwidth"] <= 6.0


def test_compare_samplers_with_warm_start_and_a_labelled_long_run_reference(setup):
    from qfx.search.compare import compare_samplers

    d = setup[0]
    rc, space, ev = _searched(setup)
    st = rc.search.strategy
    res = compare_samplers(space, ev, st.metrics, st.setup, ["random", "tpe+sensitivity"], 2, 5, d / "cmp",
                           exhaustive_limit=10, reference_trials=12)  # fmt: skip
    assert res["optimum_kind"] == "long run" and "not a proven optimum" in res["reference"]
    assert set(res["samplers"]) == {"random", "tpe+sensitivity"}
    assert all(len(c) == 5 for c in res["samplers"]["tpe+sensitivity"]["curves"])


def test_multi_objective_comparison_reports_hypervolume_vs_trials(setup):
    import numpy as np

    from qfx.search.compare import compare_samplers

    d = setup[0]
    rc, space, ev = _searched(setup)
    st = rc.search.strategy
    setup_mo = st.setup.model_copy(update={"sum_scaled_metrics": False})
    res = compare_samplers(space, ev, st.metrics, setup_mo, ["random", "nsgaii"], 2, 8, d / "mo",
                           exhaustive_limit=10, reference_trials=8)  # fmt: skip
    hv = res["hypervolume"]
    assert set(hv["curves"]) == {"random", "nsgaii"} and (d / "mo" / "hypervolume.png").is_file()
    for curves in hv["curves"].values():
        for c in curves:
            assert len(c) == 8 and all(b >= a for a, b in zip(c, c[1:], strict=False))  # never decreases
    # independent check: 2-D hypervolume of each run's points (as losses) by a sweep over the sorted front
    ref = np.array(hv["reference_point"])
    for s, runs in hv["points"].items():
        for pts, curve in zip(runs, hv["curves"][s], strict=True):
            p = np.array([q for q in pts if np.all(np.array(q) <= ref)])
            area, best_y = 0.0, ref[1]
            for x, y in sorted(map(tuple, p)):
                if y < best_y:
                    area += (ref[0] - x) * (best_y - y)
                    best_y = y
            assert curve[-1] == pytest.approx(area, rel=1e-9, abs=1e-12)


def test_sensitivity_uses_the_fracs_the_space_searches():
    from types import SimpleNamespace

    from qfx.search.sensitivity import space_frac

    auto = SimpleNamespace(dims={"fc/weight_width": [2, 4], "fc/weight_frac_width": ["auto"]})
    fixed = SimpleNamespace(dims={"fc/weight_width": [2, 4], "fc/weight_frac_width": [1, 2]})
    assert space_frac(auto) == "auto" and space_frac(fixed) == "NA"
