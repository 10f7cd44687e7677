"""Quantize transform: config resolution, number formats, quantized modules, the pass."""

from passes.transforms.quantize.config import IntegerQ, MinifloatQ, NoQuant, QuantizeConfig
from passes.transforms.quantize.quantize_pass import QUANT_RULES, QuantizePass, quantizable_nodes
from passes.transforms.quantize.quantizers import FORMATS, integer_quantize, minifloat_quantize
from passes.transforms.quantize.summary import SummaryPass

__all__ = [
    "FORMATS",
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
