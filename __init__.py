"""qfx: an FX pass pipeline for PyTorch that analyses models and searches mixed-precision integer quantizations.

The repository root is the ``qfx`` package: ``qfx.graph`` (trace, metadata, registry), ``qfx.passes``
(analysis, quantize, export, debug), ``qfx.search`` (Optuna search), ``qfx.hw`` (estimates), ``qfx.zoo``
(models, datasets, training) and ``qfx.cli`` (the ``qfx`` command).
"""

__version__ = "0.2.0"
