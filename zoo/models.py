"""Model zoo by name. Every model takes flat ``(batch, in_features)`` inputs.

jsc-tiny / jsc-toy / jsc-s follow MASE's layer layout (so node names such as
``seq_blocks_2`` match MASE configs); ``cnn`` and ``transformer`` exercise conv
(grouped), residual adds, matmul, softmax and layernorm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(sizes: list[int]) -> nn.Sequential:
    """MASE JSC layout: BN, ReLU, then (Linear, BN, ReLU) per layer."""
    layers: list[nn.Module] = [nn.BatchNorm1d(sizes[0]), nn.ReLU()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class JSCTiny(nn.Module):
    """BatchNorm1d(F), ReLU, Linear(F, C), ReLU: 117 parameters for F=16, C=5 (MASE jsc-tiny)."""

    def __init__(self, in_features: int, num_classes: int, **_: Any) -> None:
        super().__init__()
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(in_features), nn.ReLU(), nn.Linear(in_features, num_classes), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq_blocks(x)


class JSCMLP(nn.Module):
    """MASE jsc-toy / jsc-s: BN, ReLU, then Linear-BN-ReLU blocks."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.seq_blocks = _mlp([in_features, *hidden, num_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq_blocks(x)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, grouped conv with a residual add, max pool, conv, global average pool, linear."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        image_shape: tuple[int, int, int] | None = None,
        width: int = 16,
        **_: Any,
    ) -> None:
        super().__init__()
        if image_shape is None:
            side = math.isqrt(in_features)
            if side * side != in_features:
                raise ValueError(f"cnn needs an image dataset or a square feature count; got {in_features} features")
            image_shape = (1, side, side)
        c = image_shape[0]
        self.unflatten = nn.Unflatten(1, image_shape)
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(width, 2 * width, 3, padding=2, dilation=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.unflatten(x))))
        x = torch.relu(self.bn2(self.conv2(x))) + x
        x = self.pool(x)
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class TinyTransformer(nn.Module):
    """Features split into tokens; one pre-norm attention block (explicit matmul/softmax) and MLP."""

    def __init__(self, in_features: int, num_classes: int, dim: int = 32, **_: Any) -> None:
        super().__init__()
        tokens = max(d for d in range(1, math.isqrt(in_features) + 1) if in_features % d == 0)
        self.tokens, self.patch = tokens, in_features // tokens
        self.embed = nn.Linear(self.patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)
        self.scale = dim**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, self.tokens, self.patch)) + self.pos
        a = self.ln1(h)
        att = torch.softmax(self.q(a) @ self.k(a).transpose(-2, -1) * self.scale, dim=-1)
        h = h + self.proj(torch.matmul(att, self.v(a)))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(h.mean(dim=1))


def _wide(hidden: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Hidden sizes scaled by a width multiplier (at least 1 unit each)."""
    return tuple(max(1, round(h * width)) for h in hidden)


WIDTH_MODELS = ("jsc-toy", "jsc-s")  # zoo models whose hidden sizes take a width multiplier (``width=``)
Builder = Callable[..., nn.Module]
MODELS: dict[str, Builder] = {
    "jsc-tiny": JSCTiny,
    "jsc-toy": lambda in_features, num_classes, width=1.0, **_: JSCMLP(in_features, num_classes, _wide((8, 8), width)),
    "jsc-s": lambda in_features, num_classes, width=1.0, **_: JSCMLP(
        in_features, num_classes, _wide((64, 32, 32), width)
    ),
    "cnn": SmallCNN,
    "transformer": TinyTransformer,
}


def build_model(name: str, in_features: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate zoo model ``name`` for a dataset's feature and class counts."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name](in_features, num_classes, **kwargs)
