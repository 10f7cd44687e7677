"""Hand-written copies of architectures people use, small enough for CI.

Each exercises what trips FX passes up: shared modules called twice, in-place ops,
functional ops, tied weights, attention (SDPA and nn.MultiheadAttention), transposed
convs with concatenated skips, recurrent leaves, several inputs and outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: one in-place ReLU module called twice, ``out += identity``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18ish(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(
            InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3), InvertedResidual(12, 12, 1, 3)
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SDPAAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mha: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mha = mha
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True) if mha else SDPAAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.mha:
            a = self.attn(h, h, h, need_weights=False)[0]
        else:
            a = self.attn(h)
        x = x + a
        return x + self.mlp(self.norm2(x))


class ViTish(nn.Module):
    """Patch-embedding conv, class token (cat), learned positions, two blocks."""

    def __init__(self, mha: bool, dim: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        # trained-scale embeddings: at std 0.02 (the usual *init*) the token vectors entering the first
        # LayerNorm are so small that 16 fractional bits (2^-17 resolution) cost ~3e-4 relative error
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        self.blocks = nn.Sequential(ViTBlock(dim, 2, mha), ViTBlock(dim, 2, mha))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ctx: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(c, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
        causal = torch.triu(torch.ones_like(att, dtype=torch.bool), 1)
        att = att.masked_fill(causal, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class GPTish(nn.Module):
    """Token + position embeddings (arange), causal blocks, LM head tied to the token embedding."""

    def __init__(self, vocab: int = 32, dim: int = 16, ctx: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(ctx, dim)
        self.h = nn.Sequential(GPTBlock(dim, 2, ctx), GPTBlock(dim, 2, ctx))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        return self.lm_head(self.ln_f(self.h(x)))


class UNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True))

        self.d1, self.d2 = block(1, 8), block(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.bott = block(16, 16)
        self.up2 = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.u2 = block(32, 8)
        self.up1 = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.u1 = block(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.d1(x)
        s2 = self.d2(self.pool(s1))
        b = self.bott(self.pool(s2))
        y = self.u2(torch.cat([self.up2(b), s2], dim=1))
        y = self.u1(torch.cat([self.up1(y), s1], dim=1))
        return self.out(y)


class AudioNet(nn.Module):
    """1-D conv front end (M5-style) with BatchNorm1d, functional max pool, global pooling."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(1, 8, 9, stride=4), nn.BatchNorm1d(8)
        self.c2, self.b2 = nn.Conv1d(8, 16, 3), nn.BatchNorm1d(16)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.relu(self.b1(self.c1(x))), 2)
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(self.gap(x).squeeze(-1))


class LSTMHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True)
        self.gru = nn.GRU(12, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        g, _ = self.gru(h)
        return self.fc(g[:, -1])


class InPlaceOps(nn.Module):
    """In-place methods and augmented assignment whose float semantics a transform must keep."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x * 1.0
        r = torch.relu_(h)  # h now holds relu(h)
        z = self.fc(y)
        z += h  # operator.iadd
        z.mul_(0.5)
        a = self.act(z)  # in-place module: z is a
        return r + h + a + z.add_(1.0)


class SharedModules(nn.Module):
    """One Linear called on two inputs and one ReLU module called three times; two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.relu(self.fc(x))
        b = self.relu(self.fc(y))
        s = self.relu(a - b)
        return self.out(s), a * b


class FunctionalMix(nn.Module):
    """F.linear / addmm / einsum / bmm / baddbmm on parameters (get_attr nodes)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(12, 8) * 0.3)
        self.b1 = nn.Parameter(torch.randn(12) * 0.1)
        self.w2 = nn.Parameter(torch.randn(12, 6) * 0.3)
        self.b2 = nn.Parameter(torch.randn(6) * 0.1)
        self.mix = nn.Parameter(torch.randn(6, 6) * 0.3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(F.linear(x, self.w1, self.b1))
        h = torch.addmm(self.b2, h, self.w2)
        e = torch.einsum("bi,ij->bj", h, self.mix)
        m = torch.bmm(e.unsqueeze(2), e.unsqueeze(1))
        m = torch.baddbmm(m, e.unsqueeze(2), e.unsqueeze(1), beta=0.5)
        return {"logits": e, "gram": m}


def _img(b: int = 2, c: int = 3, s: int = 16) -> torch.Tensor:
    return torch.randn(b, c, s, s)


def architectures() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    models: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {
        "resnet18": (ResNet18ish(), (_img(),)),
        "mobilenetv2": (MobileNetV2ish(), (_img(),)),
        "vit-sdpa": (ViTish(mha=False), (_img(),)),
        "vit-mha": (ViTish(mha=True), (_img(),)),
        "gpt": (GPTish(), (torch.randint(0, 32, (2, 8)),)),
        "unet": (UNetish(), (torch.randn(2, 1, 16, 16),)),
        "audio": (AudioNet(), (torch.randn(2, 1, 128),)),
        "lstm": (LSTMHead(), (torch.randn(2, 5, 6),)),
        "inplace": (InPlaceOps(), (torch.randn(3, 8), torch.randn(3, 8))),
        "shared": (SharedModules(), (torch.randn(3, 8), torch.randn(3, 8))),
        "functional": (FunctionalMix(), (torch.randn(3, 8),)),
    }
    for m, _ in models.values():
        m.eval()
        for mod in m.modules():  # non-trivial batch-norm statistics
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return models
