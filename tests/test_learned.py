"""Learned precision: batch-norm folding, the HGQ-style training pass and the graphs it produces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from qfx.graph.trace import QGraph, trace
from qfx.hw.estimates import average_bitwidth, tensor_bits
from qfx.hw.fpga import ebops
from qfx.passes.analysis import analyze
from qfx.passes.export.api import export, verification_inputs, verify
from qfx.passes.transforms.fold import fold_batch_norms, foldable
from qfx.passes.transforms.learn_precision import LearnConfig, constant_maps, learn_precision
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import train

DS = load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def jsc_s() -> QGraph:
    torch.manual_seed(0)
    m = build_model("jsc-s", DS.num_features, DS.num_classes)
    train(m, DS, 8, 32, 1e-2, 0, False, 0.0)
    return analyze(trace(m, DS.val.x[:8]))


@pytest.fixture(scope="module")
def learned(jsc_s):
    cfg = LearnConfig(epochs=12, beta_start=1e-6, beta=3e-4, overflow="wrap")
    return learn_precision(jsc_s, DS.train, DS.val, cfg, progress=False)


def test_fold_batch_norms_equals_the_float_model_and_leaves_it_alone(jsc_s):
    before = {k: v.clone() for k, v in jsc_s.gm.state_dict().items()}
    pairs = foldable(jsc_s)
    assert [b for _, b in pairs] == ["seq_blocks_3", "seq_blocks_6", "seq_blocks_9", "seq_blocks_12"]
    folded = fold_batch_norms(jsc_s)
    torch.testing.assert_close(folded(DS.test.x), jsc_s(DS.test.x), rtol=1e-4, atol=1e-4)
    assert len(folded.nodes) == len(jsc_s.nodes) - 4
    assert all(torch.equal(v, before[k]) for k, v in jsc_s.gm.state_dict().items())


def test_fold_batch_norms_in_a_cnn():
    torch.manual_seed(0)
    m = build_model("cnn", 64, 10, image_shape=(1, 8, 8)).eval()
    x = torch.randn(4, 64)
    with torch.no_grad():  # non-trivial statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    g = analyze(trace(m, x))
    folded = fold_batch_norms(g)
    assert foldable(g) and not foldable(folded)
    torch.testing.assert_close(folded(x), g(x), rtol=1e-4, atol=1e-4)


def test_constant_maps_are_minimal_and_exact():
    v = torch.tensor([0.75, 0.5, -0.25, 0.0, 3.0, -1.0, 0.3])
    exact, widths, fracs = constant_maps(v, torch.full((7,), 4))
    assert exact.tolist() == [0.75, 0.5, -0.25, 0.0, 3.0, -1.0, 0.3125]
    assert widths.tolist() == [3, 2, 1, 0, 3, 1, 4]  # 0.75 = 3 x 2^-2: 3 bits signed; -0.25 = -1 x 2^-2: 1 bit
    assert fracs.tolist() == [2, 1, 2, 0, 0, 0, 4]


def test_learned_graph_is_an_ordinary_quantized_graph(learned, tmp_path):
    q = learned.graph()
    assert {p.granularity for n in q.nodes for p in q.meta(n).precision.values()} == {"element"}
    # its EBOPs (measured from the graph's own constants and input maps) are what the training recorded
    best = max(learned.front, key=lambda r: (r.val_accuracy, -r.ebops))
    assert ebops(q) == pytest.approx(best.ebops)
    # saved and loaded: the same precisions and outputs
    q.save(tmp_path / "learned graph")
    back = QGraph.load(tmp_path / "learned graph")
    assert torch.equal(back(DS.test.x), q(DS.test.x))
    assert [dict(back.meta(n).precision) for n in back.nodes] == [dict(q.meta(n).precision) for n in q.nodes]


def test_average_bitwidth_counts_each_weight_at_its_own_width(learned):
    q = learned.graph()
    bits = {(t.node, t.role): t for t in tensor_bits(q)}
    w = q.gm.get_submodule(q.node("seq_blocks_2").target).weight.detach()
    fr = q.meta("seq_blocks_2").precision["weight"].frac
    own = []  # two's complement width of each weight's code with its trailing zero bits dropped (0 for 0)
    for c in torch.round(w.double() * 2.0**fr).long().flatten().tolist():
        while c and c % 2 == 0:
            c //= 2
        own.append(0 if c == 0 else (c.bit_length() if c > 0 else (-c - 1).bit_length()) + 1)
    assert bits[("seq_blocks_2", "weight")].bits == pytest.approx(float(np.mean(own)))
    assert average_bitwidth(tensor_bits(q)) < 8


def test_learned_design_verifies_bit_identical_through_verilator(learned, tmp_path):
    from tests.test_fpga import need

    need("verilator")
    q = learned.graph(learned.front[0].epoch)
    e = export(q, "verilog", tmp_path / "rtl out")
    agreement = verify(e, q, verification_inputs(DS.test.x, 1000))
    assert agreement["bit_identical"] and "Verilator" in agreement["checked_by"], agreement


def test_ebops_fall_as_beta_rises():
    """The penalty works: on a toy model (jsc-tiny: one linear layer), each stronger beta gives fewer EBOPs
    (same seed, same epochs), down to a few hundred from ~20k without the penalty."""
    torch.manual_seed(0)
    m = build_model("jsc-tiny", DS.num_features, DS.num_classes)
    train(m, DS, 8, 32, 1e-2, 0, False, 0.0)
    g = analyze(trace(m, DS.val.x[:8]))
    got = []
    for beta in (0.0, 1e-6, 1e-5, 1e-4):
        r = learn_precision(g, DS.train, DS.val, LearnConfig(epochs=30, beta=beta, bits_lr=0.1), progress=False)
        got.append(r.history[-1].ebops)
    assert got == sorted(got, reverse=True) and len(set(got)) == 4, got
    assert got[-1] < got[0] / 10, got


def test_learning_is_deterministic_with_a_seed(jsc_s):
    cfg = LearnConfig(epochs=3, beta=1e-4)
    a = learn_precision(jsc_s, DS.train, DS.val, cfg, progress=False)
    b = learn_precision(jsc_s, DS.train, DS.val, cfg, progress=False)
    assert [r.ebops for r in a.history] == [r.ebops for r in b.history]
    assert torch.equal(a.graph()(DS.test.x), b.graph()(DS.test.x))


def test_front_is_non_dominated_and_sorted(learned):
    f = learned.front
    assert [r.ebops for r in f] == sorted(r.ebops for r in f)
    for r in f:
        assert not any(o.val_accuracy >= r.val_accuracy and o.ebops < r.ebops for o in learned.history)
    with pytest.raises(KeyError, match="not on the front"):
        learned.graph(10_000)


@pytest.mark.parametrize(
    ("bad", "msg"),
    [({"beta": -1}, "greater than or equal"), ({"beta": math.nan}, "finite"), ({"epochs": 0}, "greater than"),
     ({"round": "nearest"}, "half_even"), ({"betta": 1e-5}, "Extra inputs")],
)  # fmt: skip
def test_learn_config_is_checked(bad, msg):
    with pytest.raises(ValidationError, match=msg):
        LearnConfig(**bad)


def test_beta_ramp_is_log_linear():
    cfg = LearnConfig(epochs=5, beta_start=1e-6, beta=1e-2)
    assert [round(math.log10(cfg.beta_at(e)), 6) for e in range(5)] == [-6, -5, -4, -3, -2]
