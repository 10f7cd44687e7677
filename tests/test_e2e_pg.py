"""End to end: fresh venv install + the README's main command; distributed search on PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from search_helpers import ROOT, commands, make_checkpoint, search_toml

SETUP = commands()[0]
pytestmark = pytest.mark.slow  # fresh installs / kill -9 runs: minutes; CI runs them


def test_fresh_install_and_main_command(tmp_path):
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    repo = tmp_path / "repo"
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    r = subprocess.run(["bash", "-c", SETUP], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Best trial(s):" in r.stdout
    out = repo / "outputs" / "jsc_tiny_by_type"
    best = json.loads((out / "best.json").read_text())
    assert best
    for i, b in best.items():
        mase = {"number", "value", "software_metrics", "hardware_metrics", "scaled_metrics", "sampled_config"}
        # MASE's layout plus the lowest-SQNR nodes, how many trials drew the configuration and (a front's
        # first point, best_model/) the pick that chose it
        assert set(b) == mase | {"weakest_nodes", "trials", "trial_numbers"} | ({"pick"} if i == "0" else set())
        assert {"accuracy", "loss"} <= set(b["software_metrics"])
        assert {"average_bitwidth", "memory_density"} <= set(b["hardware_metrics"])
        assert b["sampled_config"]["linear"]["config"]["name"] == "integer"
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 18 and all(r["state"] == "COMPLETE" for r in rows)
    for png in ("history.png", "pareto.png", "metric_vs_config.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (out / "best_model" / "graph.json").is_file() and (out / "baseline" / "model.pt").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on a Unix socket; skipped where the server binaries are absent."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    pytest.importorskip("psycopg")
    base = Path(tempfile.mkdtemp(prefix="qfx-pg-"))  # not under pytest's 0700 tmp root: the server user reads it
    os.chmod(base, 0o777)
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, sock, port = base / "data", base / "sock", _free_port()
    sock.mkdir()
    os.chmod(sock, 0o777)
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "qfx", "--auth=trust"], check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=''"
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [shutil.which("createdb") or "createdb", "-h", str(sock), "-p", str(port), "-U", "qfx", "qfx"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://qfx@/qfx?host={sock}&port={port}"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("sampler", ["exhaustive", "grid"])
def test_postgres_workers_share_one_study(tmp_path, postgres, sampler):
    ck = make_checkpoint(tmp_path / "ck")
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml(sampler, 14))
    optuna.create_study(storage=postgres, study_name=f"pg-{sampler}", directions=["maximize"])
    procs = _workers(cfg, ck, postgres, f"pg-{sampler}", tmp_path)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    st = optuna.load_study(study_name=f"pg-{sampler}", storage=postgres)
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 14 and len({tuple(sorted(t.params.items())) for t in done}) == 14


def _workers(cfg: Path, ck: Path, url: str, name: str, tmp_path: Path, n: int = 3) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "cli.py"),
                "search",
                "--config",
                str(cfg),
                "--checkpoint",
                str(ck),
                "--storage",
                url,
                "--study-name",
                name,
                "--out",
                str(tmp_path / f"w{i}"),
                "--no-progress",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]


@pytest.mark.parametrize("backend", ["postgres", "journal"])
def test_workers_started_together_on_an_empty_database(tmp_path, backend, request):
    """As the README says to do: N workers started at the same instant, nothing created beforehand."""
    ck = make_checkpoint(tmp_path / "ck", epochs=1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(search_toml("exhaustive", 12))
    if backend == "postgres":
        base = request.getfixturevalue("postgres")
        host = base.split("?", 1)[1]
        sock = dict(kv.split("=") for kv in host.split("&"))
        db = f"fresh_{os.getpid()}"
        subprocess.run(
            [shutil.which("createdb") or "createdb", "-h", sock["host"], "-p", sock["port"], "-U", "qfx", db],
            check=True,
            capture_output=True,
        )
        url = base.replace("/qfx?", f"/{db}?")
    else:
        url = f"journal:{tmp_path / 'fresh.log'}"
    procs = _workers(cfg, ck, url, "together", tmp_path)
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        errs.append((p.returncode, err[-1500:]))
    assert all(rc == 0 for rc, _ in errs), errs
    from qfx.search.storage import make_storage

    st = optuna.load_study(study_name="together", storage=make_storage(url))
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 12 and len({tuple(sorted(t.params.items())) for t in done}) == 12
