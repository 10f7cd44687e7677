"""Small model zoo used by the contract tests (zoo models plus op-coverage models)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qfx.zoo.models import build_model


class OpsCNN(nn.Module):
    """Conv1d, strided/dilated/grouped conv, ConvTranspose2d, F.conv2d, avg pool, bmm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, groups=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.ct = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.w = nn.Parameter(torch.randn(4, 4, 1, 1))
        self.ap = nn.AvgPool2d(2)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        y = self.c3(F.relu(self.c2(x)))
        y = self.bn(self.ct(y))
        y = F.conv2d(y, self.w)
        y = self.ap(y)
        z = self.c1(s)
        b = torch.bmm(z, z.transpose(1, 2))
        return y.flatten(1).sum(1) + b.flatten(1).mean(1) - z.mean()


class TiedLM(nn.Module):
    """Embedding whose weight is reused by F.linear (shared parameters), with GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.emb(idx))
        h = F.gelu(self.fc(h)) * 0.5
        return F.linear(h, self.emb.weight)


def zoo() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    return {
        "jsc-tiny": (build_model("jsc-tiny", 16, 5), (torch.randn(8, 16),)),
        "jsc-toy": (build_model("jsc-toy", 16, 5), (torch.randn(8, 16),)),
        "jsc-s": (build_model("jsc-s", 16, 5), (torch.randn(8, 16),)),
        "cnn": (build_model("cnn", 64, 10), (torch.randn(4, 64),)),
        "transformer": (build_model("transformer", 16, 5), (torch.randn(4, 16),)),
        "ops-cnn": (OpsCNN(), (torch.randn(2, 3, 12, 12), torch.randn(2, 3, 10))),
        "tied-lm": (TiedLM(), (torch.randint(0, 20, (2, 5)),)),
    }
