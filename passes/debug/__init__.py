"""Debugging a quantized graph: per-node numerics against its float source and graph views."""

from qfx.passes.debug.numerics import NumericsPass, debug_against_float, error_stats, numerics_table, quant_stats

__all__ = ["NumericsPass", "debug_against_float", "error_stats", "numerics_table", "quant_stats"]
