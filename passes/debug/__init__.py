"""Debugging a quantized graph: per-node numerics against its float source and graph views."""

from qfx.passes.debug.numerics import NumericsPass, error_stats, numerics_table, quant_stats

__all__ = ["NumericsPass", "error_stats", "numerics_table", "quant_stats"]
