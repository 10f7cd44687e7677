"""Runtime measurements: latency (CPU perf_counter / CUDA events) and GPU energy through NVML.

Nothing here invents a number: where a GPU or NVML is absent, energy is reported as
absent with the reason.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def measure_latency(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20, device: str = "cpu") -> dict[str, float]:
    """Median, interquartile range and min of ``fn()`` wall time in milliseconds."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    cuda = device.startswith("cuda")
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times: list[float] = []
        if cuda:
            torch.cuda.synchronize()
            for _ in range(repeats):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {
        "median_ms": statistics.median(times),
        "iqr_ms": q[2] - q[0],
        "min_ms": min(times),
        "repeats": float(repeats),
    }


def gpu_energy(fn: Callable[[], Any], repeats: int = 50, device_index: int = 0) -> dict[str, Any]:
    """Energy (J) and mean power (W) of ``repeats`` calls from NVML's energy counter.

    Returns ``{"available": False, "reason": ...}`` without a CUDA GPU or pynvml.
    """
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA GPU"}
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return {"available": False, "reason": "pynvml not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        torch.cuda.synchronize()
        e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)  # mJ
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(repeats):
                fn()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        joules = (e1 - e0) / 1e3
        return {
            "available": True,
            "energy_j": joules,
            "energy_per_call_j": joules / repeats,
            "power_w": joules / dt if dt > 0 else float("nan"),
            "seconds": dt,
        }
    except Exception as e:  # noqa: BLE001 - NVML errors vary by driver
        return {"available": False, "reason": f"NVML error: {e}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
