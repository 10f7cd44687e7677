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


def test_beside_runs_the_job_on_another_process_and_reruns_it_here_when_that_fails(tmp_path, monkeypatch):
    import os

    from qfx.graph.fork import beside

    here = os.getpid()

    def job(path):
        def run():
            path.write_text(str(os.getpid()))

        return run

    beside(job(tmp_path / "a")).wait()
    assert int((tmp_path / "a").read_text()) != here  # run in the forked child

    def fails_away():
        if os.getpid() != here:
            raise RuntimeError("child")
        (tmp_path / "b").write_text(str(os.getpid()))

    with beside(fails_away):
        pass
    assert int((tmp_path / "b").read_text()) == here  # the child failed: run again here, nothing lost

    def slow():
        import time

        time.sleep(30)
        (tmp_path / "d").write_text("late")

    b = beside(slow)
    pid = b.pid
    with pytest.raises(KeyError), b:  # the caller failed: the child is stopped and reaped, the job not rerun
        raise KeyError("caller")
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not (tmp_path / "d").exists()

    import qfx.graph.fork as F

    def stuck_away():
        if os.getpid() != here:
            import time

            time.sleep(60)  # as if blocked on a lock another thread held at fork time
        (tmp_path / "e").write_text(str(os.getpid()))

    monkeypatch.setattr(F, "PATIENCE", (0.3, 0.0))
    b = beside(stuck_away)
    pid = b.pid
    b.wait()  # stopped after 0.3 s, written here
    assert int((tmp_path / "e").read_text()) == here
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

    monkeypatch.delattr(os, "fork")
    b = beside(job(tmp_path / "c"))
    assert not (tmp_path / "c").exists()  # without fork the job runs when waited for
    b.wait()
    assert int((tmp_path / "c").read_text()) == here


def test_big_graph_save_writes_its_hooks_files_from_a_child_exactly_as_in_turn(tmp_path, monkeypatch):
    import importlib
    import os

    import torch

    from qfx.passes.analysis import analyze
    from qfx.passes.transforms.quantize import QuantizePass

    T = importlib.import_module("qfx.graph.trace")  # the module (qfx.graph.trace is also the function's name)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    q = QuantizePass({"by": "type", "linear": {"name": "integer", "weight_width": 4}})(
        analyze(T.trace(m, torch.randn(2, 8)))
    ).graph
    q.save(tmp_path / "inline")
    here, wrote = os.getpid(), []
    monkeypatch.setattr(T, "FORK_NODES", 0)
    monkeypatch.setattr(T, "SAVE_HOOKS", [*T.SAVE_HOOKS, lambda g, d: (d / "pid").write_text(str(os.getpid()))])
    q.save(tmp_path / "forked")
    assert int((tmp_path / "forked" / "pid").read_text()) != here  # the hooks ran in the child
    a = torch.load(tmp_path / "inline" / "quantized.pt", weights_only=True)
    b = torch.load(tmp_path / "forked" / "quantized.pt", weights_only=True)
    assert a["manifest"] == b["manifest"] and a["tensors"].keys() == b["tensors"].keys()
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])

    def child_fails(g, d):
        if os.getpid() != here:
            raise RuntimeError("child")
        wrote.append(d)

    monkeypatch.setattr(T, "SAVE_HOOKS", [child_fails])
    q.save(tmp_path / "again")
    assert wrote == [tmp_path / "again"]  # rerun here: nothing lost


def test_compact_json_writes_what_json_dumps_writes():
    import json
    import math

    from qfx.graph.trace import compact_json

    obj = {"a": [1, 2.5, -0.0, 1e-300, 12345678901234567890], "b": (True, None), "c": {"d": math.inf, "e": -math.inf},
           "n": math.nan, "s": 'quote " back \\ tab \t nl \n', 7: "int key"}  # fmt: skip
    assert compact_json(obj) == json.dumps(obj, separators=(",", ":")).encode()
    assert json.loads(compact_json({"é": "ü"})) == {"é": "ü"}  # non-ASCII: UTF-8 rather than escapes
