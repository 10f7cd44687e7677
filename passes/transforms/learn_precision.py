"""Learned precision: bit widths trained by gradient with a hardware-cost penalty (HGQ's method, in PyTorch).

Every MAC (linear, conv, and a batch norm that does not fold into one, as a per-channel affine map) gets:

- a fractional-bit count per weight (or per output channel), trainable; the integer bits follow each
  weight's magnitude, so a weight costs ``max(i + f, 0)`` bits and reaches 0 bits (pruned) when its
  ``f`` falls below ``-i``;
- a fractional-bit count per input element (or one per tensor), trainable; integer bits and sign from the
  range the training data reaches (tracked while training, as HGQ does);
- a bias on the accumulator's grid (its frac is the largest product frac of its output channel).

Forward values are the quantized ones (rounding: weights half to even, activations as configured); the
gradient of a value is straight-through and the gradient of its ``f`` is HGQ's surrogate
``d(error)/df = -ln2 * error`` (the rounding error halves per extra bit). The loss is cross-entropy plus
``beta`` x EBOPs, the differentiable sum over MACs of weight bits x input bits (HGQ's effective BOPs, which
track da4ml's LUTs). ``beta`` ramps log-linearly from ``beta_start`` to ``beta`` so one run sweeps the
accuracy/cost trade-off; after each epoch the exact EBOPs and validation accuracy are measured, and the epochs
on the Pareto front (accuracy up, EBOPs down) are kept. :meth:`LearnResult.graph` turns a kept epoch into an
ordinary quantized :class:`~qfx.graph.trace.QGraph` with per-element precision (map quantizers): weights and
biases stored as their exact fixed-point values, activations quantized per element, batch norms folded where
they follow a MAC. It saves, loads, exports and verifies like any other graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from qfx.graph.meta import update_meta
from qfx.graph.trace import QGraph
from qfx.passes.transforms.fold import fold_batch_norms
from qfx.passes.transforms.quantize.modules import fold_batch_norm
from qfx.passes.transforms.quantize.quantize_pass import QuantizePass
from qfx.passes.transforms.quantize.quantizers import MAP_FRAC_RANGE, MapQuantizer, round_codes
from qfx.zoo.data import Split

LN2 = math.log(2.0)
F_LO, F_HI = MAP_FRAC_RANGE
MAX_WIDTH = 24  # an activation's width is capped here (its integer bits come from the data's range)


class LearnConfig(BaseModel):
    """Options of :func:`learn_precision` (``extra="forbid"``: a misspelt key is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(3e-5, ge=0, le=1, allow_inf_nan=False)
    beta_start: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    epochs: int = Field(200, ge=1, le=100_000)
    batch_size: int = Field(64, ge=2, le=1 << 20)
    lr: float = Field(3e-3, gt=0, le=1, allow_inf_nan=False)
    bits_lr: float = Field(0.03, gt=0, le=10, allow_inf_nan=False)  # the fracs' step size (Adam)
    weight_granularity: Literal["element", "channel"] = "element"
    act_granularity: Literal["element", "tensor"] = "element"
    init_weight_frac: int = Field(6, ge=-8, le=16)
    init_act_frac: int = Field(6, ge=-8, le=16)
    round: Literal["half_even", "half_up", "trunc"] = "half_up"
    overflow: Literal["saturate", "wrap"] = "saturate"
    fold_batch_norm: bool = True
    seed: int = Field(0, ge=0, le=2**31 - 1)

    def beta_at(self, epoch: int) -> float:
        """The penalty strength at ``epoch`` (0-based): a log-linear ramp when ``beta_start`` is set."""
        if self.beta_start is None or self.epochs == 1 or self.beta_start == self.beta:
            return self.beta
        lo, hi = max(self.beta_start, 1e-12), max(self.beta, 1e-12)
        return float(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * epoch / (self.epochs - 1)))


def _ste_round(f: torch.Tensor) -> torch.Tensor:
    return f + (f.round() - f).detach()


def _fixed_f(f: torch.Tensor) -> torch.Tensor:
    return f.detach().clamp(F_LO, F_HI).round()


