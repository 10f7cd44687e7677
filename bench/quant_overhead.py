"""Forward latency of quantized models vs FP32 and vs torch.ao FakeQuantize modules (CPU, batch 512).

For each model, all Linear/Conv layers get 8-bit (frac 4) integer inputs, weights and biases:
  fp32        the float model
  ours        our QuantizePass output (weights quantized once and cached in inference)
  ours-fused  the same with torch.fake_quantize_per_tensor_affine as the quantizer kernel
  torch.ao    the float model with torch.ao.quantization.FakeQuantize on input, weight and bias
Ratios are against fp32 measured in the same run. Goal: ours <= 1.5x fp32 on the ~1M-param
models and no slower than torch.ao. Run: python bench/quant_overhead.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate
from torch.ao.quantization import FakeQuantize, FixedQParamsObserver

import qfx.passes.transforms.quantize.quantizers as qz
from qfx.graph import trace
from qfx.passes.transforms.quantize import QuantizePass
from qfx.zoo.models import build_model

W, FR = 8, 4


def fq_module() -> FakeQuantize:
    obs = FixedQParamsObserver.with_args(
        scale=2.0**-FR, zero_point=0, dtype=torch.qint8, quant_min=-(2 ** (W - 1)), quant_max=2 ** (W - 1) - 1
    )
    m = FakeQuantize(observer=obs, quant_min=-(2 ** (W - 1)), quant_max=2 ** (W - 1) - 1, dtype=torch.qint8)
    m.disable_observer()
    m.scale.fill_(2.0**-FR)
    m.zero_point.fill_(0)
    return m


class AOWrap(nn.Module):
    """A Linear/Conv with torch.ao FakeQuantize on its input, weight and bias (re-quantized every call)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m, self.fx, self.fw, self.fb = m, fq_module(), fq_module(), fq_module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fw(self.m.weight)
        b = self.fb(self.m.bias) if self.m.bias is not None else None
        x = self.fx(x)
        if isinstance(self.m, nn.Linear):
            return F.linear(x, w, b)
        return self.m._conv_forward(x, w, b)


def ao_model(model: nn.Module) -> nn.Module:
    import copy

    model = copy.deepcopy(model)
    for child in list(model.modules()):
        for cname, c in list(child.named_children()):
            if isinstance(c, (nn.Linear, nn.Conv2d)):
                setattr(child, cname, AOWrap(c))
    return model


class BigMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 512),
            nn.ReLU(),
            nn.Linear(512, 1024),
            nn.ReLU(),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BigCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def timeit(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def fused(x: torch.Tensor, width: int, frac: int, signed: bool = True) -> torch.Tensor:
    lo, hi = (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if signed else (0, 2**width - 1)
    return torch.fake_quantize_per_tensor_affine(x, 2.0**-frac, 0, lo, hi)


def main() -> None:
    quick = "--quick" in sys.argv
    repeats = 10 if quick else 40
    torch.manual_seed(0)
    cfg = {
        "by": "type",
        **{
            t: {
                "name": "integer",
                "data_in_width": W,
                "data_in_frac_width": FR,
                "weight_width": W,
                "weight_frac_width": FR,
                "bias_width": W,
                "bias_frac_width": FR,
            }
            for t in ("linear", "conv2d")
        },
    }
    cases = [
        ("jsc-toy", build_model("jsc-toy", 16, 5), torch.randn(512, 16)),
        ("mlp-1M", BigMLP(), torch.randn(512, 64)),
        ("cnn-1M", BigCNN(), torch.randn(512, 64)),
    ]
    rows = []
    for name, model, x in cases:
        print(f"measuring {name} ({repeats} repeats of fp32, ours, ours-fused, torch.ao) ...", flush=True)
        model.eval()
        params = sum(p.numel() for p in model.parameters())
        q = QuantizePass(cfg)(trace(model, x[:2])).graph.gm.eval()
        ao = ao_model(model).eval()
        t_fp = timeit(model, x, repeats)
        t_ours = timeit(q, x, repeats)
        orig = qz.integer_quantize
        qz.integer_quantize = fused
        try:
            qf = QuantizePass(cfg)(trace(model, x[:2])).graph.gm.eval()
            t_fused = timeit(qf, x, repeats)
        finally:
            qz.integer_quantize = orig
        t_ao = timeit(ao, x, repeats)
        assert torch.equal(q(x), qf(x)), "the two kernels must agree"
        torch.testing.assert_close(q(x), ao(x), rtol=0, atol=0)
        rows.append(
            [
                name,
                f"{params:,}",
                f"{t_fp:.2f}",
                f"{t_ours:.2f}",
                f"{t_fused:.2f}",
                f"{t_ao:.2f}",
                f"{t_ours / t_fp:.2f}",
                f"{t_fused / t_fp:.2f}",
                f"{t_ao / t_fp:.2f}",
                f"{t_ours / t_ao:.2f}",
            ]
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 512, median of {repeats}")
    print(
        tabulate(
            rows,
            headers=[
                "model",
                "params",
                "fp32 ms",
                "ours ms",
                "ours-fused ms",
                "torch.ao ms",
                "ours/fp32",
                "fused/fp32",
                "ao/fp32",
                "ours/ao",
            ],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
