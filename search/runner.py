"""Per-trial evaluation: rebuild from the pristine graph, (optionally fine-tune), measure.

Every trial starts from the same analysed, never-modified graph (no re-tracing), and every
metric is computed afresh from this trial's predictions only.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from qfx.graph.meta import FLOPS, PARAMS, SHAPES
from qfx.graph.trace import QGraph
from qfx.hw.estimates import hw_metrics
from qfx.passes.debug.numerics import record
from qfx.passes.transforms.quantize.quantize_pass import QuantizePass
from qfx.passes.transforms.quantize.rebuild import Rebuilder
from qfx.search.config import AvgBitwidthRunner, LatencyRunner, QATRunner
from qfx.search.metrics import METRICS, MetricContext, check_metrics
from qfx.zoo.data import Split
from qfx.zoo.train import PRF, classification_metrics, predict


@dataclass
class TrialResult:
    software: dict[str, float]
    hardware: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        if name in self.software:
            return self.software[name]
        if name in self.hardware:
            return self.hardware[name]
        raise KeyError(f"metric {name!r} was not measured in this trial")


class Evaluator:
    """Builds and scores one quantized graph per config from a pristine analysed graph."""

    def __init__(
        self,
        pristine: QGraph,
        eval_split: Split,
        num_classes: int,
        metrics: list[str],
        hw: AvgBitwidthRunner | None = None,
        latency: LatencyRunner | None = None,
        qat: QATRunner | None = None,
        train_split: Split | None = None,
        device: str = "cpu",
        seed: int = 0,
        clock_ns: float | None = None,
    ) -> None:
        check_metrics(metrics)
        missing = {SHAPES, FLOPS, PARAMS} - pristine.analyses
        if missing:
            raise ValueError(f"the pristine graph lacks analyses {sorted(missing)}; run analyze(graph) first")
        self.pristine = pristine
        self.split = eval_split
        self.num_classes = num_classes
        self.metrics = list(metrics)
        self.hw = hw or AvgBitwidthRunner()
        self.latency = latency or LatencyRunner()
        self.qat = qat or QATRunner()
        self.train_split = train_split
        self.device = device
        self.seed = seed
        self.clock_ns = clock_ns  # the FPGA clock the fpga_ffs / fpga_latency_* metrics assume (None: combinational)
        for name in self.metrics:
            m = METRICS[name]
            why = m.available(device) if m.available is not None else None
            if why:
                raise ValueError(f"metric {name!r} {why}")
        if self.qat.steps and train_split is None:
            raise ValueError("QAT fine-tuning needs a training split")
        batch = pristine.meta(next(n for n in pristine.nodes if n.op == "placeholder")).out_shape[0]
        uncounted = [m.name for m in pristine.metas() if m.flops is None or m.macs is None]
        if uncounted and {"flops", "macs"} & set(metrics):
            raise ValueError(
                f"metrics 'flops'/'macs' are unavailable for this graph: node(s) {uncounted[:5]} have no FLOP rule "
                "(register one with qfx.passes.analysis.flops.flop_rule, or drop the metric); never counted as zero"
            )
        tot = {"flops": sum(m.flops or 0 for m in pristine.metas()), "macs": sum(m.macs or 0 for m in pristine.metas())}
        self._per_sample = {} if uncounted else {k: v / batch for k, v in tot.items()}
        self._prf = any(m in PRF for m in metrics)  # scikit-learn P/R/F1 only when asked for
        self.x = eval_split.x.to(device)
        self.y = eval_split.y
        self._ref_outs: dict[str, torch.Tensor] | None = None  # float node outputs on the SQNR batch
        # a configuration drawn again is not evaluated again when every metric is a function of it (no timing,
        # energy or resource metric, whose value a second measurement would change)
        self.memo: dict[str, TrialResult] | None = None if any(METRICS[m].varies for m in self.metrics) else {}
        self._rebuilder = Rebuilder(pristine)  # without fine-tuning: only what a configuration changes is rebuilt

    @contextmanager
    def quantized(self, config: Any) -> Iterator[QGraph]:
        """The pristine graph quantized with ``config``, in eval mode, the caller's until the block exits. Without
        fine-tuning it is lent by the :class:`Rebuilder` (float weights read-only); with it, a new graph."""
        if self.qat.steps:
            q = QuantizePass(config)(self.pristine).graph
            q.gm.eval()
            yield q
            return
        with self._rebuilder.lease(config) as q:
            yield q

    def scored_graph(self, config: Any, copy_weights: bool = True) -> QGraph:
        """A new graph that is exactly what a trial of ``config`` scored: quantized and, with QAT, fine-tuned
        the same way (same seed, steps and batches), in eval mode. What the outputs save and export.
        ``copy_weights=False`` (PTQ only) shares the pristine float weights, read-only."""
        q = QuantizePass(config, copy_weights=copy_weights or bool(self.qat.steps))(self.pristine).graph
        if self.qat.steps:
            self._finetune(q)
        q.gm.eval()
        return q

    SQNR_BATCH = 32

    def weakest_nodes(self, q: QGraph, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` nodes whose outputs have the lowest SQNR vs the float graph on one small batch."""

        xb = (self.x[: self.SQNR_BATCH],)
        if self._ref_outs is None:
            self._ref_outs = record(self.pristine.gm, xb).outs
        rows = []
        for name, out in record(q.gm, xb).outs.items():
            ref = self._ref_outs.get(name)
            if ref is None or ref.shape != out.shape:
                continue
            noise = float(((out - ref).double() ** 2).sum())
            if noise > 0:
                signal = float((ref.double() ** 2).sum())
                rows.append((10 * math.log10(signal / noise) if signal > 0 else -math.inf, name))
        rows.sort()
        return [{"node": n, "sqnr_db": round(s, 2)} for s, n in rows[:k]]

    def _finetune(self, q: QGraph) -> None:
        ts = self.train_split
        assert ts is not None
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(q.gm.parameters(), lr=self.qat.lr)
        q.gm.train()
        for _ in range(self.qat.steps):
            idx = torch.randint(0, len(ts), (self.qat.batch_size,), generator=g)
            loss = F.cross_entropy(q.gm(ts.x[idx].to(self.device)), ts.y[idx].to(self.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        q.gm.eval()

    def evaluate(self, config: Any, hardware: dict[str, float] | None = None) -> TrialResult:
        """Quantize the pristine graph with ``config`` and measure every requested metric (a configuration seen
        before returns its recorded result, ``timings`` = ``{"cached": 1}``, unless a metric is measured each time).
        ``hardware``: what :meth:`hardware` returned for this ``config`` (a budget check just before), not measured
        again."""
        key = json.dumps(config, sort_keys=True, default=str) if self.memo is not None else ""
        if self.memo is not None and key in self.memo:
            r = self.memo[key]
            return TrialResult(dict(r.software), dict(r.hardware), {"cached": 1.0})
        res = self._evaluate(config, hardware)
        if self.memo is not None:
            self.memo[key] = res
        return res

    def _measure(self, ctx: MetricContext, into: dict[str, float], kind: str) -> None:
        """The requested metrics of ``kind`` that have a measure function, each function called once."""
        done: set[Any] = set()
        for name in self.metrics:
            m = METRICS[name]
            if m.measure is None or m.kind != kind or m.measure in done:
                continue
            done.add(m.measure)
            v = m.measure(ctx)
            into.update({k: float(x) for k, x in v.items()} if isinstance(v, dict) else {name: float(v)})

    def hardware(self, config: Any) -> dict[str, float]:
        """The hardware metrics of ``config`` without running the model (functions of the configuration:
        what a budget can be checked on before an evaluation is spent)."""
        with self.quantized(config) as q:
            hw = hw_metrics(q, self.hw.compare_to, self.hw.activations)
            self._measure(MetricContext(q, torch.empty(0), self.y, self), hw, "hardware")
        return dict(hw)

    def _evaluate(self, config: Any, checked: dict[str, float] | None) -> TrialResult:
        checked = None if self.qat.steps else checked  # fine-tuned weights: measured on what was scored
        t0 = time.perf_counter()
        with self.quantized(config) as q:
            t1 = time.perf_counter()
            if self.qat.steps:
                self._finetune(q)
            t2 = time.perf_counter()
            logits = predict(q.gm, self.x).cpu()
            sw = classification_metrics(logits, self.y, self.num_classes, full=self._prf)
            sw.pop("confusion_matrix", None)
            sw.update(self._per_sample)
            ctx = MetricContext(q, logits, self.y, self)
            self._measure(ctx, sw, "software")
            t3 = time.perf_counter()
            hw = dict(checked) if checked is not None else hw_metrics(q, self.hw.compare_to, self.hw.activations)
            if checked is None:  # else measured by the budget check
                self._measure(ctx, hw, "hardware")
        t4 = time.perf_counter()
        timings = {"rebuild": t1 - t0, "qat": t2 - t1, "evaluate": t3 - t2, "hw": t4 - t3}
        return TrialResult(sw, hw, timings)  # weakest nodes: for the best configurations only (write_outputs)
