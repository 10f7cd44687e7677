"""Adding a number format is one registration: a toy power-of-two format, quantized, printed and searched."""

from typing import Annotated, Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from qfx.graph import trace
from qfx.graph.meta import TensorPrecision, get_meta
from qfx.passes.analysis import analyze
from qfx.passes.transforms.quantize import NumberFormat, QuantizePass, register_format
from qfx.passes.transforms.quantize.config import QuantizeConfig
from qfx.passes.transforms.quantize.formats import FORMATS, unregister_format
from qfx.search.config import MetricSpec, StrategySetup
from qfx.search.records import config_of
from qfx.search.runner import Evaluator
from qfx.search.space import SearchSpace, SpaceError, check_seed
from qfx.search.study import run_study
from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model


def digits_jsc_tiny():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    m = build_model("jsc-tiny", ds.num_features, ds.num_classes).eval()
    return analyze(trace(m, ds.split("val").x[:8])), ds


PotWidth = Annotated[int, Field(ge=2, le=8)]


class PotQ(BaseModel):
    """Power-of-two values: a sign and a (width-1)-bit exponent code, 2^-(2^(w-1)-1) .. 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["pot"]
    bypass: bool = False
    data_in_width: PotWidth = 4
    weight_width: PotWidth = 4
    bias_width: PotWidth = 4

    def roles(self) -> dict[str, TensorPrecision]:
        return {r: TensorPrecision("pot", getattr(self, f"{r}_width"), None) for r in ("data_in", "weight", "bias")}


def pot_values(p: TensorPrecision):
    lo = -(2 ** (p.width - 1) - 1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        e = torch.round(torch.log2(x.abs().clamp_min(2.0**-40))).clamp(lo, 0)
        return torch.where(x == 0, x, torch.sign(x) * torch.exp2(e))

    return fn


@pytest.fixture
def pot():
    fmt = register_format(NumberFormat("pot", values=pot_values, label=lambda p: f"pot{p.width}", config=PotQ))
    yield fmt
    unregister_format("pot")


def test_a_registered_format_quantizes_prints_and_validates(pot):
    g, _ = digits_jsc_tiny()
    q = QuantizePass({"by": "type", "linear": {"config": {"name": "pot", "weight_width": 3}}})(g).graph
    node = next(n for n in q.gm.graph.nodes if get_meta(n).op_type == "linear")
    assert str(get_meta(node).precision["weight"]) == "pot3"
    w, _ = q.gm.get_submodule(node.target)._qparams()
    nz = w[w != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz) and nz.max() <= 1 and nz.min() >= 2.0**-3
    with pytest.raises(ValueError, match="weight_width"):
        QuantizeConfig.model_validate({"linear": {"name": "pot", "weight_width": 9}})
    with pytest.raises(SpaceError, match=r"seed.linear.config.weight_width: invalid choice 1"):
        check_seed("linear", {"name": ["pot"], "weight_width": [1, 4]})


def test_search_over_a_registered_format(pot):
    g, ds = digits_jsc_tiny()
    space = SearchSpace(g, "type", {"linear": {"name": ["pot", "integer"], "weight_width": [2, 4]}})
    assert space.size == 4  # pot2, pot4, int2, int4: one dim over the distinct configurations
    ev = Evaluator(g, ds.split("val"), ds.num_classes, ["accuracy"])
    setup = StrategySetup(n_trials=4, sampler="bruteforce", seed=0)
    study, _ = run_study(space, ev, {"accuracy": MetricSpec(scale=1.0, direction="maximize")}, setup, None,
                         progress=False)  # fmt: skip
    seen = {(c["linear"]["config"]["name"], c["linear"]["config"]["weight_width"])
            for c in (config_of(t) for t in study.trials if t.state.name == "COMPLETE")}  # fmt: skip
    assert seen == {("pot", 2), ("pot", 4), ("integer", 2), ("integer", 4)}


def test_duplicate_registration_raises(pot):
    with pytest.raises(ValueError, match="already registered"):
        register_format(NumberFormat("pot", values=pot_values, label=str, config=PotQ))
    assert "pot" in FORMATS
