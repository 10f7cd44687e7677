"""Datasets (bundled + JSC files in both real formats), training, evaluation, hw estimates."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qfx.graph import trace
from qfx.hw import TensorBits, average_bitwidth, hw_metrics, memory_density
from qfx.passes.analysis import analyze
from qfx.passes.transforms.quantize import QuantizePass
from qfx.search.measure import gpu_energy, measure_latency
from qfx.zoo.data import JSC_CLASSES, JSC_FEATURES, JSC_H5_KEY, DatasetError, load_dataset
from qfx.zoo.models import MODELS, build_model
from qfx.zoo.train import evaluate, load_checkpoint, save_checkpoint, train


def linear_int8(weight_frac: int) -> dict:
    """By-type config: every Linear with 8-bit Q3.4 inputs and biases, 8-bit weights with ``weight_frac``."""
    c = {
        "name": "integer",
        "data_in_width": 8,
        "data_in_frac_width": 4,
        "weight_width": 8,
        "weight_frac_width": weight_frac,
        "bias_width": 8,
        "bias_frac_width": 4,
    }
    return {"by": "type", "linear": c}


def _jsc_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = rng.normal(size=(n, 16)).astype(np.float32) + y[:, None] * 0.8
    x[:, 15] = rng.integers(5, 60, n)  # multiplicity is a count
    return x, y


def write_jsc_h5(path, n=300, drop=()):
    x, y = _jsc_rows(n)
    cols = [c for c in JSC_FEATURES + JSC_CLASSES if c not in drop]
    arr = np.zeros(n, dtype=[(c, "<f4") for c in cols])
    for i, c in enumerate(JSC_FEATURES):
        if c in cols:
            arr[c] = x[:, i]
    for i, c in enumerate(JSC_CLASSES):
        if c in cols:
            arr[c] = (y == i).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset(JSC_H5_KEY, data=arr)
    return x, y


def write_jsc_csv(path, n=300, dup=0):
    x, y = _jsc_rows(n, 1)
    names = "gqwzt"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JSC_FEATURES + ["class"])
        for i in list(range(n)) + list(range(dup)):
            w.writerow([*map(float, x[i]), names[y[i]]])
    return x, y


def _no_overlap(ds):
    rows = [{tuple(r) for r in s.x.numpy().round(6).tolist()} for s in (ds.train, ds.val, ds.test)]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]


def test_jsc_h5_and_csv(tmp_path):
    write_jsc_h5(tmp_path / "jsc.h5")
    ds = load_dataset(f"jsc:{tmp_path / 'jsc.h5'}")
    assert ds.num_features == 16 and ds.classes == JSC_CLASSES
    assert len(ds.train) + len(ds.val) + len(ds.test) == 300
    _no_overlap(ds)
    torch.testing.assert_close(ds.train.x.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    assert abs(float(ds.val.x.mean())) > 0  # val/test standardised with train stats, not their own
    write_jsc_csv(tmp_path / "jsc.csv", dup=40)
    dc = load_dataset(str(tmp_path / "jsc.csv"))
    assert len(dc.train) + len(dc.val) + len(dc.test) == 300  # 40 duplicate rows dropped
    _no_overlap(dc)


def test_validation_is_not_training(tmp_path):
    ds = load_dataset("digits")
    assert len(ds.val) > 0 and not torch.equal(ds.val.x[: len(ds.val)], ds.train.x[: len(ds.val)])
    _no_overlap(ds)
    again = load_dataset("digits")
    assert torch.equal(again.test.x, ds.test.x)  # fixed seed


def test_bad_jsc_files_name_the_problem(tmp_path):
    write_jsc_h5(tmp_path / "bad.h5", drop=("j_zlogz", "j_t"))
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['j_zlogz', 'j_t'\]"):
        load_dataset(f"jsc:{tmp_path / 'bad.h5'}")
    (tmp_path / "corrupt.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        load_dataset(f"jsc:{tmp_path / 'corrupt.h5'}")
    (tmp_path / "bad.csv").write_text("j_zlogz,class\n1.0,g\n")
    with pytest.raises(DatasetError, match="lacks column.*j_c1_b0_mmdt"):
        load_dataset(str(tmp_path / "bad.csv"))
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("jsc:/nonexistent.h5")


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_on_tabular_and_image(name):
    for dsname in ("wine", "digits"):
        ds = load_dataset(dsname)
        if name == "cnn" and ds.image_shape is None and dsname == "wine":
            with pytest.raises(ValueError, match="cnn needs an image dataset"):
                build_model(name, ds.num_features, ds.num_classes)
            continue
        m = build_model(name, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
        assert m.eval()(ds.test.x[:4]).shape == (4, ds.num_classes)
    assert sum(p.numel() for p in build_model("jsc-tiny", 16, 5).parameters()) == 117


def test_digits_jsc_s_accuracy_and_8bit(tmp_path):
    ds = load_dataset("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float summation order (and so the trained weights) depends on threads
    try:
        torch.manual_seed(0)
        m = build_model("jsc-s", ds.num_features, ds.num_classes)
        train(m, ds, progress=False)
    finally:
        torch.set_num_threads(threads)
    fp = evaluate(m, ds.test, ds.num_classes)
    assert fp["accuracy"] >= 0.95
    assert evaluate(m, ds.test, ds.num_classes) == fp  # no state between evaluations
    # 8-bit fixed point: activations Q3.4 (range +-8), weights Q2.5 (range +-4 covers |w| < 3), biases Q3.4
    assert max(float(p.detach().abs().max()) for n, p in m.named_parameters() if n.endswith("weight")) < 4
    cfg = linear_int8(weight_frac=5)
    q = QuantizePass(cfg)(trace(m, ds.test.x[:2])).graph
    q8 = evaluate(q.gm, ds.test, ds.num_classes)
    assert abs(q8["accuracy"] - fp["accuracy"]) <= 0.01
    p = save_checkpoint(tmp_path / "ck", m, {"model": "jsc-s", "dataset": "digits", "seed": 0, "metrics": fp})
    m2, ds2, info = load_checkpoint(p)
    assert evaluate(m2, ds2.test, ds2.num_classes) == fp and info["metrics"] == fp
    assert {"precision", "recall", "f1", "f1_macro", "confusion_matrix", "loss"} <= set(fp)


def test_hw_average_bitwidth_uses_width_not_frac():
    m = build_model("jsc-tiny", 16, 5)
    g = analyze(trace(m, torch.randn(4, 16)))
    cfg = linear_int8(weight_frac=4)
    q = QuantizePass(cfg)(g).graph
    hw = hw_metrics(q)
    assert hw["average_bitwidth"] == pytest.approx((85 * 8 + 32 * 32) / 117)  # BN stays fp32
    assert hw["memory_density"] == pytest.approx(32 / hw["average_bitwidth"])
    assert hw["model_size"] == (85 * 8 + 32 * 32) / 8
    assert hw["bops"] == 16 * 5 * 8 * 8
    assert hw_metrics(g)["average_bitwidth"] == 32.0
    act = hw_metrics(q, activations=True)
    # inputs of the quantizable nodes: BN (16, float; BN is quantizable), relu (16), linear (16, int8), relu (5)
    act_bits = 16 * 32 + 16 * 32 + 16 * 8 + 5 * 32
    assert act["average_bitwidth"] == pytest.approx((85 * 8 + 32 * 32 + act_bits) / (117 + 53))


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(1, 32)), min_size=1, max_size=20))
def test_hw_properties(pairs):
    ts = [TensorBits("n", "weight", n, b) for n, b in pairs]
    avg = average_bitwidth(ts)
    assert min(b for _, b in pairs) - 1e-9 <= avg <= max(b for _, b in pairs) + 1e-9
    assert memory_density(avg) == pytest.approx(32 / avg)
    uniform = [TensorBits("n", "weight", n, 8) for n, _ in pairs]
    assert average_bitwidth(uniform) == 8


def test_latency_and_energy_report_honestly():
    lat = measure_latency(lambda: torch.ones(10) * 2, warmup=1, repeats=5)
    assert lat["median_ms"] > 0 and lat["iqr_ms"] >= 0
    e = gpu_energy(lambda: None)
    if not torch.cuda.is_available():
        assert e == {"available": False, "reason": "no CUDA GPU"}
