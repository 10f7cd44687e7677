"""Passes over a QGraph: analysis (annotate) and transforms (return a new graph)."""

from passes.base import Pass, PassError, PassResult, Pipeline

__all__ = ["Pass", "PassError", "PassResult", "Pipeline"]
