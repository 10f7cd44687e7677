"""A corpus of bad inputs (configs, data files, checkpoints, command lines), one parametrised test.

Each must exit non-zero with one ``error:`` line naming the problem (plus an optional ``hint:``), no
traceback; or be accepted for the reason stated in the case (``ACCEPT: why``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from search_helpers import ROOT, make_checkpoint, search_toml

from qfx import cli

BASE = search_toml(n_trials=1, num_samples=32)


def sub(old: str, new: str, base: str = BASE) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def add_top(line: str) -> str:
    return line + "\n" + BASE


# (id, config text or None, extra CLI args or a builder, expected text in the error / "ACCEPT: reason")
CONFIG_CASES = [
    ("float-width", sub("weight_width = [2, 4, 8]", "weight_width = [4.5, 8]"), "weight_width: invalid choice 4.5"),
    ("zero-width", sub("weight_width = [2, 4, 8]", "weight_width = [0, 4]"), "weight_width: invalid choice 0"),
    ("huge-width", sub("weight_width = [2, 4, 8]", "weight_width = [100]"), "weight_width: invalid choice 100"),
    (
        "frac-over-width",
        sub('weight_frac_width = ["NA"]', "weight_frac_width = [9]"),
        "weight_frac_width: choice 9 does not fit every weight_width choice",
    ),
    ("negative-frac", sub('weight_frac_width = ["NA"]', "weight_frac_width = [-1]"), "weight_frac_width: invalid"),
    ("string-width", sub("weight_width = [2, 4, 8]", 'weight_width = ["eight", 4]'), "invalid choice 'eight'"),
    (
        "minifloat-exponent",
        sub(
            'name = ["integer"]\ndata_in_width',
            'name = ["minifloat"]\nweight_exponent_width = [9]\ndata_in_width',
        )
        .replace('data_in_frac_width = ["NA"]\n', "")
        .replace('weight_frac_width = ["NA"]\n', "")
        .replace('bias_frac_width = ["NA"]\n', ""),
        "weight_exponent_width: choice 9 does not fit",
    ),
    ("bypass-string", sub('name = ["integer"]\n', 'name = ["integer"]\nbypass = ["yes"]\n'), "bypass: invalid"),
    ("unknown-format", sub('name = ["integer"]', 'name = ["int8"]'), "unknown format 'int8'"),
    ("unknown-field", sub("weight_width = [2", "wieght_width = [2"), "wieght_width: unknown field"),
    ("empty-choices", sub("weight_width = [2, 4, 8]", "weight_width = []"), "is an empty choice list"),
    ("scalar-choice", sub("weight_width = [2, 4, 8]", "weight_width = 8"), "weight_width"),
    ("unknown-top-key", add_top("modle = 'x'"), "key 'modle': unknown key"),
    ("unknown-model", sub('model = "jsc-tiny"', 'model = "resnet"'), "unknown model 'resnet'"),
    ("task", add_top('task = "seg"'), "key 'task'"),
    ("max-epochs-0", sub("max_epochs = 5", "max_epochs = 0"), "max_epochs"),
    ("sampler", sub('sampler = "bruteforce"', 'sampler = "annealing"'), "unknown sampler 'annealing'"),
    ("n-trials-0", sub("n_trials = 1", "n_trials = 0"), "n_trials"),
    ("n-jobs-0", sub("n_trials = 1", "n_trials = 1\nn_jobs = 0"), "n_jobs"),
    ("timeout-neg", sub("n_trials = 1", "n_trials = 1\ntimeout = -1"), "timeout"),
    ("direction", sub('direction = "maximize"', 'direction = "up"'), "direction"),
    ("metric-name", sub("accuracy.scale = 1.0", "acc.scale = 1.0"), "unknown metric(s) ['acc']"),
    ("metric-dir", sub('average_bitwidth.direction = "minimize"', 'average_bitwidth.direction = "down"'), "direction"),
    ("data-loader", sub('data_loader = "val_dataloader"', 'data_loader = "holdout"'), "data_loader"),
    ("num-samples-0", sub("num_samples = 32", "num_samples = 0"), "num_samples"),
    ("by-layer", sub('by = "type"', 'by = "layer"'), "key 'search.search_space.setup.by'"),
    (
        "seed-no-config",
        sub("[search.search_space.seed.linear.config]", "[search.search_space.seed.linear]"),
        "seed.linear",
    ),
    ("seed-type-lstm", sub("seed.linear.config", "seed.lstm.config"), "seed 'lstm': not a quantizable op type"),
    ("space-name", sub('name = "graph/quantize/mixed_precision_ptq"', 'name = "nas"'), "search.search_space.name"),
    ("toml-syntax", BASE + "\n[[[broken", "invalid TOML"),
    ("accelerator", add_top('accelerator = "tpu"'), "accelerator"),
    ("strategy-name", sub('name = "optuna"', 'name = "ray"'), "search.strategy.name"),
    (
        "compare-to-0",
        BASE + "\n[search.strategy.hw_runner.average_bitwidth]\ncompare_to = 0\n",
        "compare_to",
    ),
    ("latency-repeats-0", BASE + "\n[search.strategy.sw_runner.latency]\nrepeats = 0\n", "repeats"),
    ("qat-steps-neg", BASE + "\n[search.strategy.sw_runner.qat]\nsteps = -1\n", "steps"),
    ("lr-0", add_top("learning_rate = 0"), "learning_rate"),
    ("threads-huge", add_top("threads = 100000"), "threads"),  # torch.set_num_threads(100000) segfaults
    (
        "nan-budget",
        BASE + "\n[search.strategy.constraints]\naverage_bitwidth.max = nan\n",
        "average_bitwidth.max",
    ),
    ("no-search-section", 'model = "jsc-tiny"\n', "no [search] section"),
    (
        "empty-metrics",
        sub("accuracy.scale = 1.0\naverage_bitwidth.scale = -0.01", "", BASE).replace(
            'average_bitwidth.direction = "minimize"', ""
        ),
        "metrics",
    ),
    ("load-name-missing", add_top('load_name = "/nonexistent/ck.pt"'), "does not exist"),
    (
        "grid-too-large",
        sub(
            'sampler = "bruteforce"',
            'sampler = "grid"',
            search_toml(
                n_trials=1,
                num_samples=32,
                by="name",
                space="""
