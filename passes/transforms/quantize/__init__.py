"""Quantize transform: config resolution, number formats, quantized modules, the pass."""

from typing import Any

import torch

from qfx.graph.trace import QGraph, trace
from qfx.passes.transforms.quantize.config import IntegerQ, MinifloatQ, NoQuant, QuantizeConfig
from qfx.passes.transforms.quantize.formats import FORMATS, NumberFormat, register_format
from qfx.passes.transforms.quantize.quantize_pass import QUANT_RULES, QuantizePass, quantizable_nodes
from qfx.passes.transforms.quantize.quantizers import integer_quantize, minifloat_quantize
from qfx.passes.transforms.quantize.summary import SummaryPass


def quantize(
    model_or_graph: torch.nn.Module | QGraph, config: QuantizeConfig | dict[str, Any], example_inputs: Any = None
) -> QGraph:
    """``quantize(nn.Module | QGraph, config, example_inputs=None) -> QGraph``, as torch.ao users expect:
    a plain module is traced first (``example_inputs`` required); the caller's model is never changed."""
    g = model_or_graph
    if not isinstance(g, QGraph):
        if example_inputs is None:
            raise ValueError("quantize(model, config, example_inputs): a plain nn.Module needs example inputs to trace")
        g = trace(g, example_inputs)
    return QuantizePass(config)(g).graph


__all__ = [
    "quantize",
    "FORMATS",
    "NumberFormat",
    "register_format",
    "QUANT_RULES",
    "IntegerQ",
    "MinifloatQ",
    "NoQuant",
    "QuantizeConfig",
    "QuantizePass",
    "SummaryPass",
    "integer_quantize",
    "minifloat_quantize",
    "quantizable_nodes",
]
