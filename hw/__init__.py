"""Hardware estimates: average bitwidth, memory density, memory bytes, BOPs."""

from qfx.hw.estimates import (
    TensorBits,
    average_bitwidth,
    bops,
    hw_metrics,
    memory_bytes,
    memory_density,
    tensor_bits,
)

__all__ = [
    "TensorBits",
    "average_bitwidth",
    "bops",
    "hw_metrics",
    "memory_bytes",
    "memory_density",
    "tensor_bits",
]