[search.search_space.seed.default.config]
name = ["integer"]
data_in_width = [2, 3, 4, 5, 6, 7, 8]
weight_width = [2, 3, 4, 5, 6, 7, 8]
bias_width = [2, 3, 4, 5, 6, 7, 8]
""",
            ),
        ),
        "sampler 'grid' would materialise",
    ),
    (
        "duplicate-choices",
        sub("weight_width = [2, 4, 8]", "weight_width = [2, 4, 4, 8]"),
        "ACCEPT: duplicate choices are merged with a note (the space is the same)",
    ),
    (
        "weight-field-on-relu",
        BASE.replace(
            "[search.search_space.seed.linear.config]",
            '[search.search_space.seed.relu.config]\nname = ["integer"]\nweight_width = [4, 8]\n'
            "[search.search_space.seed.linear.config]",
        ),
        "ACCEPT: a ReLU has no weight: the field is dropped from the space with a note",
    ),
]

TRANSFORM_CASES = [
    (
        "quantize-unknown-key",
        'model = "jsc-tiny"\n[passes.quantize]\nby = "type"\n[passes.quantize.linear.config]\nname = "integer"\n'
        "wieght_width = 8\n",
        "wieght_width",
    ),
    (
        "quantize-frac-over-width",
        'model = "jsc-tiny"\n[passes.quantize]\nby = "type"\n[passes.quantize.linear.config]\nname = "integer"\n'
        "data_in_width = 8\ndata_in_frac_width = 9\n",
        "data_in_frac_width=9 must be in 0..data_in_width",
    ),
    ("no-quantize-section", 'model = "jsc-tiny"\n', "no [passes.quantize] section"),
    (
        "quantize-unknown-node",
        'model = "jsc-tiny"\n[passes.quantize]\nby = "name"\n[passes.quantize.fc9.config]\nname = "integer"\n',
        "unknown node(s) ['fc9']",
    ),
]


def _files(tmp: Path) -> dict[str, Path]:
    f = {}
    f["binary"] = tmp / "binary.toml"
    f["binary"].write_bytes(b"\x80\x81\xff\x00model")
    f["garbage_ck"] = tmp / "garbage.pt"
    f["garbage_ck"].write_bytes(b"not a checkpoint at all")
    f["one_row"] = tmp / "one_row.csv"
    from qfx.zoo.data import JSC_FEATURES

    f["one_row"].write_text(",".join(JSC_FEATURES) + ",class\n" + ",".join("1" for _ in JSC_FEATURES) + ",g\n")
    f["bad_cols"] = tmp / "bad_cols.csv"
    f["bad_cols"].write_text("a,b,class\n1,2,g\n")
    f["not_h5"] = tmp / "notes.h5"
    f["not_h5"].write_text("hello")
    f["dir_cfg"] = tmp / "cfgdir"
    f["dir_cfg"].mkdir()
    import torch

    from qfx.graph import trace
    from qfx.zoo.models import build_model

    f["graph64"] = trace(build_model("jsc-tiny", 64, 10), torch.randn(8, 64)).save(tmp / "graph64")
    (tmp / "factories.py").write_text(
        "import torch\n"
        "def pair():\n    return (1, 2)\n"
        "def noinputs():\n    return torch.nn.Linear(2, 2)\n"
        "def notmodel():\n    return 'model'\n"
        "def badinputs():\n    return torch.nn.Linear(2, 2), 'x'\n"
    )
    return f


def cli_cases(ck: Path, f: dict[str, Path], tmp: Path) -> list[tuple[str, list[str], str]]:
    cfg = str(ROOT / "configs" / "jsc_tiny_by_type.toml")
    s = ["search", "--config", cfg, "--checkpoint", str(ck), "--no-progress", "--out", str(tmp / "o")]
    return [
        ("train-epochs-neg", ["train", "--model", "jsc-tiny", "--epochs", "-1", "--out", str(tmp / "t")], "--epochs"),
        ("train-batch-0", ["train", "--model", "jsc-tiny", "--batch-size", "0", "--out", str(tmp / "t")], "--batch"),
        ("train-lr-0", ["train", "--model", "jsc-tiny", "--lr", "0", "--out", str(tmp / "t")], "--lr"),
        ("train-epochs-text", ["train", "--model", "jsc-tiny", "--epochs", "ten", "--out", str(tmp / "t")], "'ten'"),
        ("compare-repeats-0", ["compare-samplers", "--config", cfg, "--repeats", "0"], "--repeats"),
        ("compare-samplers-empty", ["compare-samplers", "--config", cfg, "--samplers", ""], "--samplers"),
        ("compare-samplers-bogus", ["compare-samplers", "--config", cfg, "--samplers", "tpe,x"], "--samplers 'x'"),
        ("compare-tolerance-nan", ["compare-samplers", "--config", cfg, "--tolerance", "nan"], "--tolerance"),
        ("sensitivity-widths", ["sensitivity", "--config", cfg, "--widths", "abc"], "--widths"),
        ("sensitivity-widths-99", ["sensitivity", "--config", cfg, "--widths", "4,99"], "--widths"),
        ("threads-huge", ["--threads", "100000", "analyze", "--model", "jsc-tiny"], "--threads"),
        ("search-export-bogus", [*s, "--export", "bogus"], "--export"),  # refused before the search
        (
            "debug-data-features",
            ["debug", "--graph", str(f["graph64"]), "--data", "iris", "--out", str(tmp / "d")],
            "--data iris: rows of shape (4,) do not fit the graph's input of shape (64,)",
        ),
        ("search-n-trials-0", [*s, "--n-trials", "0"], "--n-trials"),
        ("search-sampler", [*s, "--sampler", "foo"], "--sampler: unknown sampler 'foo'"),
        ("search-n-jobs-0", [*s, "--n-jobs", "0"], "--n-jobs"),
        ("search-timeout-0", [*s, "--timeout", "0"], "--timeout"),
        ("storage-scheme", [*s, "--n-trials", "1", "--storage", "bogus://x"], "--storage 'bogus://x'"),
        (
            "storage-sqlite-dir",
            [*s, "--n-trials", "1", "--storage", "sqlite:////nonexistent/dir/x.db"],
            "--storage 'sqlite:////nonexistent/dir/x.db'",
        ),
        ("config-binary", ["search", "--config", str(f["binary"])], "not a text TOML file"),
        ("config-missing", ["search", "--config", str(tmp / "missing.toml")], "no such config file"),
        ("config-dir", ["search", "--config", str(f["dir_cfg"])], "is a directory"),
        ("export-format", ["export", "--graph", str(tmp), "--format", "tflite", "--out", str(tmp)], "tflite"),
        (
            "export-graph-missing",
            ["export", "--graph", str(tmp / "nope"), "--format", "torch", "--out", str(tmp)],
            "missing",
        ),
        ("analyze-model", ["analyze", "--model", "resnet"], "unknown model 'resnet'"),
        ("factory-pair", ["analyze", "--model", "factories:pair"], "returned a tuple of 2 (int, int)"),
        ("factory-noinputs", ["analyze", "--model", "factories:noinputs"], "without example inputs"),
        ("factory-notmodel", ["analyze", "--model", "factories:notmodel"], "returned str, not an nn.Module"),
        ("factory-badinputs", ["analyze", "--model", "factories:badinputs"], "example inputs must be tensors"),
        ("factory-import", ["analyze", "--model", "nosuchmodule:f"], "cannot import 'nosuchmodule:f'"),
        ("eval-missing", ["eval", "--checkpoint", str(tmp / "none.pt")], "does not exist"),
        ("eval-garbage", ["eval", "--checkpoint", str(f["garbage_ck"])], "not a checkpoint"),
        (
            "data-missing",
            ["train", "--model", "jsc-tiny", "--dataset", "jsc:/missing.h5", "--out", str(tmp / "t")],
            "no such file",
        ),
        (
            "data-one-row",
            ["train", "--model", "jsc-tiny", "--dataset", f"jsc:{f['one_row']}", "--out", str(tmp / "t")],
            "1 distinct row(s)",
        ),
        (
            "data-columns",
            ["train", "--model", "jsc-tiny", "--dataset", f"jsc:{f['bad_cols']}", "--out", str(tmp / "t")],
            "lacks column(s)",
        ),
        (
            "data-not-h5",
            ["train", "--model", "jsc-tiny", "--dataset", f"jsc:{f['not_h5']}", "--out", str(tmp / "t")],
            "not a readable HDF5 file",
        ),
        (
            "dataset-mismatch",
            [*s[:4], str(tmp / "iris_ck"), *s[5:], "--n-trials", "1"],
            "ACCEPT: a checkpoint trained on iris is evaluated on iris, with a warning naming both datasets",
        ),
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    ck = make_checkpoint(tmp / "ck", epochs=1)
    from qfx.zoo.data import load_dataset
    from qfx.zoo.models import build_model
    from qfx.zoo.train import save_checkpoint

    ds = load_dataset("iris")
    m = build_model("jsc-tiny", ds.num_features, ds.num_classes)
    save_checkpoint(tmp / "iris_ck", m, {"model": "jsc-tiny", "dataset": "iris", "seed": 0, "epochs": 0})
    f = _files(tmp)
    sys.path.insert(0, str(tmp))
    yield tmp, ck, f
    sys.path.remove(str(tmp))


def _run(args: list[str], capsys) -> tuple[int, str]:
    try:
        rc = cli.main(args)
    except SystemExit as e:  # argparse errors
        rc = e.code if isinstance(e.code, int) else 2
    return rc, capsys.readouterr().err


def _judge(rc: int, err: str, expect: str) -> None:
    assert "Traceback" not in err, err
    if expect.startswith("ACCEPT:"):
        assert rc == 0, err
        return
    assert rc != 0, f"accepted silently: {expect}"
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("hint:", "WARNING", "usage:"))]
    assert lines and expect in err, err
    errors = [ln for ln in lines if ln.startswith(("error:", "qfx"))]
    assert len(errors) == 1, err


ALL_IDS = [c[0] for c in CONFIG_CASES] + [c[0] for c in TRANSFORM_CASES]


@pytest.mark.parametrize("case", CONFIG_CASES + TRANSFORM_CASES, ids=ALL_IDS)
def test_bad_config(case, env, capsys):
    tmp, ck, _ = env
    name, text, expect = case
    p = tmp / f"{name}.toml"
    p.write_text(text)
    cmd = "transform" if case in TRANSFORM_CASES else "search"
    args = [cmd, "--config", str(p), "--checkpoint", str(ck), "--out", str(tmp / f"o_{name}"), "--no-progress"]
    if name == "load-name-missing":
        args.remove("--checkpoint")
        args.remove(str(ck))
    _judge(*_run(args, capsys), expect)


def test_bad_cli_and_data(env, capsys):
    tmp, ck, f = env
    cases = cli_cases(ck, f, tmp)
    assert len(CONFIG_CASES) + len(TRANSFORM_CASES) + len(cases) >= 60
    failures = []
    for name, args, expect in cases:
        try:
            _judge(*_run(args, capsys), expect)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)


def test_memory_error_and_all_trials_failing(env, capsys, monkeypatch):
    tmp, ck, _ = env
    from qfx.search.runner import Evaluator

    def boom(self, config):
        raise RuntimeError("simulated evaluation failure")

    monkeypatch.setattr(Evaluator, "evaluate", boom)
    p = tmp / "fail.toml"
    p.write_text(search_toml(n_trials=3, num_samples=32))
    rc, err = _run(
        ["search", "--config", str(p), "--checkpoint", str(ck), "--out", str(tmp / "f"), "--no-progress"], capsys
    )
    assert rc != 0 and "all 3 trial(s) failed; first error (trial 0): RuntimeError: simulated evaluation failure" in err
    assert "Traceback" not in err
    assert err.count("failed with parameters") == 3 and err.count("simulated evaluation failure") == 4, err
    assert "failed with value None" not in err  # one line per failing trial, plus the summary
    import json

    recs = json.loads((tmp / "f" / "trials.json").read_text())
    assert all("Traceback" in r["error"] for r in recs)

    def oom(self, config):
        raise MemoryError()

    monkeypatch.setattr(Evaluator, "evaluate", oom)
    monkeypatch.setattr("qfx.search.session.run_study", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    rc, err = _run(
        ["search", "--config", str(p), "--checkpoint", str(ck), "--out", str(tmp / "m"), "--no-progress"], capsys
    )
    assert rc == 2 and "error: MemoryError: out of memory" in err, err
