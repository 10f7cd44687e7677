"""Crafted inputs against the surfaces the safe loader did not cover (issue 30): tensors that disagree with
their modules, sizes that would exhaust memory, paths that would steer Yosys, symlinks in input directories,
study names that are paths, resumed-study records, and numbers in configs and flags.

Each crafted input, through the CLI: exit 2, one ``error:`` line naming the file/key/flag/trial, no marker
file created, nothing written outside the output directory (the parent directories are listed before and
after).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import test_untrusted_files as U
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfx import cli
from qfx.graph import QGraph
from qfx.graph.serialize import SerializationError

saved, crafted, _int = U.saved, U.crafted, U._int  # the crafted-directory fixtures

LOAD_ERRORS = (SerializationError, FileNotFoundError)


def _header(d: Path) -> tuple[dict[str, Any], bytes]:
    data = (d / "weights.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write(d: Path, header_json: bytes, body: bytes) -> None:
    (d / "weights.safetensors").write_bytes(len(header_json).to_bytes(8, "little") + header_json + body)


def _retensor(d: Path, edit: Any) -> None:
    """Rewrite weights.safetensors with ``edit(tensors)`` applied (a valid file with other contents)."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(d / "weights.safetensors"))
    edit(t)
    save_file(t, str(d / "weights.safetensors"))


def _key(d: Path, suffix: str) -> str:
    h, _ = _header(d)
    return next(k for k in h if k.endswith(suffix))


def _listing(*dirs: Path) -> dict[str, list[str]]:
    return {str(p): sorted(x.name for x in p.iterdir()) for p in dirs}


def _cli_refuses(argv: list[str], capsys: Any, says: str, watch: list[Path]) -> str:
    before = _listing(*watch)
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[0].startswith("error: ") and says in err[0], err
    assert not any("Traceback" in line for line in err), err
    assert _listing(*watch) == before  # nothing written beside the inputs
    return err[0]


# ---- tensors against their modules ----------------------------------------------------------------------
TENSOR_EDITS = {
    "3x3 weight in Linear(16, 8)": (
        lambda d: _retensor(d, lambda t: t.update({_key(d, "fc1.weight"): torch.randn(3, 3)})),
        "node 'fc1'",
    ),  # fmt: skip
    "float16 weight": (
        lambda d: _retensor(d, lambda t: t.update({_key(d, "fc1.weight"): t[_key(d, "fc1.weight")].half()})),
        "node 'fc1'",
    ),  # fmt: skip
    "int32 weight": (
        lambda d: _retensor(d, lambda t: t.update({_key(d, "fc2.weight"): t[_key(d, "fc2.weight")].int()})),
        "fc2",
    ),  # fmt: skip
    "NaN weight": (
        lambda d: _retensor(d, lambda t: t[_key(d, "fc1.weight")].__setitem__((0, 0), float("nan"))),
        "NaN",
    ),  # fmt: skip
    "+inf weight": (
        lambda d: _retensor(d, lambda t: t[_key(d, "fc2.weight")].__setitem__((0, 0), float("inf"))),
        "infinite",
    ),  # fmt: skip
    "unused 1 GiB-declared tensor": (lambda d: _retensor(d, lambda t: t.update(extra=torch.zeros(1024))), "'extra'"),
}


def _duplicate_name(d: Path) -> None:
    h, body = _header(d)
    k = _key(d, "fc1.bias")
    text = json.dumps(h)
    dup = json.dumps({k: h[k]})[1:-1]
    _write(d, (text[:-1] + ", " + dup + "}").encode(), body)


def _oversized(d: Path) -> None:
    h, body = _header(d)
    h[_key(d, "fc1.weight")]["shape"] = [2**20, 2**14]  # 64 GiB of float32 declared in a small file
    _write(d, json.dumps(h).encode(), body)


def _huge_header(d: Path) -> None:
    (d / "weights.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")


def _meta_input(d: Path) -> None:
    spec = json.loads((d / "meta.json").read_text())
    for n in spec["nodes"]:
        if n["name"] == "x":
            n["out_shape"] = [8, 10**12]
        if n["name"] == "fc1":
            n["in_shapes"] = [[8, 10**12]]
    (d / "meta.json").write_text(json.dumps(spec))


