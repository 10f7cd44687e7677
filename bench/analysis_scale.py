"""Trace + all analysis passes vs one forward pass under FlopCounterMode, on growing models.

Prints time per node and the ratio (ours / FlopCounterMode forward) measured in this run.
Goal: cost linear in node count; the 5,000-layer MLP analysed in under 2x the FlopCounterMode run.
Run: python bench/analysis_scale.py [--quick]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from qfx.graph import trace
from qfx.passes.analysis import analyze


def mlp(layers: int, width: int = 32) -> nn.Module:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, groups=4), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)


def cnn(blocks: int = 25, c: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        *[Block(c) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )


def best_of(fn, n: int = 3) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main() -> None:
    torch.set_num_threads(1)
    quick = "--quick" in sys.argv
    cases = [(f"mlp-{n}", mlp(n), torch.randn(8, 32)) for n in ((10, 100, 1000) if quick else (10, 100, 1000, 5000))]
    cases.append(("cnn-25blocks", cnn(), torch.randn(2, 3, 16, 16)))
    rows = []
    for name, model, x in cases:
        model.eval()
        holder: dict = {}

        def ours(model=model, x=x, holder=holder) -> None:
            holder["g"] = analyze(trace(model, x))

        def ref(model=model, x=x) -> None:
            with FlopCounterMode(display=False), torch.no_grad():
                model(x)

        t_ours, t_ref = best_of(ours), best_of(ref)
        nodes = len(holder["g"].nodes)
        rows.append(
            [
                name,
                nodes,
                f"{1e3 * t_ours:.1f}",
                f"{1e6 * t_ours / nodes:.1f}",
                f"{1e3 * t_ref:.1f}",
                f"{t_ours / t_ref:.2f}",
            ]
        )
    print(
        tabulate(
            rows,
            headers=["model", "nodes", "trace+analysis ms", "us/node", "FlopCounterMode fwd ms", "ratio ours/ref"],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
