"""Search: spaces, samplers, per-trial isolation, storage/resume, workers, outputs, config errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from search_helpers import ROOT, make_checkpoint, search_toml

from qfx import cli
from qfx.search.config import ConfigError, load_config
from qfx.search.records import config_of
from qfx.search.session import build_search, prepare
from qfx.search.space import SpaceError
from qfx.search.study import run_study, write_outputs


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck"))


def _setup(tmp_path, text, ckpt):
    p = tmp_path / "c.toml"
    p.write_text(text)
    cfg = load_config(p, require_search=True)
    prep = prepare(cfg, str(ckpt), tmp_path, progress=False)
    space, ev = build_search(cfg, prep)
    return cfg, prep, space, ev


def _run(cfg, space, ev, out=None, **kw):
    st = cfg.search.strategy
    return run_study(space, ev, st.metrics, st.setup, out, progress=False, **kw)[0]


def test_space_round_trip_and_by_type_really_quantizes(tmp_path, ckpt):
    cfg, prep, space, ev = _setup(tmp_path, search_toml(), ckpt)
    assert space.size == 18 and set(space.free_dims) == {
        "linear/data_in_width",
        "linear/weight_width",
        "linear/bias_width",
    }
    seen = set()
    for i in range(space.size):
        pt = space.point(i)
        cfg_i = space.to_config(pt)
        assert space.to_point(cfg_i) == pt
        seen.add(json.dumps(cfg_i, sort_keys=True))
    assert len(seen) == 18
    from qfx.passes.transforms.quantize import QuantizePass

    r = QuantizePass(space.to_config(space.point(0)))(prep.graph)
    assert set(r.info["quantized"]) == {"seq_blocks_2"}  # MASE's by-type search quantizes nothing
    res = [ev.evaluate(space.to_config(space.point(i))) for i in (0, 17)]
    assert res[0].hardware["average_bitwidth"] < res[1].hardware["average_bitwidth"]


def test_bruteforce_18_distinct_and_exhaustive_best(tmp_path, ckpt):
    cfg, _, space, ev = _setup(tmp_path, search_toml("bruteforce", 30), ckpt)
    st = _run(cfg, space, ev)
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 18 and len({tuple(sorted(t.params.items())) for t in done}) == 18
    cfg2, _, space2, ev2 = _setup(tmp_path, search_toml("exhaustive", 100), ckpt)
    ex = _run(cfg2, space2, ev2)
    order = [ex.sampler.order(i) for i in range(18)]
    assert sorted(order) == list(range(18)) and order != list(range(18))  # a seeded permutation of the space
    assert len(ex.trials) == 18 and [t.params for t in ex.trials] == [space.params(space.point(i)) for i in order]
    assert st.best_value == ex.best_value


def test_tpe_and_bruteforce_reproducible(tmp_path, ckpt):
    for sampler in ("tpe", "bruteforce"):
        cfg, _, space, ev = _setup(tmp_path, search_toml(sampler, 10), ckpt)
        a, b = _run(cfg, space, ev), _run(cfg, space, ev)
        assert [t.params for t in a.trials] == [t.params for t in b.trials]
        assert [t.values for t in a.trials] == [t.values for t in b.trials]


def test_same_config_same_metrics_regardless_of_order(tmp_path, ckpt):
    _, _, space, ev = _setup(tmp_path, search_toml(), ckpt)
    c0, c5 = space.to_config(space.point(0)), space.to_config(space.point(5))
    first = ev.evaluate(c0)
    ev.evaluate(c5)
    ev.evaluate(space.to_config(space.point(11)))
    again = ev.evaluate(c0)
    assert first.software == again.software and first.hardware == again.hardware
    pristine = [m.to_dict() for m in ev.pristine.metas()]
    assert not any(m["quantized"] for m in pristine)


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsgaii", "nsgaiii", "qmc", "gp", "cmaes", "grid"])
def test_every_sampler_runs_seeded(tmp_path, ckpt, sampler):
    cfg, _, space, ev = _setup(tmp_path, search_toml(sampler, 6), ckpt)
    a = _run(cfg, space, ev)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in a.trials) == 6
    b = _run(cfg, space, ev)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_multi_objective_outputs(tmp_path, ckpt):
    text = search_toml(
        "nsgaii",
        12,
        single=False,
        metrics=(
            'accuracy.scale = 1.0\naccuracy.direction = "maximize"\n'
            'average_bitwidth.scale = 1.0\naverage_bitwidth.direction = "minimize"\n'
            'latency.scale = 1.0\nlatency.direction = "minimize"'
        ),
    )
    out = tmp_path / "out"
    rc = cli.main(
        ["search", "--config", str(_w(tmp_path, text)), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    best = json.loads((out / "best.json").read_text())
    assert best and all(len(b["value"]) == 3 for b in best.values())
    for b in best.values():
        assert {"number", "value", "software_metrics", "hardware_metrics", "scaled_metrics", "sampled_config"} <= set(b)
        assert b["software_metrics"]["latency"] > 0
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 12 and {"accuracy", "average_bitwidth", "memory_density", "bops", "model_size"} <= set(rows[0])
    for png in ("history.png", "pareto.png", "metric_vs_config.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "best_model" / "graph.json").is_file()
    assert len((out / "trials.jsonl").read_text().splitlines()) == 12


def _w(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _default_sigint() -> None:
    """In the child: a shell that starts pytest in the background makes SIGINT ignored, which children
    inherit (and Python then installs no KeyboardInterrupt handler); restore the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _search(cfgp: Path, ckpt: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``cli.py search`` in a subprocess, without progress bars."""
    return _cli("search", "--config", str(cfgp), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *extra)


def _slow_config(tmp_path: Path, text: str, repeats: int) -> Path:
    """``text`` with a latency runner of ``repeats`` timed forwards, so trials take long enough to interrupt."""
    extra = f"[search.strategy.sw_runner.latency]\nrepeats = {repeats}\nbatch_size = 256\n"
    return _w(tmp_path, text.replace("[search.strategy.setup]", extra + "[search.strategy.setup]"))


def _states(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("select number, state from trials order by number").fetchall()


def test_killed_search_resumes_from_sqlite(tmp_path, ckpt):
    space = """
[search.search_space.seed.linear.config]
name = ["integer"]
data_in_width = [2, 3, 4, 5, 6, 7, 8, 9]
weight_width = [2, 3, 4, 5, 6, 7, 8, 9]
"""
    text = search_toml("exhaustive", 40, space=space, metrics="accuracy.scale = 1.0\nlatency.scale = -0.001")
    cfgp = _slow_config(tmp_path, text, 1500)  # ~0.1 s per trial: 40 trials outlast the poll
    db = tmp_path / "s.db"
    args = (cfgp, ckpt, tmp_path / "o", "--storage", f"sqlite:///{db}", "--study-name", "k")
    p = _search(*args)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        if db.exists():
            try:
                if sum(s == "COMPLETE" for _, s in _states(db)) >= 3:
                    break
            except sqlite3.OperationalError:
                pass
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = {n for n, s in _states(db) if s == "COMPLETE"}
    assert 3 <= len(before) < 40, _states(db)
    time.sleep(7)  # let the killed worker's heartbeat go stale
    p2 = _search(*args)
    out, err = p2.communicate(timeout=300)
    assert p2.returncode == 0, err
    st = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    states = [(t.number, t.state.name) for t in st.trials]
    # the killed worker's running trial was failed and re-queued: every one of the 40 points is evaluated
    assert len(done) == 40, (states, err)
    assert before <= {t.number for t in done}  # finished trials kept, not redone
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)


@pytest.mark.parametrize("sampler,storage", [("grid", "sqlite"), ("bruteforce", "journal"), ("exhaustive", "sqlite")])
def test_two_workers_share_storage_without_duplicates(tmp_path, ckpt, sampler, storage):
    n = 12
    cfgp = _w(tmp_path, search_toml(sampler, n))
    url = f"sqlite:///{tmp_path / 'w.db'}" if storage == "sqlite" else f"journal:{tmp_path / 'w.log'}"
    if storage == "sqlite":  # create the schema once so the two workers do not race on it
        optuna.create_study(storage=url, study_name="w", directions=["maximize"])
    ps = [_search(cfgp, ckpt, tmp_path / f"o{i}", "--storage", url, "--study-name", "w") for i in range(2)]
    for p in ps:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    from qfx.search.study import make_storage

    st = optuna.load_study(study_name="w", storage=make_storage(url))
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == n
    assert len({tuple(sorted(t.params.items())) for t in done}) == n


def test_failing_trial_recorded_and_study_continues(tmp_path, ckpt, monkeypatch):
    cfg, _, space, ev = _setup(tmp_path, search_toml("random", 6), ckpt)
    real = ev.evaluate
    calls = {"n": 0}

    def flaky(config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(config)

    monkeypatch.setattr(ev, "evaluate", flaky)
    st = _run(cfg, space, ev)
    states = [t.state.name for t in st.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 5


BAD = [
    (
        "[search.strategy.setup]",
        "[search.strategy.setup]\nn_trails = 3",
        "search.strategy.setup.n_trails': unknown key",
    ),
    ("n_trials = 18", 'n_trials = "many"', "search.strategy.setup.n_trials"),
    ("weight_width = [2, 4, 8]", "weight_width = []", "seed.linear.config.weight_width is an empty choice list"),
    ('sampler = "bruteforce"', 'sampler = "annealing"', "unknown sampler 'annealing'"),
    ("accuracy.scale = 1.0", "acuracy.scale = 1.0", "unknown metric(s) ['acuracy']"),
    ('model = "jsc-tiny"', 'model = "resnet"', "unknown model 'resnet'"),
]


@pytest.mark.parametrize("old,new,msg", BAD)
def test_bad_toml_exits_nonzero_naming_key(tmp_path, capsys, old, new, msg):
    text = search_toml()
    assert old in text
    p = _w(tmp_path, text.replace(old, new, 1))
    rc = cli.main(["search", "--config", str(p), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and str(p) in err and "Traceback" not in err


def test_space_errors_name_the_seed(tmp_path, ckpt):
    bad_field = search_toml().replace("weight_width = [2, 4, 8]", "wieght_width = [2, 4, 8]")
    with pytest.raises(SpaceError, match="seed.linear.config.wieght_width: unknown field"):
        _setup(tmp_path, bad_field, ckpt)
    bad_node = search_toml(by="name").replace("seed.linear.config", "seed.fc9.config")
    with pytest.raises(SpaceError, match="seed 'fc9': no quantizable node.*seq_blocks_2"):
        _setup(tmp_path, bad_node, ckpt)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_seed_004_toml_runs_unchanged(tmp_path, ckpt):
    """The TOML from seeds/004 (MASE Lab 3 schema) with only model/dataset names changed."""
    text = (ROOT / "configs" / "mase_lab3_jsc.toml").read_text()
    cfg = load_config(ROOT / "configs" / "mase_lab3_jsc.toml", require_search=True)
    assert cfg.search.strategy.setup.sampler == "bruteforce" and "load_name" in text
    prep = prepare(cfg.model_copy(update={"load_name": None}), str(ckpt), tmp_path, progress=False)
    space, ev = build_search(cfg, prep)
    assert any("op type" in n for n in space.notes)  # 'linear' seed with by = "name" is ignored, as in MASE
    st = run_study(space, ev, cfg.search.strategy.metrics, cfg.search.strategy.setup, None, progress=False)[0]
    assert len(st.trials) == 18 and len(st.directions) == 2


def test_qat_runner_changes_weights_only_in_trial(tmp_path, ckpt):
    text = search_toml("random", 2).replace(
        "[search.strategy.setup]", "[search.strategy.sw_runner.qat]\nsteps = 5\n[search.strategy.setup]"
    )
    _, prep, space, ev = _setup(tmp_path, text, ckpt)
    w = prep.graph.gm.get_submodule("seq_blocks.2").weight.clone()
    r = ev.evaluate(space.to_config(space.point(0)))
    assert r.timings["qat"] > 0
    assert prep.graph.gm.get_submodule("seq_blocks.2").weight.equal(w)


def test_compare_samplers(tmp_path, ckpt, capsys):
    p = _w(tmp_path, search_toml("tpe", 18))
    rc = cli.main(
        [
            "compare-samplers",
            "--config",
            str(p),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "o"),
            "--samplers",
            "tpe,bruteforce,random",
            "--repeats",
            "2",
            "--n-trials",
            "18",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "o" / "compare" / "compare.json").read_text())
    assert res["optimum_kind"] == "exhaustive" and res["space_size"] == 18
    assert all(x is not None for x in res["samplers"]["bruteforce"]["trials_to_optimum"])  # sees all 18
    assert (tmp_path / "o" / "compare" / "compare.png").stat().st_size > 1000
    assert "trials to optimum" in capsys.readouterr().out


def test_ctrl_c_keeps_finished_trials_and_writes_outputs(tmp_path, ckpt):
    text = search_toml("random", 500, metrics="accuracy.scale = 1.0\nlatency.scale = -0.001")
    cfgp = _slow_config(tmp_path, text, 1000)
    out = tmp_path / "o"
    p = _search(cfgp, ckpt, out)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.3)
            jl = out / "trials.jsonl"
            if jl.exists() and len(jl.read_text().splitlines()) >= 3:
                break
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # never leave a search running behind a failed test
            p.kill()
            p.wait()
    assert p.returncode == 130, stderr
    assert "Best trial(s):" in stdout and "interrupted" in stderr
    rows = list(csv.DictReader(open(out / "trials.csv")))
    done = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(done) >= 3 and (out / "best.json").is_file()


def test_parallel_jobs_in_one_process(tmp_path, ckpt):
    cfg, _, space, ev = _setup(tmp_path, search_toml("exhaustive", 18), ckpt)
    serial = {tuple(sorted(t.params.items())): t.value for t in _run(cfg, space, ev).trials}
    cfg.search.strategy.setup = cfg.search.strategy.setup.model_copy(update={"n_jobs": 2})
    par = _run(cfg, space, ev)
    done = [t for t in par.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 18
    assert {tuple(sorted(t.params.items())): t.value for t in done} == serial


SPACE_ALL = """
[search.search_space.seed.default.config]
name = ["integer"]
data_in_width = [8]
data_in_frac_width = [4]
weight_width = [4, 8]
weight_frac_width = ["NA"]
bias_width = [8]
bias_frac_width = ["NA"]
"""


@pytest.mark.parametrize("model", ["jsc-tiny", "jsc-toy", "jsc-s", "cnn", "transformer"])
def test_best_model_loads_for_every_zoo_model(tmp_path, model):
    """A 3-trial search quantizing every quantizable node (relu/add/matmul ... too); best_model/ reloads."""
    import torch

    from qfx.graph import QGraph
    from qfx.passes.transforms.quantize import QuantizePass

    ck = make_checkpoint(tmp_path / "ck", model=model, epochs=1)
    text = search_toml(sampler="random", n_trials=3, space=SPACE_ALL, model=model, num_samples=64)
    cfg, prep, space, ev = _setup(tmp_path, text, ck)
    c = cfg.search.strategy
    st, objective = run_study(space, ev, c.metrics, c.setup, tmp_path / "o", progress=False)
    write_outputs(st, tmp_path / "o", objective)
    q = QGraph.load(tmp_path / "o" / "best_model")
    ref = QuantizePass(config_of(st.best_trial))(prep.graph).graph
    assert [m.to_dict() for m in q.metas()] == [m.to_dict() for m in ref.metas()]
    assert any(m.quantized for m in q.metas())
    x = prep.dataset.test.x[:64]
    with torch.no_grad():
        assert torch.equal(q(x), ref(x))