def _surrogate(x: torch.Tensor, q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``q`` in value; gradient 1 to ``x`` and HGQ's ``-ln2 * error`` to ``f``."""
    err = (x - q).detach()
    return x - err * torch.exp2(-(f - f.detach()))


def _int_bits(m: torch.Tensor) -> torch.Tensor:
    """Integer bits that hold magnitudes up to ``m`` (``floor(log2 m) + 1``; very negative for 0)."""
    return torch.floor(torch.log2(m.clamp_min(2.0**-30))) + 1


class _WeightQ(nn.Module):
    """Trainable frac per weight (or per output channel); integer bits from each weight's magnitude."""

    def __init__(self, shape: tuple[int, ...], per_channel: bool, init: int) -> None:
        super().__init__()
        fshape = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else shape
        self.f = nn.Parameter(torch.full(fshape, float(init)))

    def forward(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fr = _ste_round(self.f.clamp(F_LO, F_HI))
        q = torch.round(w * torch.exp2(fr.detach())) * torch.exp2(-fr.detach())
        bits = F.relu(_int_bits(w.detach().abs()) + self.f)  # effective bits: 0 when the weight rounds to 0
        return _surrogate(w, q, self.f), bits.expand_as(w)


class _ActQ(nn.Module):
    """Trainable frac per input element (or per tensor); integer bits and sign from the range the data reaches:
    the range of the last epoch (so integer bits shrink when the values do, as HGQ's decaying integer bits),
    widened by each training batch."""

    def __init__(self, shape: tuple[int, ...], per_element: bool, init: int, rnd: str, overflow: str) -> None:
        super().__init__()
        self.shape = shape if per_element else ()
        self.f = nn.Parameter(torch.full(self.shape, float(init)))
        for b in ("lo", "hi", "seen_lo", "seen_hi"):
            self.register_buffer(b, torch.zeros(self.shape))
        self.rnd, self.overflow = rnd, overflow

    def observe(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            dims = tuple(range(x.dim() - len(self.shape)))  # the batch (and all dims when per tensor)
            lo, hi = x.amin(dim=dims), x.amax(dim=dims)
            for cur, seen, new, fn in (
                (self.lo, self.seen_lo, lo, torch.minimum),
                (self.hi, self.seen_hi, hi, torch.maximum),
            ):
                seen.copy_(fn(seen, new))
                cur.copy_(fn(cur, new))

    def new_epoch(self) -> None:
        """The range becomes what the last epoch saw; a new epoch starts observing."""
        with torch.no_grad():
            self.lo.copy_(self.seen_lo)
            self.hi.copy_(self.seen_hi)
            self.seen_lo.zero_()
            self.seen_hi.zero_()

    def kif(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sign bit (one for the whole tensor), integer bits per element, rounded fracs (with STE)."""
        k = (self.lo < 0).any().float().expand_as(self.lo)
        i = _int_bits(torch.maximum(-self.lo, self.hi))
        return k, i, _ste_round(self.f.clamp(F_LO, F_HI))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            self.observe(x)
        k, i, fr = self.kif()
        width = (k + i + fr.detach()).clamp(max=MAX_WIDTH)
        scale = torch.exp2(fr.detach())
        codes = round_codes((x * scale).detach().clone(), self.rnd)
        lo, hi = -k * torch.exp2(width - 1), torch.exp2(width - k) - 1
        if self.overflow == "saturate":
            codes = torch.minimum(torch.maximum(codes, lo), hi)
        else:
            codes = (codes - lo).remainder(hi - lo + 1) + lo
        q = torch.where(width > 0, codes / scale, torch.zeros((), dtype=x.dtype))
        return _surrogate(x, q, self.f), F.relu(k + i + self.f)


class _Affine(nn.Module):
    """A batch norm that folds into no MAC, as its inference affine map (trainable scale and shift)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        s, t = fold_batch_norm(bn)
        self.weight, self.bias = nn.Parameter(s.detach().clone()), nn.Parameter(t.detach().clone())

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * w.reshape(shape) + b.reshape(shape)


class _Learned(nn.Module):
    """A MAC with learned weight and input precisions; :attr:`ebops` holds the last forward's penalty term."""

    def __init__(self, mac: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], cfg: LearnConfig) -> None:
        super().__init__()
        if isinstance(mac, nn.Linear) and len(in_shape) != 1:
            raise ValueError(f"learned precision takes linear layers on (batch, features) inputs, got {in_shape}")
        self.mac = mac
        self.in_shape = in_shape
        self.reuse = math.prod(out_shape[2:]) if len(out_shape) > 2 else 1  # output positions (conv, affine)
        self.qw = _WeightQ(tuple(mac.weight.shape), cfg.weight_granularity == "channel", cfg.init_weight_frac)
        self.qx = _ActQ(in_shape, cfg.act_granularity == "element", cfg.init_act_frac, cfg.round, cfg.overflow)
        self.ebops = torch.zeros(())

    def _per_channel(self, a: torch.Tensor, reduce: str) -> torch.Tensor:
        """An input map (per element or scalar) reduced to one value per input channel/feature."""
        a = a.expand(self.in_shape).reshape(self.in_shape[0], -1)
        return a.amax(dim=1) if reduce == "max" else a.mean(dim=1)

    def bias_frac(self, fw: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        """Per output channel: the largest product frac (the accumulator's grid, where the bias adds exactly)."""
        w = self.mac.weight
        fa_c = self._per_channel(fa, "max")
        if isinstance(self.mac, _Affine):
            return (fw.expand_as(w).reshape(-1) + fa_c).clamp(F_LO, F_HI)
        fw = fw.expand_as(w).reshape(w.shape[0], w.shape[1], -1).amax(dim=2)
        return (fw + fa_c.reshape(1, -1)).amax(dim=1).clamp(F_LO, F_HI)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, bx = self.qx(x)
        wq, bw = self.qw(self.mac.weight)
        b = self.mac.bias
        if b is not None:
            fb = self.bias_frac(
                self.qw.f.detach().clamp(F_LO, F_HI).round(), self.qx.f.detach().clamp(F_LO, F_HI).round()
            )
            b = torch.round(b * torch.exp2(fb)) * torch.exp2(-fb) + (b - b.detach())
        self.ebops = self.cost(bw, bx)
        if isinstance(self.mac, _Affine):
            return self.mac(xq, wq, b)
        if isinstance(self.mac, nn.Linear):
            return F.linear(xq, wq, b)
        return self.mac._conv_forward(xq, wq, b)

    def cost(self, bw: torch.Tensor, bx: torch.Tensor) -> torch.Tensor:
        """EBOPs: each weight's bits times the bits of the input it multiplies, per output position."""
        if isinstance(self.mac, nn.Linear):
            return (bw * bx.expand(self.in_shape).reshape(1, -1)).sum()
        per_c = self._per_channel(bx, "mean")  # a conv weight meets every position of its input channel
        if isinstance(self.mac, _Affine):
            return (bw.reshape(-1) * per_c).sum() * self.reuse
        return (bw.reshape(bw.shape[0], bw.shape[1], -1).sum(dim=2) * per_c.reshape(1, -1)).sum() * self.reuse


@dataclass
class EpochRecord:
    epoch: int
    beta: float
    loss: float
    val_accuracy: float
    ebops: float


@dataclass
class LearnResult:
    """The training run: per-epoch records, the Pareto-front epochs' states, and their graphs on demand."""

    base: QGraph  # the float graph trained (batch norms folded)
    config: LearnConfig
    history: list[EpochRecord]
    front: list[EpochRecord]
    states: dict[int, dict[str, torch.Tensor]] = field(repr=False, default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # the learned MAC nodes

    def graph(self, epoch: int | None = None) -> QGraph:
        """The quantized graph of a front epoch (default: the most accurate one)."""
        if epoch is None:
            epoch = max(self.front, key=lambda r: (r.val_accuracy, -r.ebops)).epoch
        if epoch not in self.states:
            raise KeyError(f"epoch {epoch} is not on the front; front epochs: {sorted(self.states)}")
        model = _trainable(self.base, self.config)
        model.load_state_dict(self.states[epoch])
        return to_qgraph(self.base, model, self.nodes, self.config)


def _mac_nodes(g: QGraph) -> list[str]:
    out = []
    for n in g.gm.graph.nodes:
        m = g.modules.get(n.target) if n.op == "call_module" else None  # type: ignore[arg-type]
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            out.append(n.name)
    return out


def _trainable(base: QGraph, cfg: LearnConfig) -> fx.GraphModule:
    """A copy of ``base`` whose MAC modules are :class:`_Learned` wrappers (the base is not touched)."""
    g = base.copy()
    gm = g.gm
    for name in _mac_nodes(g):
        n = g.node(name)
        m = gm.get_submodule(n.target)  # type: ignore[arg-type]
        mac = _Affine(m) if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) else m
        meta = g.meta(name)
        wrapped = _Learned(mac, tuple(meta.in_shapes[0][1:]), tuple(meta.out_shape), cfg)  # type: ignore[arg-type]
        target = f"learned__{name}"
        gm.add_submodule(target, wrapped)
        n.target = target
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _new_epoch(gm: fx.GraphModule) -> None:
    for m in gm.modules():
        if isinstance(m, _ActQ):
            m.new_epoch()


def _penalty(gm: fx.GraphModule) -> torch.Tensor:
    return sum((m.ebops for m in gm.modules() if isinstance(m, _Learned)), torch.zeros(()))


def learn_precision(
    graph: QGraph, train: Split, val: Split, cfg: LearnConfig | None = None, progress: bool = True
) -> LearnResult:
    """Train precisions (and weights) of ``graph``'s float model on ``train``; see the module docstring."""
    cfg = cfg or LearnConfig()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    base = fold_batch_norms(graph) if cfg.fold_batch_norm else graph.copy()
    model = _trainable(base, cfg)
    nodes = _mac_nodes(base)
    model.train()
    with torch.no_grad():  # the ranges start from the whole training split
        model(train.x)
    _new_epoch(model)
    bits = [p for n, p in model.named_parameters() if n.endswith(".f")]
    rest = [p for n, p in model.named_parameters() if not n.endswith(".f")]
    opt = torch.optim.Adam([{"params": rest}, {"params": bits, "lr": cfg.bits_lr}], lr=cfg.lr)
    history: list[EpochRecord] = []
    states: dict[int, dict[str, torch.Tensor]] = {}
    n = len(train)
    bar = tqdm(range(cfg.epochs), desc="learn precision", unit="epoch", disable=not progress)
    for ep in bar:
        beta = cfg.beta_at(ep)
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            total = loss + beta * _penalty(model)
            opt.zero_grad()
            total.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        _new_epoch(model)
        rec = _measure(model, val, ep, beta, tot / n)
        history.append(rec)
        if _on_front(rec, history):
            states[ep] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(acc=f"{rec.val_accuracy:.3f}", ebops=f"{rec.ebops:,.0f}", beta=f"{beta:.1e}")
    front = _front(history)
    states = {r.epoch: states[r.epoch] for r in front}
    return LearnResult(base, cfg, history, front, states, nodes)


def _measure(model: fx.GraphModule, val: Split, ep: int, beta: float, loss: float) -> EpochRecord:
    """Validation accuracy and the exact EBOPs (integer bits of the rounded fracs) after an epoch."""
    model.eval()
    with torch.no_grad():
        acc = float((model(val.x).argmax(dim=1) == val.y).float().mean())
        ebops = 0.0
        for m in model.modules():
            if isinstance(m, _Learned):
                w = m.qw(m.mac.weight)[0]
                fr = m.qw.f.clamp(F_LO, F_HI).round().expand_as(w)
                bits = torch.from_numpy(_effective_bits((w * torch.exp2(fr)).round()))
                k, i, fa = m.qx.kif()
                bx = (k + i + fa).clamp(0, MAX_WIDTH)
                ebops += float(m.cost(bits.to(w.dtype), bx))
    return EpochRecord(ep, beta, loss, acc, ebops)


def _effective_bits(codes: torch.Tensor) -> np.ndarray:
    from qfx.hw.fpga import effective_bits

    return effective_bits(codes.numpy().astype(np.int64)).astype(np.float32)


def _on_front(rec: EpochRecord, history: list[EpochRecord]) -> bool:
    return not any(
        o is not rec and o.val_accuracy >= rec.val_accuracy and o.ebops <= rec.ebops
        and (o.val_accuracy > rec.val_accuracy or o.ebops < rec.ebops)
        for o in history
    )  # fmt: skip


def _front(history: list[EpochRecord]) -> list[EpochRecord]:
    """Non-dominated epochs (accuracy up, EBOPs down), by EBOPs; of equal points the latest."""
    pts = [r for r in history if _on_front(r, history)]
    best: dict[tuple[float, float], EpochRecord] = {}
    for r in pts:
        best[(r.val_accuracy, r.ebops)] = r
    return sorted(best.values(), key=lambda r: r.ebops)


# ------------------------------------------------------------------ conversion to an ordinary quantized graph


def _min_width(codes: torch.Tensor, signed: bool) -> torch.Tensor:
    """Smallest width holding each integer code (0 for code 0)."""
    c = codes.to(torch.int64)
    mag = torch.where(c < 0, -c - 1, c) if signed else c
    bl = torch.where(mag > 0, torch.floor(torch.log2(mag.clamp_min(1).double())).long() + 1, torch.zeros_like(mag))
    return torch.where(c == 0, torch.zeros_like(c), bl + int(signed))


def constant_maps(values: torch.Tensor, fracs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(exact values, widths, fracs)`` of constants rounded half to even at ``fracs``, each at its minimal
    width and frac (trailing zero bits of its code dropped; 0 bits for a zero)."""
    f = fracs.expand_as(values).to(torch.int64).clone()
    codes = torch.round(values.double() * torch.exp2(f.double())).to(torch.int64)
    for _ in range(F_HI - F_LO):
        even = (codes != 0) & (codes % 2 == 0) & (f > F_LO)
        if not bool(even.any()):
            break
        codes = torch.where(even, codes // 2, codes)
        f = torch.where(even, f - 1, f)
    widths = _min_width(codes, True)
    if int(widths.max()) > 32:
        raise ValueError("a learned constant needs more than 32 bits")
    exact = (codes.double() * torch.exp2(-f.double())).to(values.dtype)
    return exact, widths, torch.where(codes == 0, torch.zeros_like(f), f)


def to_qgraph(base: QGraph, model: fx.GraphModule, nodes: list[str], cfg: LearnConfig) -> QGraph:
    """The trained ``model`` as a quantized copy of ``base`` with map quantizers (see the module docstring)."""
    plain = {"name": "integer", "data_in_width": 8, "weight_width": 8, "bias_width": 8}
    q = QuantizePass({"by": "name", **{n: plain for n in nodes}})(base).graph
    for name in nodes:
        learned = model.get_submodule(f"learned__{name}")
        node = q.node(name)
        mod = q.gm.get_submodule(node.target)  # type: ignore[arg-type]
        update_meta(node, precision=_install(mod, learned))
    return q


def _install(mod: nn.Module, learned: _Learned) -> dict[str, Any]:
    """Write ``learned``'s exact constants and map quantizers into the quantized module ``mod``."""
    with torch.no_grad():
        mac = learned.mac
        fw = _fixed_f(learned.qw.f)
        w, ww, wf = constant_maps(mac.weight.detach(), fw)
        k, i, fa = (t.expand(learned.in_shape) for t in learned.qx.kif())
        widths = (k + i + fa).clamp(0, MAX_WIDTH).to(torch.int64)
        fracs = torch.where(widths > 0, fa, torch.zeros_like(fa)).to(torch.int64)
        qx = MapQuantizer(widths, fracs, bool(k.any()), learned.qx.rnd, learned.qx.overflow, "element")
        qw = MapQuantizer(ww, wf, True, "half_even", "saturate", "element")
        roles = {"data_in": qx, "weight": qw}
        b = mac.bias
        if b is not None:
            fb = learned.bias_frac(fw, _fixed_f(learned.qx.f))
            bq, bw, bf = constant_maps(b.detach(), fb)
            roles["bias"] = MapQuantizer(bw, bf, True, "half_even", "saturate", "element")
        if isinstance(mac, _Affine):  # a batch norm carries its folded map: mean 0, variance 1, eps 0
            mod.running_mean.zero_()
            mod.running_var.fill_(1.0)
            mod.eps = 0.0
        mod.weight.data.copy_(w)
        if b is not None:
            mod.bias.data.copy_(bq)
    mod.__dict__.update(qx=roles["data_in"], qw=roles["weight"], qb=roles.get("bias"), _cache=None)
    return {r: qq.precision for r, qq in roles.items()}
