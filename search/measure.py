"""Runtime measurements: latency (CPU perf_counter / CUDA events), GPU energy through NVML, CPU energy
through the Linux powercap (RAPL) counters, CPU time/utilisation and peak memory of one evaluation.

Nothing here invents a number: where a GPU or NVML is absent, energy is reported as
absent with the reason.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qfx.zoo.train import predict


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


RAPL = Path("/sys/class/powercap")


def _rapl_packages() -> list[Path]:
    """Package-level RAPL zones (``intel-rapl:N``; AMD exposes the same interface)."""
    return sorted(p for p in RAPL.glob("intel-rapl:*") if p.name.count(":") == 1) if RAPL.is_dir() else []


def rapl_status() -> dict[str, Any]:
    """Whether CPU energy can be measured here: ``{"available": True, "zones": [...]}`` or the reason it cannot."""
    zones = _rapl_packages()
    if not zones:
        return {"available": False, "reason": f"no RAPL powercap zones under {RAPL} (not an Intel/AMD host, or a VM)"}
    try:
        for z in zones:
            int((z / "energy_uj").read_text())
    except OSError as e:
        return {"available": False, "reason": f"RAPL counters not readable ({e.strerror}: {e.filename}); needs root"}
    return {"available": True, "zones": [str(z) for z in zones]}


def _rapl_read(zones: list[Path]) -> list[int]:
    return [int((z / "energy_uj").read_text()) for z in zones]


def cpu_energy(fn: Callable[[], Any], repeats: int = 20) -> dict[str, Any]:
    """Energy (J) of ``repeats`` calls from the RAPL package counters (all packages, counter wrap handled).

    The counters measure the whole package, so other load on the machine is included: a measurement,
    not an attribution. ``{"available": False, "reason": ...}`` where the counters cannot be read.
    """
    status = rapl_status()
    if not status["available"]:
        return status
    zones = _rapl_packages()
    ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
    e0, t0 = _rapl_read(zones), time.perf_counter()
    with torch.no_grad():
        for _ in range(repeats):
            fn()
    e1, dt = _rapl_read(zones), time.perf_counter() - t0
    uj = sum((b - a) % r for a, b, r in zip(e0, e1, ranges, strict=True))
    return {"available": True, "energy_j": uj / 1e6, "energy_per_call_j": uj / 1e6 / repeats,
            "power_w": uj / 1e6 / dt if dt > 0 else float("nan"), "seconds": dt}  # fmt: skip


def _proc_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_resources(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once; return its result and what it cost: ``cpu_time_s`` (process CPU time, all threads),
    ``wall_s``, ``cpu_utilization`` (cpu_time / wall: 1.0 = one core busy) and ``peak_memory_bytes``
    (CUDA: peak allocated by torch's caching allocator above the start; CPU: the process's peak resident
    set above its resident set at the start, from /proc, with the peak mark reset first)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base_kb = _proc_kb("VmRSS") if _reset_peak_rss() else None
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    if cuda:
        peak = float(torch.cuda.max_memory_allocated() - base)
    else:
        hwm = _proc_kb("VmHWM")
        peak = float(max(hwm - base_kb, 0) * 1024) if hwm is not None and base_kb is not None else float("nan")
    return out, {"cpu_time_s": cpu, "wall_s": wall, "cpu_utilization": cpu / wall if wall > 0 else float("nan"),
                 "peak_memory_bytes": peak}  # fmt: skip


# --- the built-in runtime metrics' measure functions (registered in qfx.search.metrics): each takes the trial's
# MetricContext (graph, logits, labels, evaluator) and returns its group of values, measured once per trial


def _latency_batch(ctx: Any) -> torch.Tensor:
    ev = ctx.evaluator
    return ev.x[: ev.latency.batch_size]


def latency_metrics(ctx: Any) -> dict[str, float]:
    """``latency`` (median ms of one batch's forward), ``latency_per_sample`` and ``latency_iqr``."""
    ev, xb = ctx.evaluator, _latency_batch(ctx)
    lat = measure_latency(lambda: ctx.graph.gm(xb), ev.latency.warmup, ev.latency.repeats, ev.device)
    return {"latency": lat["median_ms"], "latency_per_sample": lat["median_ms"] / len(xb), "latency_iqr": lat["iqr_ms"]}


def _energy(ctx: Any, meter: Callable[..., dict[str, Any]], what: str) -> dict[str, Any]:
    """``meter`` over repeated forwards of one latency batch, plus ``per_sample`` joules."""
    xb = _latency_batch(ctx)
    e = meter(lambda: ctx.graph.gm(xb), repeats=max(ctx.evaluator.latency.repeats, 20))
    if not e["available"]:
        raise RuntimeError(f"{what} energy not measured: {e['reason']}")
    return {**e, "per_sample": e["energy_per_call_j"] / len(xb)}


def gpu_energy_metrics(ctx: Any) -> dict[str, float]:
    e = _energy(ctx, gpu_energy, "GPU")
    return {"energy_per_sample": e["per_sample"], "power_w": e["power_w"]}


def cpu_energy_metrics(ctx: Any) -> dict[str, float]:
    return {"cpu_energy": _energy(ctx, cpu_energy, "CPU")["per_sample"]}


def resource_metrics(ctx: Any) -> dict[str, float]:
    """CPU time, utilisation and peak memory of the evaluation forward pass (run once more, measured)."""

    ev = ctx.evaluator
    _, c = measure_resources(lambda: predict(ctx.graph.gm, ev.x), ev.device)
    return {
        "cpu_time": 1e3 * c["cpu_time_s"],
        "cpu_utilization": c["cpu_utilization"],
        "peak_memory": c["peak_memory_bytes"],
    }


def needs_cuda(device: str) -> str | None:
    if device.startswith("cuda"):
        return None
    return f'needs a CUDA GPU with NVML (accelerator = "cuda"); this run is on {device}'


def needs_rapl(device: str) -> str | None:
    s = rapl_status()
    return None if s["available"] else f"cannot be measured on this machine: {s['reason']}"