def _strided_inputs(d: Path) -> None:
    torch.save((torch.zeros(1, 16).expand(10**9, 16),), d / "inputs.pt")


def _wrong_inputs(d: Path) -> None:
    torch.save((torch.zeros(8, 64),), d / "inputs.pt")


EDITS: dict[str, tuple[Any, str]] = {
    **TENSOR_EDITS,
    "duplicate tensor name": (_duplicate_name, "appears twice"),
    "declared 64 GiB tensor": (_oversized, "weights.safetensors"),
    "header length 10^12": (_huge_header, "header length"),
    "meta.json input of 10^12 features": (_meta_input, "meta.json"),
    "stride-0 10^9-row inputs.pt": (_strided_inputs, "inputs.pt"),
    "inputs.pt of the wrong shape": (_wrong_inputs, "inputs.pt"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_tensor_mismatch_refused_by_the_library(crafted: Path, name: str) -> None:
    edit, says = EDITS[name]
    edit(crafted)
    with pytest.raises(LOAD_ERRORS) as e:
        QGraph.load(crafted)
    text = str(e.value)
    assert "\n" not in text and says in text and str(crafted) in text, text


@pytest.mark.parametrize("name", ["3x3 weight in Linear(16, 8)", "float16 weight", "+inf weight",
                                  "duplicate tensor name", "meta.json input of 10^12 features"])  # fmt: skip
def test_tensor_mismatch_refused_by_export_no_verify(crafted: Path, tmp_path: Path, capsys: Any, name: str) -> None:
    edit, says = EDITS[name]
    edit(crafted)
    out = tmp_path / "o"
    argv = ["export", "--graph", str(crafted), "--format", "torch,onnx-qdq", "--out", str(out), "--no-verify"]
    _cli_refuses(argv, capsys, says, [tmp_path, crafted])
    assert not out.exists()


def test_unused_tensor_is_never_read(crafted: Path) -> None:
    """Tensors are read from a memory map as the modules ask: an unused one costs no memory before refusal."""
    from qfx.graph.loadcheck import LazyTensors

    _retensor(crafted, lambda t: t.update(extra=torch.zeros(4096)))
    lt = LazyTensors(crafted / "weights.safetensors")
    assert "extra" in lt and not lt._read
    with pytest.raises(SerializationError, match="'extra'"):
        QGraph.load(crafted)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_safetensors_headers_load_identically_or_fail_in_one_line(saved: Path, tmp_path_factory: Any,
                                                                          data: Any) -> None:  # fmt: skip
    d = tmp_path_factory.mktemp("fz") / "g"
    shutil.copytree(saved, d)
    h, body = _header(d)
    keys = [k for k in h if k != "__metadata__"]
    k = data.draw(st.sampled_from(keys))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "rename", "drop"]))
    values = st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=8), st.lists(st.integers(-5, 2**33), max_size=4),
                       st.none(), st.sampled_from(["F32", "F16", "I8", "BOOL", "F64"]))  # fmt: skip
    if field == "rename":
        h[data.draw(st.text(max_size=12))] = h.pop(k)
    elif field == "drop":
        h.pop(k)
    elif field == "extra":
        h[k]["x"] = data.draw(values)
    else:
        h[k][field] = data.draw(values)
    _write(d, json.dumps(h).encode(), body)
    ref = QGraph.load(saved)
    try:
        g = QGraph.load(d)
    except LOAD_ERRORS as e:
        assert "\n" not in str(e) and str(d) in str(e), str(e)
    else:  # an edit that changed nothing the graph reads: same outputs
        x = torch.randn(8, 16)
        torch.testing.assert_close(g(x), ref(x), rtol=0, atol=0)


