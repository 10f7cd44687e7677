"""Resource metrics: CPU time/utilisation and peak memory of an evaluation, CPU energy from RAPL where readable."""

import pytest
import torch

import qfx.search.measure as measure
from qfx.graph import trace
from qfx.passes.analysis import analyze
from qfx.search.measure import cpu_energy, measure_resources, rapl_status
from qfx.search.runner import Evaluator
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model


def test_measure_resources_sees_a_64mb_allocation_and_cpu_time():
    def work():
        x = torch.ones(16 * 1024 * 1024)  # 64 MiB, touched
        return float((x * 2).sum())

    out, cost = measure_resources(work)
    assert out == 2 * 16 * 1024 * 1024
    assert cost["peak_memory_bytes"] >= 60 * 2**20
    assert cost["cpu_time_s"] > 0 and 0 < cost["cpu_utilization"] <= torch.get_num_threads() + 0.5


def _evaluator(metrics):
    ds = load_dataset("digits")
    torch.manual_seed(0)
    g = analyze(trace(build_model("jsc-tiny", ds.num_features, ds.num_classes).eval(), ds.val.x[:8]))
    return Evaluator(g, ds.val, ds.num_classes, metrics)


def test_search_metrics_cpu_time_utilization_peak_memory():
    ev = _evaluator(["accuracy", "cpu_time", "cpu_utilization", "peak_memory"])
    res = ev.evaluate({"by": "type", "linear": {"name": "integer", "weight_width": 4}})
    sw = res.software
    assert sw["cpu_time"] > 0 and sw["cpu_utilization"] > 0 and sw["peak_memory"] >= 0


def _fake_rapl(root, uj, max_uj=2**32):
    z = root / "intel-rapl:0"
    z.mkdir(parents=True, exist_ok=True)
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (root / "intel-rapl:0:0").mkdir(exist_ok=True)  # a sub-zone (core): not counted twice
    return z


def test_cpu_energy_reads_rapl_counters_and_handles_wraparound(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "RAPL", tmp_path)
    z = _fake_rapl(tmp_path, 2**32 - 1_000_000)
    calls = []

    def fn():  # the counter advances by 0.3 J per call and wraps
        calls.append(1)
        v = (int((z / "energy_uj").read_text()) + 300_000) % 2**32
        (z / "energy_uj").write_text(str(v))

    e = cpu_energy(fn, repeats=10)
    assert e["available"] and len(calls) == 10
    assert e["energy_j"] == pytest.approx(3.0) and e["energy_per_call_j"] == pytest.approx(0.3)


def test_cpu_energy_unavailable_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "RAPL", tmp_path / "none")
    st = rapl_status()
    assert not st["available"] and "no RAPL powercap zones" in st["reason"]
    with pytest.raises(ValueError, match="metric 'cpu_energy' cannot be measured on this machine: no RAPL"):
        _evaluator(["accuracy", "cpu_energy"])
