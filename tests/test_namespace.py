"""qfx installs and imports as one namespace: a user's own graph.py / search.py shadows nothing."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QFX = Path(sys.executable).parent / "qfx"
POISON = "raise SystemExit('user module imported instead of qfx')\n"


@pytest.fixture
def user_dir(tmp_path):
    for name in ("graph", "search", "passes", "hw", "zoo", "cli"):
        (tmp_path / f"{name}.py").write_text(POISON)
    return tmp_path


def _run(args, cwd, env=None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_console_script_searches_with_a_shipped_config_from_a_directory_with_its_own_modules(user_dir):
    assert QFX.is_file(), "pip install -e . installs the qfx console script"
    r = _run([str(QFX), "--version"], user_dir)
    assert r.returncode == 0 and r.stdout.startswith("qfx ") and r.stdout.split()[1][0].isdigit()
    r = _run([str(QFX), "--quiet", "search", "--config", "jsc_tiny_by_type", "--n-trials", "2", "--out", "o"], user_dir)
    assert r.returncode == 0, r.stderr
    assert "Best trial(s):" in r.stdout and (user_dir / "o" / "best.json").is_file()
    assert "note:" not in r.stdout and "%|" not in r.stderr  # --quiet: no notes, no progress bars
    r = _run([sys.executable, "-m", "qfx", "search", "--config", "no_such_config", "--n-trials", "1"], user_dir)
    assert r.returncode == 2 and "jsc_tiny_by_type" in r.stderr  # the error lists the shipped names


def test_python_dash_m_and_imports_resolve_to_the_package(user_dir):
    code = "import qfx.graph, qfx.search.study, qfx.cli; print(qfx.graph.__file__)"
    r = _run([sys.executable, "-c", code], user_dir)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == ROOT / "graph" / "__init__.py"
    r = _run([sys.executable, "-m", "qfx", "--version"], user_dir)
    assert r.returncode == 0 and r.stdout.startswith("qfx ")


def test_cli_py_runs_in_a_checkout_that_is_not_installed(tmp_path):
    """Without site processing the editable finder is absent: cli.py imports the checkout as ``qfx`` itself."""
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    r = _run([sys.executable, "-S", str(ROOT / "cli.py"), "--version"], tmp_path, env)
    assert r.returncode == 0 and r.stdout.startswith("qfx "), r.stderr
    r = _run([sys.executable, "-S", str(ROOT / "cli.py"), "analyze", "--model", "jsc-tiny"], tmp_path, env)
    assert r.returncode == 0 and "seq_blocks" in r.stdout, r.stderr


def test_no_top_level_modules_besides_qfx():
    top = (ROOT / "pyproject.toml").read_text()
    assert 'package-dir = {"qfx" = "."}' in top and "py-modules" not in top
    for p in ROOT.rglob("*.py"):
        if ".venv" in p.parts or "egg-info" in str(p):
            continue
        for line in p.read_text().splitlines():
            s = line.strip()
            for pkg in ("graph", "passes", "search", "hw", "zoo", "cli"):
                assert not s.startswith((f"from {pkg}.", f"from {pkg} import", f"import {pkg}")), f"{p}: {s}"
