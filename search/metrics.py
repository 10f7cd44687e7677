"""Metric registry: every metric a search can score, registered once.

A :class:`Metric` names its kind (``software``: measured by running the model; ``hardware``:
estimated from the quantized graph's metadata), its natural direction and a description (shown by
``qfx search --help`` and the README). Every trial records the classification metrics, per-sample FLOPs/MACs
and the hw/ estimates; every other metric has a ``measure`` function (the runtime ones are in
:mod:`qfx.search.measure`), called only in searches that ask for it. Config validation,
the evaluator and the CLI help all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from qfx.hw import fpga
from qfx.search import measure as M

if TYPE_CHECKING:
    import torch

    from qfx.graph.trace import QGraph

Kind = Literal["software", "hardware"]


@dataclass(frozen=True)
class MetricContext:
    """What a ``measure`` function sees for one trial: the quantized graph, its logits on the evaluation
    samples, the labels, and the evaluator (its pristine graph, split, device)."""

    graph: QGraph
    logits: torch.Tensor
    labels: torch.Tensor
    evaluator: Any


@dataclass(frozen=True)
class Metric:
    """``measure(ctx)``: the metric's value, or a dict of the values of its group (one call fills them all:
    ``latency`` also records ``latency_per_sample``); None for the values every trial records (classification
    metrics, FLOPs, the hw/ estimates). ``varies``: a second measurement gives another value (timing, energy),
    so such trials are never answered from memory. ``available(device)``: None, or why it cannot be measured."""

    name: str
    kind: Kind
    direction: Literal["maximize", "minimize"]
    description: str
    measure: Callable[[MetricContext], float | dict[str, float]] | None = None
    varies: bool = False
    available: Callable[[str], str | None] | None = None


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric; a second registration under the same name raises."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> Metric:
    return METRICS.pop(name)


def check_metrics(names: list[str] | dict[str, Any]) -> None:
    """ValueError naming unknown metrics and listing the registered ones."""
    bad = [k for k in names if k not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; available: {', '.join(METRICS)}")


for _m in (  # fmt: skip
    Metric("accuracy", "software", "maximize", "top-1 accuracy on the evaluation samples"),
    Metric("loss", "software", "minimize", "mean cross-entropy"),
    Metric("precision", "software", "maximize", "precision, support-weighted over classes"),
    Metric("recall", "software", "maximize", "recall, support-weighted"),
    Metric("f1", "software", "maximize", "F1, support-weighted"),
    Metric("precision_macro", "software", "maximize", "precision, unweighted class mean"),
    Metric("recall_macro", "software", "maximize", "recall, unweighted class mean"),
    Metric("f1_macro", "software", "maximize", "F1, unweighted class mean"),
    Metric("latency", "software", "minimize", "median forward time of one batch (ms)", M.latency_metrics, True),
    Metric(
        "latency_per_sample", "software", "minimize", "median forward time per sample (ms)", M.latency_metrics, True
    ),
    Metric(
        "energy_per_sample",
        "software",
        "minimize",
        "GPU energy per sample (J) from NVML; CUDA runs only",
        M.gpu_energy_metrics,
        True,
        M.needs_cuda,
    ),
    Metric(
        "cpu_time",
        "software",
        "minimize",
        "process CPU time of the evaluation forward pass, all threads (ms)",
        M.resource_metrics,
        True,
    ),
    Metric(
        "cpu_utilization",
        "software",
        "minimize",
        "CPU time / wall time of that pass (1.0 = one core busy)",
        M.resource_metrics,
        True,
    ),
    Metric(
        "peak_memory",
        "software",
        "minimize",
        "bytes allocated during evaluation (CUDA allocator / CPU RSS)",
        M.resource_metrics,
        True,
    ),
    Metric(
        "cpu_energy",
        "software",
        "minimize",
        "CPU package energy per sample (J) from RAPL, where readable",
        M.cpu_energy_metrics,
        True,
        M.needs_rapl,
    ),
    Metric("flops", "software", "minimize", "FLOPs of one forward pass over one sample"),
    Metric("macs", "software", "minimize", "MACs of one forward pass over one sample"),
    Metric("average_bitwidth", "hardware", "minimize", "element-weighted mean width (see hw/)"),
    Metric("memory_density", "hardware", "maximize", "compare_to / average_bitwidth"),
    Metric("memory_bytes", "hardware", "minimize", "bit-packed bytes of the counted tensors"),
    Metric("model_size", "hardware", "minimize", "bit-packed bytes of the parameters at their precision"),
    Metric("bops", "hardware", "minimize", "bit operations per sample of MAC ops"),
):
    register_metric(_m)


def _fpga(fn: str) -> Callable[[MetricContext], float]:
    def measure(ctx: MetricContext) -> float:

        return float(getattr(fpga, fn)(ctx.graph))

    return measure


for _m in (
    Metric("ebops", "hardware", "minimize", "effective BOPs: used bits of each weight x its input width (hw/fpga)",
           _fpga("ebops")),
):  # fmt: skip
    register_metric(_m)


def _timing(ctx: MetricContext) -> dict[str, float]:
    """The whole network's RTL at the evaluator's clock (``[fpga] clock_ns``; None: combinational)."""
    return fpga.fpga_timing(ctx.graph, getattr(ctx.evaluator, "clock_ns", None)).metrics()


for _m in (  # one trace of the whole network per configuration (and clock) serves all of these
    Metric("fpga_luts", "hardware", "minimize", "da4ml's LUT estimate of the whole network's RTL (hw/fpga)", _timing),
    Metric("fpga_latency", "hardware", "minimize", "adder depth of the whole network's logic, as exported (hw/fpga)",
           _timing),
    Metric("fpga_ffs", "hardware", "minimize", "flip-flops of its pipeline at [fpga] clock_ns (hw/fpga)", _timing),
    Metric("fpga_latency_cycles", "hardware", "minimize", "its pipeline's latency in clock cycles (II = 1)", _timing),
    Metric("fpga_latency_ns", "hardware", "minimize",
           "its latency in ns: cycles x clock_ns (combinational: depth x the delay model's adder level)", _timing),
):  # fmt: skip
    register_metric(_m)


def scalarize(values: Callable[[str], float], metrics: dict[str, Any], signed: bool = False) -> float:
    """The one scalar objective: sum of ``scale * value`` over the configured metrics (``sum_scaled_metrics``).

    ``values(name)`` returns a metric's value; ``metrics`` maps names to specs with ``scale`` and
    ``direction``. ``signed=True`` negates metrics to minimise, giving one higher-is-better number for a
    multi-objective config (what compare-samplers ranks).
    """
    return sum(
        (-1.0 if signed and spec.direction == "minimize" else 1.0) * spec.scale * values(k)
        for k, spec in metrics.items()
    )


def violations(values: Callable[[str], float], constraints: dict[str, Any]) -> dict[str, float]:
    """Optuna's constraint convention, one number per bound, named ``metric<=max`` / ``metric>=min``:
    ``value - max`` / ``min - value``; a trial is feasible when every number is <= 0. ``constraints`` maps
    metric names to bounds with ``max``/``min``."""
    out = {}
    for k, b in constraints.items():
        if b.max is not None:
            out[f"{k}<={b.max:g}"] = values(k) - b.max
        if b.min is not None:
            out[f"{k}>={b.min:g}"] = b.min - values(k)
    return out
