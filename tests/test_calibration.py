"""'auto' frac widths: calibration tables checked against torch's fake_quantize (no saturation, finest step,
minimal MSE), resolution in the quantize pass, and a search over widths only."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from search_helpers import make_checkpoint, search_toml

from qfx.graph import trace
from qfx.graph.meta import get_meta
from qfx.passes import PassError
from qfx.passes.analysis import CalibrationPass, analyze
from qfx.passes.analysis.calibrate import frac_table
from qfx.passes.transforms.quantize import QuantizePass
from qfx.search.session import run_search
from qfx.zoo.models import build_model


def fq(x, w, f, signed=True):
    lo, hi = (-(2 ** (w - 1)), 2 ** (w - 1) - 1) if signed else (0, 2**w - 1)
    return torch.fake_quantize_per_tensor_affine(x, 2.0**-f, 0, lo, hi)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-3, 1e3), st.integers(2, 16), st.booleans())
def test_max_fracs_hold_the_maximum_with_the_finest_step(m, w, signed):
    x = torch.tensor([m, -m if signed else 0.0, m / 3])
    f = frac_table(x, signed)[w]
    top = (2 ** (w - 1) - 1 if signed else 2**w - 1) * 2.0**-f
    if 0 < f < w:
        assert top >= m * (1 - 2.0 ** -(w - 1)) - 2.0**-f  # at most one step of saturation
        finer = (2 ** (w - 1) - 1 if signed else 2**w - 1) * 2.0 ** -(f + 1)
        assert finer < m  # one more fractional bit would saturate
    assert 0 <= f <= w


def test_mse_fracs_minimise_the_error_of_fake_quantize():
    torch.manual_seed(0)
    x = torch.randn(4096) * 1.7
    x[0] = 9.0  # an outlier: MSE prefers clipping it slightly over a coarser step
    tab = frac_table(x, True, "mse")
    for w in (3, 4, 6, 8):
        errs = [float(((fq(x, w, f) - x) ** 2).mean()) for f in range(w + 1)]
        assert errs[tab[w]] == pytest.approx(min(errs), rel=1e-6)
    assert tab[8] > frac_table(x, True, "max")[8]  # clipping the outlier buys resolution
    assert frac_table(x, True, "percentile", 99.0)[8] > frac_table(x, True, "max")[8]


def _graph():
    torch.manual_seed(0)
    x = torch.randn(256, 16) * 2
    return analyze(trace(build_model("jsc-s", 16, 5).eval(), x[:8])), x


AUTO4 = {"name": "integer", "data_in_width": 4, "data_in_frac_width": "auto", "weight_width": 4,
         "weight_frac_width": "auto", "bias_width": 4, "bias_frac_width": "auto"}  # fmt: skip


def test_quantize_resolves_auto_from_calibration_and_names_the_node_without_it():
    g, x = _graph()
    with pytest.raises(PassError, match=r"node 'seq_blocks_2': data_in_frac_width = 'auto' needs calibration"):
        QuantizePass({"by": "type", "linear": AUTO4})(g)
    CalibrationPass(x)(g)
    q = QuantizePass({"by": "type", "linear": AUTO4})(g).graph
    for n in q.gm.graph.nodes:
        meta = get_meta(n)
        if meta.op_type == "linear":
            cal = get_meta(next(m for m in g.gm.graph.nodes if m.name == n.name)).calibration
            assert {r: p.frac for r, p in meta.precision.items()} == {r: cal[r][4] for r in meta.precision}
            w = q.gm.get_submodule(n.target).weight
            f = meta.precision["weight"].frac
            assert f == min(4, 4 - 1 - math.ceil(math.log2(float(w.abs().max()))))  # fits the largest weight
    assert (q.gm(x) - g.gm(x)).abs().max() < 5  # a working 4-bit model


def test_calibration_survives_save_and_load(tmp_path):
    g, x = _graph()
    CalibrationPass(x, method="mse")(g)
    g.save(tmp_path / "g")
    h = type(g).load(tmp_path / "g")
    assert [get_meta(n).calibration for n in g.gm.graph.nodes] == [get_meta(n).calibration for n in h.gm.graph.nodes]


def test_search_over_widths_only_with_auto_fracs(tmp_path):
    ck = make_checkpoint(tmp_path / "ck", epochs=3)
    space = """
