"""The loader's error type, shared by :mod:`graph.serialize` and :mod:`graph.loadcheck`."""

from __future__ import annotations


class SerializationError(ValueError):
    """A graph cannot be written or read without running code; the message names the node/module."""
