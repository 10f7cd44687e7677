"""Thread policy: small models run single-threaded unless --threads says otherwise; a seed gives the same
search whatever the thread count."""

import json

import pytest
import torch
from search_helpers import make_checkpoint, search_toml

from qfx import cli
from qfx.search.records import record_of
from qfx.zoo.models import build_model
from qfx.zoo.train import LARGE_MODEL_PARAMS, auto_threads


def test_auto_threads_from_model_size():
    assert auto_threads(build_model("jsc-s", 16, 5)) == 1
    big = torch.nn.Linear(1000, LARGE_MODEL_PARAMS // 1000)
    assert auto_threads(big) >= 1 and (auto_threads(big) > 1) == ((torch.multiprocessing.cpu_count() or 1) > 1)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_same_seed_same_search_whatever_the_thread_count(tmp_path, restore_threads):
    ck = make_checkpoint(tmp_path / "ck", epochs=2)
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("tpe", 6))
    runs = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        args = ["--threads", str(threads), "search", "--config", str(cfg), "--checkpoint", str(ck), "--out", str(out)]
        assert cli.main([*args, "--no-progress"]) == 0
        assert torch.get_num_threads() == threads
        runs[threads] = json.loads((out / "trials.json").read_text())
    a, b = runs[1], runs[2]
    assert [t["sampled_config"] for t in a] == [t["sampled_config"] for t in b]
    for x, y in zip(a, b, strict=True):
        assert x["software_metrics"]["accuracy"] == y["software_metrics"]["accuracy"]
        assert x["software_metrics"]["loss"] == pytest.approx(y["software_metrics"]["loss"], abs=1e-5)
    cli.main(["search", "--config", str(cfg), "--checkpoint", str(ck), "--out", str(tmp_path / "auto"),
              "--no-progress"])  # fmt: skip
    assert torch.get_num_threads() == 1  # jsc-tiny: the auto policy


def test_threads_config_key_precedence_and_restoring_in_the_library(tmp_path, restore_threads):
    from types import SimpleNamespace

    from qfx.search.config import load_config
    from qfx.search.metrics import Metric, register_metric, unregister_metric
    from qfx.search.session import run_search, with_overrides

    cfg = load_config("jsc_tiny_by_type", require_search=True).model_copy(update={"threads": 2})
    model = build_model("jsc-s", 16, 5)
    for flag, want in ((None, 2), (1, 1)):  # --threads beats the config key, which beats the model-size rule
        cli._threads(SimpleNamespace(threads=flag), model, cfg)
        assert torch.get_num_threads() == want
    cli._threads(SimpleNamespace(threads=None), model, cfg.model_copy(update={"threads": None}))
    assert torch.get_num_threads() == auto_threads(model)
    torch.set_num_threads(1)
    register_metric(Metric("threads_seen", "hardware", "minimize", "torch threads during evaluation",
                           lambda ctx: float(torch.get_num_threads())))  # fmt: skip
    try:
        metrics = {"accuracy": {"scale": 1.0}, "threads_seen": {"scale": 0.0}}
        strategy = cfg.search.strategy.model_validate({**cfg.search.strategy.model_dump(), "metrics": metrics})
        cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"strategy": strategy})})
        run = run_search(with_overrides(cfg, n_trials=2, sampler="random"))
    finally:
        unregister_metric("threads_seen")
    assert {record_of(t).hardware_metrics["threads_seen"] for t in run.study.trials} == {2.0}
    assert torch.get_num_threads() == 1  # the library restored the caller's setting
