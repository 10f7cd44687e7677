"""Analysis passes: annotate metadata, never change the model."""

from qfx.passes.analysis.calibrate import CalibrationPass
from qfx.passes.analysis.flops import FLOP_RULES, FlopsPass
from qfx.passes.analysis.params import ParamsPass
from qfx.passes.analysis.report import ReportPass
from qfx.passes.analysis.shapes import ShapePass
from qfx.passes.base import Pipeline

__all__ = ["CalibrationPass", "FLOP_RULES", "FlopsPass", "ParamsPass", "ReportPass", "ShapePass", "analyze"]


def analyze(graph):  # noqa: ANN001, ANN201 - thin convenience
    """Run shapes -> flops -> params on ``graph`` (in place) and return it."""
    return Pipeline([ShapePass(), FlopsPass(), ParamsPass()])(graph).graph