[search.search_space.seed.default.config]
name = ["NA"]
[search.search_space.seed.linear.config]
name = ["integer"]
data_in_width = [3, 4, 6]
data_in_frac_width = ["auto"]
weight_width = [3, 4, 6]
weight_frac_width = ["auto", "NA"]
"""
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("bruteforce", 18, space=space) + '\n[calibration]\nmethod = "percentile"\n')
    run = run_search(cfg, checkpoint=str(ck))
    done = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 18
    pristine = run.objective.evaluator.pristine
    assert any(get_meta(n).calibration for n in pristine.gm.graph.nodes)


def test_mse_weights_errors_as_the_batch_norm_output_sees_them():
    """A folded scale of ~300 on a channel that is always 0 must not set the scale tensor's range: the frac
    chosen minimises the output error sum E[(x_c (q(s_c) - s_c))^2] (brute force over fake_quantize)."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(6).eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([1e-5, 0.8, 1.3, 2.0, 0.5, 1.1]))
        bn.weight.copy_(torch.tensor([1.0, 0.9, 1.2, 0.7, 1.1, 1.0]))
    x = torch.randn(512, 6)
    x[:, 0] = 0.0  # a pixel that is always blank
    g = analyze(trace(torch.nn.Sequential(bn), x[:8]))
    CalibrationPass(x, method="mse")(g)
    tab = next(get_meta(n).calibration for n in g.gm.graph.nodes if get_meta(n).calibration)
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    for w in (4, 6, 8):
        out_err = [float(((x * (fq(s, w, f) - s)) ** 2).mean()) for f in range(w + 1)]
        assert out_err[tab["weight"][w]] == pytest.approx(min(out_err), rel=1e-6)
        assert tab["weight"][w] > frac_table(s, True, "mse")[w]  # plain MSE is ruled by the dead channel


def test_output_weights_of_a_grouped_conv_match_a_loop():
    from qfx.passes.analysis.calibrate import output_weights

    torch.manual_seed(0)
    x, w, groups = torch.randn(3, 6, 5, 5), torch.randn(4, 3, 3, 3), 2
    got = output_weights({"data_in": x, "weight": w}, groups)
    ms = (x**2).mean((0, 2, 3))
    ref_w = torch.empty_like(w)
    for o in range(4):
        for i in range(3):
            ref_w[o, i] = ms[(o // 2) * 3 + i]
    ref_x = torch.tensor([float((w[(c // 3) * 2 : (c // 3) * 2 + 2, c % 3] ** 2).sum()) for c in range(6)])
    torch.testing.assert_close(torch.broadcast_to(got["weight"], w.shape).float(), ref_w)
    torch.testing.assert_close(got["data_in"].flatten().float(), ref_x)


def test_loss_aware_refinement_never_loses_to_its_starting_points():
    g, x = _graph()
    y = g.gm(x).argmax(1).roll(1)  # any labels: the guarantee is about the calibration loss itself
    plain = g.copy()
    CalibrationPass(x, method="mse")(plain)
    info = CalibrationPass(x, method="mse", targets=y, refine_widths=(3, 4, 6))(g).info
    assert set(info["refined_loss"]) == {3, 4, 6}

    def loss(graph, w, frac):
        cfg = {k: (frac if k.endswith("frac_width") else w) if k.endswith("width") else v for k, v in AUTO4.items()}
        types = {"linear", "batch_norm1d", "relu"}
        q = QuantizePass({"by": "type", **{t: {"config": cfg} for t in types}})(graph).graph
        return float(torch.nn.functional.cross_entropy(q.gm(x), y))

    for w in (3, 4, 6):
        refined = loss(g, w, "auto")
        assert refined == pytest.approx(info["refined_loss"][w], rel=1e-5)
        assert refined <= loss(plain, w, "auto") + 1e-6 and refined <= loss(plain, w, "NA") + 1e-6
    untouched = [get_meta(n).calibration for n in g.gm.graph.nodes]
    assert all(c is None or c["weight" if "weight" in c else "data_in"][8] == p["weight" if "weight" in p else
               "data_in"][8] for c, p in zip(untouched, [get_meta(n).calibration for n in plain.gm.graph.nodes],
                                              strict=True))  # fmt: skip  # widths not refined keep the MSE table


def test_config_widths_feed_the_refinement():
    from qfx.search.config import RunConfig

    linear = {"name": ["integer"], "weight_width": [3, 5], "weight_frac_width": ["auto"], "data_in_width": [8],
              "data_in_frac_width": [2], "bias_width": [4]}  # fmt: skip
    search = {"search_space": {"seed": {"linear": {"config": linear}}},
              "strategy": {"metrics": {"accuracy": {"direction": "maximize"}}}}  # fmt: skip
    relu = {"config": {"name": "integer", "data_in_width": 6}}
    cfg = RunConfig.model_validate({"search": search, "passes": {"quantize": {"by": "type", "relu": relu}}})
    assert cfg.integer_widths() == (3, 4, 5, 6, 8)
