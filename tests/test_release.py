"""Release checks: every README command runs, every config validates and dry-runs, help texts, CI."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from search_helpers import ROOT, blocks, commands

from qfx import cli
from qfx.search.config import load_config
from qfx.search.learn import run_learn
from qfx.search.session import build_search, prepare
from qfx.search.study import run_study

SETUP, TEST = commands()[0], commands()[1]


def small(cmd: str) -> str:
    """The same command on small settings."""
    cmd = re.sub(r"--epochs \d+", "--epochs 3", cmd)
    cmd = re.sub(r"--n-trials \d+", "--n-trials 3", cmd)
    cmd = re.sub(r"--repeats \d+", "--repeats 1", cmd)
    if " search " in cmd and "--n-trials" not in cmd:
        cmd += " --n-trials 3"
    if "compare-samplers" in cmd:
        cmd += " --n-trials 6"
    # the README's FPGA block says so: 3 trials and the smallest of them (synthesis time grows with the LUTs)
    cmd = re.sub(r'--pick "[^"]*"', '--pick "min:fpga_luts"', cmd)
    long_running = (" search ", "compare-samplers", " train ", " learn ")
    return cmd + " --no-progress" if any(k in cmd for k in long_running) else cmd


def test_readme_has_two_commands_and_ci_runs_the_test_command():
    assert "pip install torch==2.13.0" in SETUP and SETUP.endswith("&& qfx search --config jsc_tiny_by_type")
    assert "pytest" in TEST
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST in ci and "pip install -q torch==2.13.0" in ci and "-e '.[dev,deploy,debug]'" in ci


@pytest.mark.slow  # every README command, hls4ml export included
def test_readme_cli_commands_run(tmp_path):
    """From an empty directory: configs by name, the installed console script."""
    qfx = shlex.quote(str(Path(sys.executable).parent / "qfx"))
    ran = 0
    for cmd in commands()[2:]:
        if not cmd.startswith("qfx "):
            continue
        if "postgresql://" in cmd:
            continue  # run against a real server in test_postgres_workers
        if " view " in cmd:
            continue  # starts a server until Ctrl-C: test_debug starts it on a free port and stops it
        c = qfx + small(cmd)[3:]
        r = subprocess.run(["bash", "-c", c], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{c}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        ran += 1
    assert ran >= 12
    written = [  # every file the README says these commands write
        "runs/toy-search/best.json", "runs/toy.db", "runs/toy.log", "runs/toy-q/quantized/graph.json",
        "runs/toy-deploy/qonnx/model_clean.onnx", "runs/toy-deploy/onnx-qdq/status.json",
        "runs/toy-deploy/torch/quantized.pt", "runs/toy-debug/numerics.json", "runs/toy-debug/sqnr.png",
        "runs/toy-sens/sensitivity.png", "outputs/jsc_s_fpga/best.json", "outputs/jsc_s_fpga/best_model/graph.json",
        "outputs/jsc_s_fpga/outputs.json", "rtl/verilog/src/qfx_model.v", "rtl/verilog/status.json",
        "outputs/jsc_s_fpga/best_model/synth/yosys_stat.txt", "outputs/jsc_s_learned/front.json",
        "outputs/jsc_s_learned/front.png", "outputs/jsc_s_learned/best/graph.json", "rtl-learned/verilog/status.json",
        "rtl-200mhz/verilog/ports.json", "rtl-200mhz/verilog/tb/qfx_model_tb.v",
        "outputs/jsc_s_fpga_clocked/best.json",
    ]  # fmt: skip
    missing = [f for f in written if not (tmp_path / f).is_file()]
    assert not missing, missing
    assert json.loads((tmp_path / "rtl/verilog/status.json").read_text())["state"] == "verified"
    assert "pick" in json.loads((tmp_path / "outputs/jsc_s_fpga/best.json").read_text())["0"]
    assert json.loads((tmp_path / "rtl-learned/verilog/status.json").read_text())["state"] == "verified"
    assert json.loads((tmp_path / "rtl-200mhz/verilog/ports.json").read_text())["clock"]["period_ns"] == 5


def test_every_readme_fence_is_run_or_code():
    """A shell command in a fence the README test does not run (the old ```bash FPGA block) cannot hide."""
    langs = set(re.findall(r"^```(\w*)$", (ROOT / "README.md").read_text(), re.M)) - {""}
    assert langs <= {"sh", "bash", "python", "toml", "text"}, langs


def test_readme_python_example_runs(capsys):
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "QLinear" in out and "total:" in out


CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_required_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"jsc_tiny_by_type", "jsc_toy_by_name", "digits_mlp_mixed", "cnn_by_type", "mase_lab3_jsc"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_and_dry_runs(tmp_path, path):
    if "[learn]" in path.read_text():
        cfg = load_config(path)
        cfg = cfg.model_copy(update={"max_epochs": 1, "learn": cfg.learn.model_copy(update={"epochs": 2})})
        if cfg.learn_search is not None:  # trials: 2 of them, 2 epochs each
            from qfx.search.learn_trials import run_learn_search

            ls = cfg.learn_search.model_copy(update={"n_trials": 2, "epochs": [2]})
            run = run_learn_search(cfg.model_copy(update={"learn_search": ls}), None, tmp_path, progress=False,
                                   say=lambda _: None)  # fmt: skip
            assert run.points and (tmp_path / "trials.json").is_file()
            return
        run = run_learn(cfg, None, tmp_path, progress=False, say=lambda _: None)
        assert run.points and (tmp_path / "best" / "graph.json").is_file()
        return
    cfg = load_config(path, require_search=True)
    cfg = cfg.model_copy(update={"max_epochs": 1, "load_name": None})
    prep = prepare(cfg, None, tmp_path, progress=False)
    space, ev = build_search(cfg, prep)
    assert space.size >= 2 and space.free_dims
    setup = cfg.search.strategy.setup.model_copy(update={"n_trials": 2})
    st, _ = run_study(space, ev, cfg.search.strategy.metrics, setup, tmp_path / "o", progress=False)
    assert sum(t.state.name == "COMPLETE" for t in st.trials) == 2
    if cfg.passes.quantize is not None:
        from qfx.passes.transforms.quantize import QuantizePass

        assert QuantizePass(cfg.passes.quantize)(prep.graph).modified


@pytest.mark.parametrize("cmd", ["", "analyze", "train", "eval", "transform", "search", "compare-samplers"])
def test_help_is_complete(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"] if cmd else ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and len(out) > 300
    if cmd in ("search", "compare-samplers"):
        assert "--config" in out and "--checkpoint" in out and "--out" in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["eval", "--checkpoint", "/nonexistent"], "does not exist"),
        (["analyze", "--model", "resnet"], "unknown model 'resnet'"),
        (["train", "--model", "jsc-tiny", "--dataset", "jsc:/no/such.h5", "--out", "x"], "no such file"),
        (["analyze", "--model", "nosuchmod:fn"], "cannot import"),
    ],
)
def test_errors_one_line_and_hint(argv, msg, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "hint:" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3


def example_model():
    """Used by the analyze module:function test."""
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), torch.randn(2, 4)


