"""Exports of a quantized graph: QONNX, ONNX QDQ, hls4ml and a portable checkpoint."""

from qfx.passes.export.ir import ExportError, Layer, build_ir, supported

__all__ = ["ExportError", "Layer", "build_ir", "supported"]
