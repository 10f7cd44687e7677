"""Exports of a quantized graph: QONNX, ONNX QDQ, hls4ml and a portable checkpoint."""

from qfx.passes.export.ir import SUPPORTED, ExportError, Layer, build_ir

__all__ = ["SUPPORTED", "ExportError", "Layer", "build_ir"]
