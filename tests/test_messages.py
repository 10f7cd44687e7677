"""Messages a new user meets (issue 31): each names what to do, without internal names or stray quotes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qfx import cli


def _err(argv: list[str], capsys: Any) -> list[str]:
    assert cli.main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()


def test_misspelt_config_name_suggests_the_shipped_one(capsys: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    err = _err(["search", "--config", "jsc_tiny_by_typ"], capsys)
    assert "did you mean 'jsc_tiny_by_type'?" in err[0], err
    assert err[1].startswith("hint: pass a TOML path or the name of a shipped config"), err


def test_unknown_model_in_a_checkpoint_has_no_stray_quotes(capsys: Any) -> None:
    err = _err(["analyze", "--model", "resnet"], capsys)
    assert err[0] == "error: unknown model 'resnet'", err
    from qfx.zoo.models import build_model

    try:
        build_model("resnet", 4, 2)
    except ValueError as e:
        assert str(e).startswith("unknown model 'resnet'; available:")


def test_misspelt_quantize_key_path_is_the_one_the_user_wrote(tmp_path: Path, capsys: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text('model = "jsc-tiny"\n[passes.quantize]\nby = "name"\n[passes.quantize.fc1.config]\n'
                 'name = "integer"\nweigth_width = 4\n')  # fmt: skip
    err = _err(["transform", "--config", str(p)], capsys)
    assert "passes.quantize.fc1" in err[0] and "by_name" not in err[0] and "weigth_width" in err[0], err


def test_the_fpga_config_loads_without_warnings(caplog: Any) -> None:
    """The shipped jsc_s_fpga uses a `default` seed for every node: the fields a ReLU lacks are dropped silently
    (they printed four WARNING lines)."""
    import torch

    from qfx.graph import trace
    from qfx.passes.analysis import analyze
    from qfx.search.config import load_config
    from qfx.search.space import SearchSpace
    from qfx.zoo.models import build_model

    cfg = load_config("jsc_s_fpga", require_search=True)
    g = analyze(trace(build_model("jsc-s", 64, 10).eval(), torch.randn(4, 64)))
    space = SearchSpace(g, cfg.search.search_space.setup.by, cfg.search.search_space.seed)
    assert space.notes == []
