"""Library API and registries: run_search from Python, a toy metric and the sampler table in one place each,
and the code's shape (no import cycles, no function over 60 lines outside the argparse builder)."""

import ast
from pathlib import Path

import pytest

from qfx.search.config import load_config
from qfx.search.metrics import METRICS
from qfx.search.samplers import SAMPLERS, sampler_spec
from qfx.search.session import run_search, with_overrides

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graph", "passes", "search", "hw", "zoo")


def test_run_search_from_python_with_a_shipped_config_and_overrides(tmp_path):
    run = run_search("jsc_tiny_by_type", out=tmp_path / "o", n_trials=3, sampler="random", seed=1)
    done = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and run.best and (tmp_path / "o" / "best.json").is_file()
    assert run.study.sampler.__class__.__name__ == "RandomSampler"


def test_overrides_return_a_new_config():
    cfg = load_config("jsc_tiny_by_type", require_search=True)
    before = cfg.search.strategy.setup.n_trials
    new = with_overrides(cfg, n_trials=before + 7, sampler="brute")
    assert cfg.search.strategy.setup.n_trials == before and new.search.strategy.setup.n_trials == before + 7
    assert new.search.strategy.setup.sampler == "bruteforce"
    with pytest.raises(ValueError, match="unknown sampler 'annealing'; choose one of tpe, random"):
        with_overrides(cfg, sampler="annealing")


def test_readme_and_cli_help_list_every_sampler_and_metric():
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    helptext = subprocess.run([sys.executable, "-m", "qfx", "search", "--help"], capture_output=True, text=True).stdout
    for name in [*SAMPLERS, *METRICS]:
        assert f"`{name}`" in readme, name
        assert name in helptext, name
    assert sampler_spec("cmaes").multi_objective is False and sampler_spec("exhaustive").enumerates


def _modules() -> dict[str, Path]:
    out = {}
    for p in [*(q for pkg in PACKAGES for q in (ROOT / pkg).rglob("*.py")), ROOT / "cli.py"]:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        out[".".join(["qfx", *parts])] = p
    return out


def test_no_import_cycles_between_modules():
    mods = _modules()
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qfx"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in mods:
                        edges[m].add(full)
                    elif node.module in mods:
                        edges[m].add(node.module)
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(edges[m]):
            if n == m or n.startswith(m + "."):  # a package importing its own submodules
                continue
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*path, n])}"
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in mods:
        if m not in state:
            visit(m, [m])


def test_no_function_over_60_lines():
    """The argparse builder included: it is a loop over the subcommand table (cli.COMMANDS)."""
    long = []
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{m}.{node.name}: {n} lines")
    assert not long, long
