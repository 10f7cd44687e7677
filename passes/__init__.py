"""Passes over a QGraph: analysis (annotate) and transforms (return a new graph)."""

from qfx.passes.base import Pass, PassError, PassResult, Pipeline
from qfx.passes.export import portable as _portable  # noqa: F401 - registers the QGraph.save hook

__all__ = ["Pass", "PassError", "PassResult", "Pipeline"]
