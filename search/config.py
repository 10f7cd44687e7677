"""Search configuration: MASE Lab 3 TOML schema (extended), validated by pydantic.

Top-level keys follow MASE (``model``, ``dataset``, ``max_epochs`` ...); MASE keys that have
no meaning here (``task`` must be "cls"; ``log_every_n_steps``, ``load_type``) are accepted
and ignored so Lab 3 files run unchanged. Everything else is ``extra="forbid"``.
"""

from __future__ import annotations

import importlib.resources
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qfx.passes.transforms.learn_precision import LearnConfig
from qfx.passes.transforms.quantize.config import QuantizeConfig
from qfx.search.metrics import check_metrics
from qfx.search.samplers import sampler_spec
from qfx.search.space import SpaceError, check_seed
from qfx.zoo.models import MODELS


class ConfigError(ValueError):
    """A config file is invalid; the message names the file, the key and what is allowed."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every number finite: inf/NaN never run


MAX_JOBS = max(4, 4 * (os.cpu_count() or 1))  # parallel trials in one process: threads beyond this only contend
MAX_COUNT = 10**7  # trials, steps, epochs, samples: far above any run that ends, far below an overflow


class BasicEvaluation(_M):
    data_loader: Literal["val_dataloader", "test_dataloader", "train_dataloader", "val", "test", "train"] = (
        "val_dataloader"
    )
    num_samples: int | None = Field(512, ge=1, le=MAX_COUNT)


class LatencyRunner(_M):
    batch_size: int = Field(512, ge=1, le=MAX_COUNT)
    warmup: int = Field(2, ge=0, le=10_000)
    repeats: int = Field(10, ge=1, le=10_000)


class QATRunner(_M):
    """Optional fine-tune of each trial's quantized graph (straight-through gradients)."""

    steps: int = Field(0, ge=0, le=MAX_COUNT)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=MAX_COUNT)


class SwRunner(_M):
    basic_evaluation: BasicEvaluation = BasicEvaluation()
    latency: LatencyRunner = LatencyRunner()
    qat: QATRunner = QATRunner()


class AvgBitwidthRunner(_M):
    compare_to: float = Field(32, gt=0, le=64)  # the reference width, in bits
    activations: bool = False


class HwRunner(_M):
    average_bitwidth: AvgBitwidthRunner = AvgBitwidthRunner()


class LearnSearch(_M):
    """``[learn_search]``: trials over what gradients cannot choose. Each trial trains learned precision
    (``[learn]`` as the base) with a sampled final ``beta`` (log-uniform in ``beta``; the ramp's start keeps the
    base's ratio to it), ``epochs``, rounding and overflow modes and a hidden-width multiplier; its front is
    measured in hardware and the Pareto front over all trials' points is the product."""

    beta: tuple[float, float] = (1e-5, 3e-2)
    epochs: list[int] = Field([200], min_length=1)
    round: list[Literal["half_even", "half_up", "trunc"]] = Field(["half_up"], min_length=1)
    overflow: list[Literal["saturate", "wrap"]] = Field(["wrap"], min_length=1)
    width: list[float] = Field([1.0], min_length=1)
    n_trials: int = Field(8, ge=1, le=10_000)
    sampler: Literal["tpe", "random", "nsgaii", "qmc"] = "nsgaii"
    seed: int = Field(0, ge=0, lt=2**32)
    measured_per_trial: int = Field(4, ge=1, le=16)  # front points of each trial measured in hardware

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1] <= 1):
            raise ValueError(f"beta range {list(v)}: give [low, high] with 0 < low <= high <= 1")
        return v

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v: list[int]) -> list[int]:
        if any(not 1 <= e <= 100_000 for e in v):
            raise ValueError(f"epochs {v}: each in 1..100000")
        return v

    @field_validator("width")
    @classmethod
    def _width(cls, v: list[float]) -> list[float]:
        if any(not (0 < w <= 8) for w in v):
            raise ValueError(f"width {v}: multipliers in (0, 8]")
        return v


class FpgaConfig(_M):
    """The FPGA target: ``clock_ns`` is the clock the fpga_ffs / fpga_latency_cycles / fpga_latency_ns metrics and
    budgets assume (an II = 1 pipeline, as ``qfx export --clock-ns`` writes); None: one combinational block."""

    clock_ns: float | None = Field(None, gt=0, le=1000)


