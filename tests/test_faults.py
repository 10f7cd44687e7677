"""kill -9 at random points of persistent searches, then resume: nothing finished is lost, n_trials is
exact, no configuration repeats, and every point of a finite space is evaluated once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from search_helpers import ROOT, make_checkpoint, search_toml

from qfx.search.storage import make_storage

pytestmark = pytest.mark.slow  # fresh installs / kill -9 runs: minutes; CI runs them

SPACE = """
[search.search_space.seed.linear.config]
name = ["integer"]
data_in_width = [2, 4, 6, 8]
weight_width = [2, 3, 4, 5, 6, 8]
"""  # 24 points


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ck"), epochs=1)


def _worker(cfg: Path, ckpt: Path, out: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "search", "--config", str(cfg), "--checkpoint", str(ckpt),
         "--out", str(out), "--no-progress", "--storage", url, "--study-name", "k"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _completed(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        st = optuna.load_study(study_name="k", storage=make_storage(url))
    except KeyError:
        return []
    return [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]


# every sampler kind once and both storages (one heartbeat mechanism serves both: search.storage)
@pytest.mark.parametrize("sampler,n,storage", [("exhaustive", 24, "journal"), ("bruteforce", 24, "sqlite"),
                                               ("tpe", 16, "sqlite"), ("tpe", 16, "journal")])  # fmt: skip
def test_kill9_five_times_then_resume(tmp_path, ckpt, storage, sampler, n):
    rng = random.Random(hash((storage, sampler)) % 1000)
    text = search_toml(sampler, n, space=SPACE, num_samples=64)
    extra = "[search.strategy.sw_runner.latency]\nrepeats = 150\nbatch_size = 64\n"  # ~30 ms trials
    text = text.replace("[search.strategy.setup]", extra + "[search.strategy.setup]")
    text = text.replace("accuracy.scale = 1.0", "accuracy.scale = 1.0\nlatency.scale = -0.001")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    url = f"sqlite:///{tmp_path / 's.db'}" if storage == "sqlite" else f"journal:{tmp_path / 's.log'}"
    kept: set[int] = set()
    for i in range(5):
        p = _worker(cfg, ckpt, tmp_path / "o", url)
        try:
            time.sleep(rng.uniform(2.5, 4.0))  # start-up (~2.5 s) plus a random part of the search
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        done = {t.number for t in _completed(url)}
        assert kept <= done, f"kill {i}: finished trials lost"
        kept = done
    p = _worker(cfg, ckpt, tmp_path / "o", url)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    done = _completed(url)
    assert kept <= {t.number for t in done}
    configs = [tuple(sorted(t.params.items())) for t in done]
    every = optuna.load_study(study_name="k", storage=make_storage(url)).trials
    assert len(done) == n, "\n".join(f"{t.number} {t.state.name} {t.params} {t.system_attrs}" for t in every)
    retries = [t for t in done if "failed_trial" in t.system_attrs]
    assert len({t.system_attrs["failed_trial"] for t in retries}) == len(retries)  # each killed trial redone once
    if sampler in ("exhaustive", "bruteforce"):
        assert len(set(configs)) == n == 24  # every point of the space, exactly once
    else:  # TPE may propose a configuration again by itself; a killed trial's is never evaluated twice
        for t in retries:
            orig = [d for d in done if d.number == t.system_attrs["failed_trial"]]
            assert not orig