def test_analyze_module_function_json(capsys):
    assert cli.main(["analyze", "--model", "test_release:example_model", "--format", "json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["params"] == 15 and data["totals"]["macs"] == 2 * 4 * 3


class _Evil:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _evil_checkpoint(path, marker):
    import torch

    torch.save({"model": "jsc-tiny", "dataset": "digits", "seed": 0, "state_dict": {}, "x": _Evil(str(marker))}, path)


def test_malicious_checkpoint_never_runs(tmp_path):
    """eval / search --checkpoint / transform / a planted OUT/baseline/model.pt: refused, marker never appears."""
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    ck = tmp_path / "evil.pt"
    _evil_checkpoint(ck, marker)
    out = tmp_path / "o"
    (out / "baseline").mkdir(parents=True)
    _evil_checkpoint(out / "baseline" / "model.pt", marker)
    cfg = ROOT / "configs" / "jsc_tiny_by_type.toml"
    runs = [
        ["eval", "--checkpoint", str(ck)],
        ["analyze", "--checkpoint", str(ck)],
        [
            "search",
            "--config",
            str(cfg),
            "--checkpoint",
            str(ck),
            "--n-trials",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ],
        ["transform", "--config", str(ROOT / "configs" / "jsc_toy_by_name.toml"), "--checkpoint", str(ck)],
        ["search", "--config", str(cfg), "--n-trials", "1", "--no-progress", "--out", str(out)],
    ]
    for args in runs:
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "refusing to load" in r.stderr and "--trust-checkpoint" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not marker.exists(), args


def test_graph_load_refuses_pickled_model_and_unknown_code(tmp_path):
    import torch

    from qfx.graph import QGraph
    from qfx.graph.serialize import SerializationError

    marker = tmp_path / "pwned"
    d = tmp_path / "legacy"
    d.mkdir()
    torch.save(_Evil(str(marker)), d / "model.pt")
    (d / "meta.json").write_text('{"nodes": []}')
    torch.save((), d / "inputs.pt")
    with pytest.raises(SerializationError, match="pickled GraphModule.*trust=True"):
        QGraph.load(d)
    # a graph.json naming a dangerous function is refused by the allowlist
    import json

    from qfx.graph import trace
    from qfx.zoo.models import build_model

    g = trace(build_model("jsc-tiny", 16, 5), torch.randn(4, 16))
    g.save(tmp_path / "g")
    spec = json.loads((tmp_path / "g" / "graph.json").read_text())
    spec["nodes"].insert(
        1,
        {
            "name": "boom",
            "op": "call_function",
            "target": {"fn": "os.system"},
            "args": {"t": ["touch " + str(marker)]},
            "kwargs": {"d": {}},
        },
    )
    (tmp_path / "g" / "graph.json").write_text(json.dumps(spec))
    with pytest.raises(SerializationError, match="'os.system' is not on the allowlist"):
        QGraph.load(tmp_path / "g")
    (tmp_path / "g" / "weights.safetensors").unlink()  # an older directory: weights.pt, read weights-only
    torch.save({"w": _Evil(str(marker))}, tmp_path / "g" / "weights.pt")
    with pytest.raises(SerializationError, match="unsafe"):
        QGraph.load(tmp_path / "g")
    assert not marker.exists()
