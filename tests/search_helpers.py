"""Shared helpers for search tests: a small trained checkpoint and config templates."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from qfx.zoo.data import load_dataset
from qfx.zoo.models import build_model
from qfx.zoo.train import save_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


SHELL = "(?:sh|bash|shell|console)"  # every fence language a reader would paste into a shell


def blocks(lang: str) -> list[str]:
    """The README's fenced code blocks of one language (a regex: :data:`SHELL` for every shell block)."""
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def commands() -> list[str]:
    """Every shell command of the README, in order (the first two: set-up + main job, and the tests)."""
    out = []
    for b in blocks(SHELL):
        for cmd in b.replace("\\\n", " ").splitlines():
            if cmd.strip() and not cmd.startswith("#"):
                out.append(cmd.split("  #")[0].strip())
    return out


SPACE_18 = """
[search.search_space.seed.default.config]
name = ["NA"]

[search.search_space.seed.linear.config]
name = ["integer"]
data_in_width = [4, 8]
data_in_frac_width = ["NA"]
weight_width = [2, 4, 8]
weight_frac_width = ["NA"]
bias_width = [2, 4, 8]
bias_frac_width = ["NA"]
"""


def make_checkpoint(directory: Path, model: str = "jsc-tiny", epochs: int = 8) -> Path:
    ds = load_dataset("digits")
    torch.manual_seed(0)
    m = build_model(model, ds.num_features, ds.num_classes, image_shape=ds.image_shape)
    train(m, ds, epochs=epochs, progress=False)
    return save_checkpoint(directory, m, {"model": model, "dataset": "digits", "seed": 0, "epochs": epochs})


def search_toml(
    sampler: str = "bruteforce",
    n_trials: int = 18,
    single: bool = True,
    by: str = "type",
    metrics: str = 'accuracy.scale = 1.0\naverage_bitwidth.scale = -0.01\naverage_bitwidth.direction = "minimize"',
    space: str = SPACE_18,
    extra_setup: str = "",
    num_samples: int = 256,
    model: str = "jsc-tiny",
) -> str:
    return f"""
model = "{model}"
dataset = "digits"
max_epochs = 5

[search.search_space]
name = "graph/quantize/mixed_precision_ptq"
[search.search_space.setup]
by = "{by}"
{space}
[search.strategy]
name = "optuna"
[search.strategy.sw_runner.basic_evaluation]
data_loader = "val_dataloader"
num_samples = {num_samples}
[search.strategy.setup]
n_trials = {n_trials}
sampler = "{sampler}"
sum_scaled_metrics = {"true" if single else "false"}
direction = "maximize"
seed = 0
{extra_setup}
[search.strategy.metrics]
{metrics}
"""