# ---- tools and output directories --------------------------------------------------------------------
def test_yosys_never_parses_a_path(saved: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """``synth`` writes a script of our own relative names and runs yosys with an argument vector in the
    project directory: a ``;`` or a space in the path is only a directory name."""
    import subprocess

    from qfx.passes.export import da4ml_backend as B

    seen: list[tuple[list[str], Path]] = []

    def fake_run(argv: list[str], cwd: Path, **kw: Any) -> Any:
        seen.append((argv, cwd))
        (Path(cwd) / "yosys_stat.txt").write_text("   LUT6  7\n   FDRE  2\n")
        (Path(cwd) / "yosys_ltp.txt").write_text("Longest topological path in qfx_model (length=3):\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr("qfx.passes.export.tools.subprocess.run", fake_run)
    project = tmp_path / "g; exec -- touch marker; #" / "with space"
    (project / "src" / "static").mkdir(parents=True)
    cells = B.synth(project)
    assert cells["LUT"] == 7 and cells["FF"] == 2 and cells["LTP"] == 3
    argv, cwd = seen[0]
    assert argv == ["yosys", "-q", "-s", "synth.ys"] and Path(cwd) == project.resolve()
    script = (project / "synth.ys").read_text()
    assert str(tmp_path) not in script and ";" not in script and "exec" not in script


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_synth_with_shell_characters_in_the_path(tmp_path: Path, capsys: Any) -> None:
    """The issue's attack, for real: ``qfx synth --graph 'g; exec -- touch marker; #'`` creates no marker,
    and a path with a space synthesizes."""
    import os

    import torch.nn as nn

    from qfx.graph import trace
    from qfx.passes.analysis import analyze
    from qfx.passes.transforms.quantize import QuantizePass

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    g = analyze(trace(m, torch.randn(8, 4)))
    q = QuantizePass({"by": "type", "linear": _int(4, 2), "relu": _int(4, 2)})(g).graph
    os.chdir(tmp_path)
    d = q.save(tmp_path / "g; exec -- touch marker; #" / "my graph")
    rc = cli.main(["synth", "--graph", str(d.relative_to(tmp_path))])
    out = capsys.readouterr().out
    assert rc == 0 and "yosys synth_xilinx" in out, out
    assert not (tmp_path / "marker").exists() and not any(tmp_path.rglob("marker"))


@pytest.mark.parametrize("cmd", ["synth", "debug"])
def test_planted_symlink_as_default_output_is_refused(crafted: Path, tmp_path: Path, capsys: Any, cmd: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (crafted / cmd).symlink_to(elsewhere, target_is_directory=True)
    if cmd == "synth" and shutil.which("yosys") is None:
        pytest.skip("yosys not installed")
    _cli_refuses([cmd, "--graph", str(crafted)], capsys, f"{crafted / cmd}: is a symlink", [elsewhere, tmp_path])
    assert not any(elsewhere.iterdir())


@pytest.mark.parametrize("name", ["/abs/x", "../x", "a/b", "..", ".hidden", "a\nb", "x" * 101, ""])
def test_study_name_is_a_name(tmp_path: Path, capsys: Any, name: str, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--config", "jsc_tiny_by_type", "--storage", f"journal:{tmp_path / 'j.log'}",
            "--study-name", name, "--n-trials", "1"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "--study-name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--n-jobs", "100000"), ("--seed", "-1"), ("--timeout", "inf"), ("--timeout", "nan"), ("--n-trials", "0")],
)
def test_numeric_flags_are_bounded(tmp_path: Path, capsys: Any, flag: str, value: str, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["search", "--config", "jsc_tiny_by_type", flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_verify_rows_is_bounded(crafted: Path, tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["export", "--graph", str(crafted), "--format", "torch", "--out", str(tmp_path / "o"),
                  "--verify-rows", "1000000000"])  # fmt: skip
    assert "--verify-rows" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_too_many_nodes_is_one_line(crafted: Path, tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    """A graph.json of more nodes than any model (the issue's 1M-node file printed four tracebacks); the cap
    (250,000) is lowered here so that the file stays small."""
    from qfx.graph import schema

    monkeypatch.setattr(schema, "MAX_NODES", 40)
    MAX_NODES = 40
    spec = json.loads((crafted / "graph.json").read_text())
    node = next(n for n in spec["nodes"] if n["op"] == "call_method")
    spec["nodes"][1:1] = [{**node, "name": f"n{i}"} for i in range(MAX_NODES)]
    (crafted / "graph.json").write_text(json.dumps(spec))
    _cli_refuses(["export", "--graph", str(crafted), "--format", "torch", "--out", str(tmp_path / "o")], capsys,
                 "graph.json", [tmp_path])  # fmt: skip
