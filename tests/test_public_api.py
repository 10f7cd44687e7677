"""The package uses Optuna through its public API only (issue 34): an AST scan of every module, and the
hypervolume we compute ourselves (Optuna's is private) checked against Optuna's own on random fronts."""

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[Path]:
    return [f for f in ROOT.rglob("*.py") if not {".venv", "tests", "build"} & set(f.relative_to(ROOT).parts)]


def _private(dotted: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in dotted.split("."))


def optuna_private_uses(source: str) -> list[str]:
    """Where ``source`` reaches into Optuna's private members: an import of a private module or name, or (in a
    module that imports Optuna) an attribute ``x._name`` on anything but ``self``/``cls``."""
    tree = ast.parse(source)
    out, imports_optuna = [], False
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "optuna":
                    imports_optuna = True
                    if _private(a.name):
                        out.append(f"{n.lineno}: import {a.name}")
        elif isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "optuna":
            imports_optuna = True
            bad = [a.name for a in n.names if _private(a.name)]
            if _private(n.module or "") or bad:
                out.append(f"{n.lineno}: from {n.module} import {', '.join(a.name for a in n.names)}")
    if imports_optuna:
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and _private(n.attr):
                if not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls")):
                    out.append(f"{n.lineno}: {ast.unparse(n)}")
    return out


def test_scanner_catches_what_it_should():
    assert optuna_private_uses("from optuna.storages._rdb import models")
    assert optuna_private_uses("import optuna._hypervolume")
    assert optuna_private_uses("from optuna.storages.journal import _storage")
    assert optuna_private_uses("import optuna\ndef f(trial): return trial._trial_id")
    assert optuna_private_uses("import optuna\ndef f(s): return s.study._storage.x")
    assert not optuna_private_uses("import optuna\nclass A:\n    def f(self): return self._x")
    assert not optuna_private_uses("import torch\ndef f(m): return m._parameters")  # not an Optuna module


def test_package_uses_only_optunas_public_api():
    found = {str(f.relative_to(ROOT)): u for f in _modules() if (u := optuna_private_uses(f.read_text()))}
    assert not found, found


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_hypervolume_equals_optunas(d):
    from optuna._hypervolume import compute_hypervolume  # the oracle (a test may use it; the package may not)

    from qfx.search.compare import hypervolume

    rng = np.random.default_rng(d)
    for n in (1, 2, 7, 40):
        p = rng.integers(0, 5, size=(n, d)).astype(float)  # ties and duplicates on purpose
        ref = np.full(d, 5.0)
        assert hypervolume(p, ref) == pytest.approx(compute_hypervolume(p, ref), abs=1e-9)
    assert hypervolume(np.array([[5.0] * d]), np.full(d, 5.0)) == 0.0  # on the reference: nothing
    assert hypervolume(np.empty((0, d)), np.full(d, 1.0)) == 0.0