class StrategySetup(_M):
    n_jobs: int = Field(1, ge=1, le=MAX_JOBS)
    n_trials: int = Field(20, ge=1, le=MAX_COUNT)
    timeout: float | None = Field(None, gt=0, le=10**8)
    sampler: str = "tpe"
    sum_scaled_metrics: bool = True
    direction: Literal["maximize", "minimize"] = "maximize"
    seed: int = Field(0, ge=0, lt=2**32)
    # sensitivity: greedy bit allocations as first trials; ilp: the integer program's optimum (search/ilp.py)
    warm_start: Literal["none", "sensitivity", "ilp"] = "none"

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        return sampler_spec(v).name  # the sampler table decides


class MetricSpec(_M):
    scale: float = Field(1.0, ge=-1e6, le=1e6)
    direction: Literal["maximize", "minimize"] = "maximize"


MAX_THREADS = 1024


class Bound(_M):
    """A budget on one metric: ``max`` and/or ``min`` in the metric's own units."""

    max: Annotated[float, Field(allow_inf_nan=False)] | None = None  # a NaN bound would fail every trial
    min: Annotated[float, Field(allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Bound:
        if self.max is None and self.min is None:
            raise ValueError("give max and/or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Selection(_M):
    """``fraction`` > 0: that share of the evaluation split is held out as a *selection* split (stratified,
    seeded). The search scores on the rest; its ``top_k`` best distinct configurations are re-scored on the
    selection split and the best there is reported, with its test-split figures (single objective; a
    multi-objective front is reported with both figures per point). ``anchor = "uniform"``: the widest
    uniform-width configuration within the budgets is evaluated first, and the best (single objective) is
    reported only when it classifies the deciding split's rows (the selection split, else the evaluation split)
    significantly better than that anchor: exact one-sided McNemar test at ``alpha``; else the anchor is."""

    fraction: float = Field(0.0, ge=0.0, le=0.9)
    top_k: int = Field(5, ge=1, le=100)
    anchor: Literal["none", "uniform"] = "none"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)


class Strategy(_M):
    name: Literal["optuna"] = "optuna"
    eval_mode: bool = True
    sw_runner: SwRunner = SwRunner()
    hw_runner: HwRunner = HwRunner()
    setup: StrategySetup = StrategySetup()
    metrics: dict[str, MetricSpec] = Field(min_length=1)
    constraints: dict[str, Bound] = {}  # budgets: trials outside them are infeasible (Optuna constraints_func)
    selection: Selection = Selection()
    # which front point becomes best_model/ (multi-objective): knee | max:M | min:M | trial:N [, M>=X ...]
    pick: str = "knee"

    @field_validator("pick")
    @classmethod
    def _pick(cls, v: str) -> str:
        from qfx.search.pick import parse_pick

        parse_pick(v)  # the rule's grammar and metric names decide
        return v

    @field_validator("metrics", "constraints")
    @classmethod
    def _known(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_metrics(v)  # the metric registry decides
        return v


class SpaceSetup(_M):
    by: Literal["name", "type"] = "type"


class SearchSpaceConfig(_M):
    name: Literal["graph/quantize/mixed_precision_ptq"] = "graph/quantize/mixed_precision_ptq"
    setup: SpaceSetup = SpaceSetup()
    seed: dict[str, dict[str, dict[str, list[Any]]]] = Field(min_length=1)

    @field_validator("seed")
    @classmethod
    def _shape(cls, v: dict[str, dict[str, dict[str, list[Any]]]]) -> dict:
        for key, entry in v.items():
            if set(entry) != {"config"}:
                raise ValueError(f"seed.{key} must hold exactly one table 'config', got {sorted(entry)}")
            check_seed(key, entry["config"])  # every choice value, whether a trial samples it or not
        return v


class SearchSection(_M):
    search_space: SearchSpaceConfig
    strategy: Strategy


class PassesSection(_M):
    quantize: QuantizeConfig | None = None


class CalibrationConfig(_M):
    """How ``*_frac_width = "auto"`` is resolved (CalibrationPass), once per run, on ``num_samples`` of ``split``."""

    method: Literal["max", "percentile", "mse"] = "mse"
    percentile: float = Field(99.99, gt=50, le=100)
    num_samples: int = Field(512, ge=1, le=MAX_COUNT)
    split: Literal["train", "val", "test"] = "train"
    refine: bool = True  # loss-aware refinement on the split's labels, at the widths the config uses


class RunConfig(_M):
    model: str = "jsc-tiny"
    dataset: str = "digits"
    task: Literal["cls"] = "cls"
    max_epochs: int = Field(40, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=MAX_COUNT)
    learning_rate: float = Field(1e-2, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=10)
    accelerator: Literal["cpu", "cuda", "gpu", "auto"] = "cpu"
    # torch CPU threads (1..1024; far above any core count torch crashes); None: 1 below 1M parameters, else all
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    project: str | None = None
    seed: int = Field(0, ge=0, lt=2**32)
    load_name: str | None = None
    # accepted for MASE compatibility, unused
    log_every_n_steps: int | None = None
    load_type: str | None = None
    project_dir: str | None = None
    passes: PassesSection = PassesSection()
    search: SearchSection | None = None
    calibration: CalibrationConfig = CalibrationConfig()
    fpga: FpgaConfig = FpgaConfig()
    learn_search: LearnSearch | None = None  # ``qfx learn``: trials over beta, epochs, modes and widths
    learn: LearnConfig | None = None  # ``qfx learn``: learned precision (passes.transforms.learn_precision)

    def uses_auto(self) -> bool:
        """Whether any frac width of the quantize config or the search space says "auto"."""
        import json

        parts = [self.passes.quantize.model_dump() if self.passes.quantize else {}]
        if self.search is not None:
            parts.append(self.search.search_space.seed)
        return '"auto"' in json.dumps(parts, default=str)

    def integer_widths(self) -> tuple[int, ...]:
        """Every value a ``*_width`` key (not ``*_frac_width``) takes in the quantize config and search space."""
        found: set[int] = set()

        def walk(d: Any) -> None:
            if isinstance(d, dict):
                for k, v in d.items():
                    if isinstance(k, str) and k.endswith("_width") and not k.endswith(("frac_width", "exponent_width")):
                        vals = v if isinstance(v, list | tuple) else [v]
                        found.update(x for x in vals if isinstance(x, int) and not isinstance(x, bool))
                    else:
                        walk(v)
            elif isinstance(d, list | tuple):
                for v in d:
                    walk(v)

        walk(self.passes.quantize.model_dump() if self.passes.quantize else {})
        if self.search is not None:
            walk(self.search.search_space.seed)
        return tuple(sorted(w for w in found if w >= 1))

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:

        if v not in MODELS:
            raise ValueError(f"unknown model {v!r}; available: {', '.join(MODELS)}")
        return v

    @property
    def device(self) -> str:
        import torch

        if self.accelerator in ("cuda", "gpu", "auto") and torch.cuda.is_available():
            return "cuda"
        if self.accelerator in ("cuda", "gpu"):
            import logging

            logging.getLogger(__name__).warning(
                "accelerator = %r but no CUDA GPU: running on the CPU", self.accelerator
            )
        return "cpu"


_INTERNAL = ("by_type", "by_name", "by_regex")  # where a MASE-form [passes.quantize] puts its keys: never typed


def _loc(err: dict[str, Any]) -> str:
    parts = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    parts = [p for i, p in enumerate(parts) if not (p in _INTERNAL and i and parts[i - 1] in ("quantize", "config"))]
    return ".".join(parts) or "<top level>"


class SeedError(ConfigError, SpaceError):
    """An invalid search-space seed in a config file (file, key and value named)."""


def packaged_configs() -> dict[str, Path]:
    """The example configs shipped with qfx (``configs/*.toml`` as package data), by name."""
    root = Path(str(importlib.resources.files("qfx"))) / "configs"
    return {f.stem: f for f in sorted(root.glob("*.toml"))}


def config_path(spec: str | Path) -> Path:
    """``spec`` as a file if it exists, else a packaged example config by name (``jsc_tiny_by_type``)."""
    p = Path(spec)
    if p.exists():
        return p
    shipped = packaged_configs()
    name = p.stem if p.suffix == ".toml" else p.name
    if p.parent == Path(".") and name in shipped:
        return shipped[name]
    import difflib

    near = difflib.get_close_matches(name, list(shipped), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise ConfigError(f"{p}: no such config file ({hint}shipped configs by name: {', '.join(shipped)})")


def load_config(path: str | Path, require_search: bool = False) -> RunConfig:
    """Read and validate a TOML run config (a path, or a shipped config's name); :class:`ConfigError` names file+key."""
    p = config_path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a TOML config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a text TOML file (undecodable byte at offset {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        msgs = []
        space = any(isinstance(err.get("ctx", {}).get("error"), SpaceError) for err in e.errors())
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            msgs.append(f"key '{_loc(err)}': {msg}")
        raise (SeedError if space else ConfigError)(f"{p}: " + "; ".join(msgs)) from None
    if require_search and cfg.search is None:
        raise ConfigError(f"{p}: no [search] section (needs [search.search_space] and [search.strategy])")
    return cfg
