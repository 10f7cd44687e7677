"""Search results by configuration: a sampler that draws the same configuration again gets it reported once
(with how many trials drew it), one graph per distinct configuration, SQNR plots for a handful only."""

from __future__ import annotations

import json

import pytest
from search_helpers import make_checkpoint, search_toml

from qfx import cli
from qfx.search.study import MAX_SQNR_PLOTS

SMALL_SPACE = """
[search.search_space.seed.default.config]
name = ["NA"]

[search.search_space.seed.linear.config]
name = ["integer"]
data_in_width = [8]
weight_width = [2, 4, 8]
bias_width = [8]
"""


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "ck", epochs=3)


@pytest.mark.parametrize("single", [True, False])
def test_repeated_configurations_are_reported_once(ck, tmp_path, capsys, monkeypatch, single):
    from qfx.search import outputs

    drawn: list[list[str]] = []
    real = outputs.plot_sqnr
    monkeypatch.setattr(outputs, "plot_sqnr", lambda g, *a, **k: drawn.append(list(g)) or real(g, *a, **k))
    cfg = tmp_path / "s.toml"
    # 3 points, 24 random trials: every configuration is drawn several times
    cfg.write_text(search_toml("random", 24, single=single, space=SMALL_SPACE, num_samples=64))
    out = tmp_path / "out"
    assert cli.main(["search", "--config", str(cfg), "--checkpoint", str(ck), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    best = json.loads((out / "best.json").read_text())
    configs = [json.dumps(b["sampled_config"], sort_keys=True) for b in best.values()]
    assert len(configs) == len(set(configs)) >= 1  # each configuration once
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    for b in best.values():
        same = [t["number"] for t in trials if t["sampled_config"] == b["sampled_config"] and t["state"] == "COMPLETE"]
        assert b["trials"] == len(same) >= 1 and sorted(b["trial_numbers"]) == sorted(same)
    assert sum(b["trials"] for b in best.values()) > len(best) or single  # repeats were drawn and folded
    graphs = [p.parent for p in out.rglob("graph.json")]
    assert len(graphs) == len(best)  # one saved graph per distinct best configuration
    plots = list(out.glob("sqnr*.png"))
    assert [p.name for p in plots] == ["sqnr.png"]  # one plot: the first MAX_SQNR_PLOTS configurations in it
    assert drawn == [[f"trial {b['number']}" for b in list(best.values())[:MAX_SQNR_PLOTS]]]
    rows = [line for line in printed.split("Best trial(s):")[1].splitlines() if line.startswith("|")][1:]
    assert len([r for r in rows if not r.startswith("|--")]) == len(best)
    last = printed.strip().splitlines()[-1]
    for name in ("best.json", "trials.jsonl", "best_model/", *(p.name for p in plots)):
        assert name in last, last  # the final line lists every file written


def test_beside_runs_the_job_in_a_thread_and_raises_its_error_where_waited(tmp_path):
    import threading

    from qfx.graph.background import Beside, beside

    def job(path):
        def run():
            path.write_text(threading.current_thread().name)

        return run

    beside(job(tmp_path / "a")).wait()
    assert (tmp_path / "a").read_text() == "qfx-beside"  # a worker thread of this process, never a child

    def fails():
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError, match="job failed"), beside(fails):
        pass
    with pytest.raises(KeyError), beside(fails):  # the caller's own error wins over the job's
        raise KeyError("caller")
    b = Beside(job(tmp_path / "c"), thread=False)
    assert not (tmp_path / "c").exists()  # not threaded: the job runs when waited for
    b.wait()
    assert (tmp_path / "c").read_text() == threading.current_thread().name


def test_big_graph_save_writes_its_hooks_files_from_a_thread_exactly_as_in_turn(tmp_path, monkeypatch):
    import importlib
    import threading

    import torch

    from qfx.passes.analysis import analyze
    from qfx.passes.transforms.quantize import QuantizePass

    T = importlib.import_module("qfx.graph.trace")  # the module (qfx.graph.trace is also the function's name)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    q = QuantizePass({"by": "type", "linear": {"name": "integer", "weight_width": 4}})(
        analyze(T.trace(m, torch.randn(2, 8)))
    ).graph
    q.save(tmp_path / "inline")
    monkeypatch.setattr(T, "FORK_NODES", 0)
    hook = lambda g, d: (d / "thread").write_text(threading.current_thread().name)  # noqa: E731
    monkeypatch.setattr(T, "SAVE_HOOKS", [*T.SAVE_HOOKS, hook])
    q.save(tmp_path / "threaded")
    assert (tmp_path / "threaded" / "thread").read_text() == "qfx-beside"
    a = torch.load(tmp_path / "inline" / "quantized.pt", weights_only=True)
    b = torch.load(tmp_path / "threaded" / "quantized.pt", weights_only=True)
    assert a["manifest"] == b["manifest"] and a["tensors"].keys() == b["tensors"].keys()
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])


def test_no_fork_in_the_package():
    """The package never forks (a library lives in other people's threaded processes)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hits = []
    for f in root.rglob("*.py"):
        if any(p in f.parts for p in (".venv", "tests", "bench")):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("fork", "forkpty")
                and getattr(node.value, "id", "") == "os"
            ):
                hits.append(f"{f}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "multiprocessing" in ast.dump(node):
                hits.append(f"{f}:{node.lineno}")
    assert not hits, hits


def test_search_and_save_complete_beside_a_thread_holding_a_lock(tmp_path):
    """Run from a worker thread while another live thread holds a lock (what deadlocked forked children)."""
    import importlib
    import threading

    from qfx.search.config import load_config
    from qfx.search.session import run_search

    T = importlib.import_module("qfx.graph.trace")
    held, release = threading.Lock(), threading.Event()

    def holder():
        with held:
            release.wait(120)

    h = threading.Thread(target=holder, daemon=True)
    h.start()
    results = {}

    def work():
        cfg = load_config("jsc_tiny_by_type", require_search=True)
        cfg = cfg.model_copy(update={"max_epochs": 1})
        run = run_search(cfg, None, tmp_path / "s", n_trials=3, progress=False)
        g = run.prep.graph
        old = T.FORK_NODES
        T.FORK_NODES = 0  # the threaded save path, whatever the size
        try:
            g.save(tmp_path / "g")
        finally:
            T.FORK_NODES = old
        results["ok"] = (tmp_path / "s" / "best.json").is_file() and (tmp_path / "g" / "graph.json").is_file()

    w = threading.Thread(target=work)
    w.start()
    w.join(300)
    release.set()
    assert not w.is_alive() and results.get("ok"), results


def test_compact_json_writes_what_json_dumps_writes():
    import json
    import math

    from qfx.graph.trace import compact_json

    obj = {"a": [1, 2.5, -0.0, 1e-300, 12345678901234567890], "b": (True, None), "c": {"d": math.inf, "e": -math.inf},
           "n": math.nan, "s": 'quote " back \\ tab \t nl \n', 7: "int key"}  # fmt: skip
    assert compact_json(obj) == json.dumps(obj, separators=(",", ":")).encode()
    assert json.loads(compact_json({"é": "ü"})) == {"é": "ü"}  # non-ASCII: UTF-8 rather than escapes
