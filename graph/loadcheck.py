"""Checks of a saved graph's tensors and records against the modules that own them (the loader's second half).

:mod:`graph.serialize` validates each file against its schema; this module checks the files against each
other, before the graph is handed out:

- ``weights.safetensors``: the header is parsed here (bounded length, no duplicate names, dtypes from a
  fixed set, every tensor's byte range inside the file and of the size its shape and dtype declare), then
  a file up to 64 MiB is read in one call, a larger one tensor by tensor from a memory map as the modules
  ask; a tensor no module uses is refused, as is a NaN or infinite value in a floating tensor (named).
- shapes: every module that owns tensors is run on meta-device tensors of the recorded input shapes
  (no memory, no arithmetic), so a 3x3 weight in a Linear(64, 10), a float16 weight beside float32
  inputs, or a meta.json input shape the weights cannot read fails naming the node; its output shape
  must equal the recorded one.
- records: each node's ``op``/``target``/``op_type`` must be what the module tree computes (an add
  module recorded as ``sub`` is refused), and a quantized module's precisions must be the record's.
- example inputs (``inputs.pt``): tensors of the placeholders' recorded shapes and dtypes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from qfx.graph.errors import SerializationError

MAX_HEADER = 100 * 2**20  # bytes of a safetensors header (safetensors' own limit)
READ_AT_ONCE = 64 * 2**20  # a checked file up to this size is read in one call; larger ones are memory-mapped
MAX_NUMEL = 2**34  # elements a recorded shape may declare (64 GiB of float32): beyond, a file is not a model

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


class LoadCheckError(SerializationError):
    """A file disagrees with the graph; the message names the file, the tensor or node and what is wrong."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise LoadCheckError(f"tensor name {k[:80]!r} appears twice in the header")
        seen[k] = v
    return seen


def read_header(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a safetensors file, checked against its size (nothing else is read)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoadCheckError(f"{path}: shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER or 8 + n > size:
            raise LoadCheckError(f"{path}: header length {n:,} exceeds the file ({size:,} bytes) or {MAX_HEADER:,}")
        raw = f.read(n)
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except LoadCheckError as e:
        raise LoadCheckError(f"{path}: {e}") from None
    except ValueError as e:
        raise LoadCheckError(f"{path}: header is not JSON ({str(e)[:120]})") from None
    if not isinstance(header, dict):
        raise LoadCheckError(f"{path}: header is not a table of tensors")
    data = size - 8 - n
    out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        out[k] = _entry(path, k, v, data)
    return out


def _entry(path: Path, k: str, v: Any, data: int) -> tuple[torch.dtype, tuple[int, ...]]:
    where = f"{path}: tensor {k[:80]!r}"
    if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
        raise LoadCheckError(f"{where}: entry must hold exactly dtype, shape, data_offsets")
    dt, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
    if not (isinstance(dt, str) and dt in DTYPES):
        raise LoadCheckError(f"{where}: dtype {str(dt)[:20]!r} not one of {', '.join(DTYPES)}")
    if not (isinstance(shape, list) and all(type(s) is int and 0 <= s for s in shape)):
        raise LoadCheckError(f"{where}: shape must be a list of non-negative integers")
    numel = math.prod(shape)
    if numel > MAX_NUMEL:
        raise LoadCheckError(f"{where}: declares {numel:,} elements (more than {MAX_NUMEL:,})")
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
        raise LoadCheckError(f"{where}: data_offsets must be two integers")
    a, b = offs
    nbytes = numel * DTYPES[dt].itemsize
    if not (0 <= a <= b <= data) or b - a != nbytes:
        raise LoadCheckError(
            f"{where}: bytes {a}..{b} do not hold {nbytes:,} bytes of {dt} {tuple(shape)} inside the file's {data:,}"
        )
    return DTYPES[dt], tuple(shape)


class LazyTensors(Mapping[str, torch.Tensor]):
    """The tensors of a checked safetensors file, read one at a time (memory-mapped) when first asked for;
    records which were used and refuses NaN/inf in floating tensors, naming the tensor."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        self.header = read_header(path)
        self._all: dict[str, torch.Tensor] | None = None
        try:
            if path.stat().st_size <= READ_AT_ONCE:  # small files: one read beats one call per tensor
                from safetensors.torch import load

                self._all = load(path.read_bytes())
            else:
                self._file = safe_open(str(path), framework="pt")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for bad files
            raise LoadCheckError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from e
        if self._all is not None:
            _all_finite(path, self._all)  # one pass over every floating tensor
        self._read: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._read:
            if key not in self.header:
                raise KeyError(key)
            t = self._all[key] if self._all is not None else self._file.get_tensor(key)
            if self._all is None:
                _finite(self.path, key, t)
            self._read[key] = t
        return self._read[key]

    def __contains__(self, key: object) -> bool:
        return key in self.header

    def __iter__(self) -> Iterator[str]:
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)

    def check_all_used(self) -> None:
        unused = [k for k in self.header if k not in self._read]
        if unused:
            raise LoadCheckError(
                f"{self.path}: {len(unused)} tensor(s) no module or attribute uses ({', '.join(map(repr, unused[:3]))}"
                f"{' ...' if len(unused) > 3 else ''}); a saved graph holds exactly its own tensors"
            )


def _all_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse NaN/inf in any floating tensor of the table (checked together per dtype, named on failure)."""
    by: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors.values():
        if t.is_floating_point() and t.numel():
            by.setdefault(t.dtype, []).append(t.reshape(-1))
    if all(bool(torch.isfinite(torch.cat(ts)).all()) for ts in by.values()):
        return
    finite_table(path, tensors)  # names the first bad tensor


def _finite(path: Path, key: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "infinite"
        raise LoadCheckError(f"{path}: tensor {key[:80]!r} holds {bad} values; weights must be finite")


def finite_table(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fully read table (legacy ``weights.pt``) with the same finiteness check, naming the first bad tensor."""
    for k, t in tensors.items():
        _finite(path, k, t)
    return tensors


# ---- records and shapes against the modules ---------------------------------------------------------


def _dtype(name: str | None) -> torch.dtype | None:
    if not name:
        return None
    t = getattr(torch, str(name).removeprefix("torch."), None)
    return t if isinstance(t, torch.dtype) else None


def _meta_tensor(shape: Any, dtype: str | None) -> torch.Tensor | None:
    if not (isinstance(shape, tuple) and all(type(s) is int and s >= 0 for s in shape)):
        return None
    if math.prod(shape) > MAX_NUMEL:
        raise LoadCheckError(f"shape {shape} declares more than {MAX_NUMEL:,} elements")
    return torch.empty(shape, dtype=_dtype(dtype) or torch.float32, device="meta")


def module_precisions(m: nn.Module) -> dict[str, Any] | None:
    """``{role: TensorPrecision}`` a quantized module runs with (None: not a quantized module)."""
    d = m.__dict__
    if isinstance(d.get("quantizers"), dict):
        return {r: q.precision for r, q in d["quantizers"].items()}
    qs = {r: d[k] for k, r in (("qx", "data_in"), ("qw", "weight"), ("qb", "bias")) if k in d}
    if not qs:
        return None
    return {r: q.precision for r, q in qs.items() if q is not None}


def check_records(gm: fx.GraphModule, metas: dict[str, Any], where: str) -> None:
    """Each record's op, target and op type are what the module tree computes; a quantized module's
    precisions are its record's."""
    from qfx.graph.registry import op_type, target_name

    modules = dict(gm.named_modules())
    for n in gm.graph.nodes:
        m = metas[n.name]
        got = {"op": n.op, "target": target_name(n, modules), "op_type": op_type(n, modules)}
        for k, v in got.items():
            if getattr(m, k) != v:
                raise LoadCheckError(
                    f"{where}: node {n.name!r}: {k} is {str(getattr(m, k))[:60]!r} but the saved graph runs {v[:60]!r}"
                )
        if n.op != "call_module":
            continue
        prec = module_precisions(modules[n.target])
        if prec is not None:
            rec = {r: p.key() for r, p in m.precision.items()}
            run = {r: p.key() for r, p in prec.items()}
            if rec != run:
                raise LoadCheckError(f"{where}: node {n.name!r}: precision {rec} differs from its module's {run}")


def _dtype_problem(params: set[str], state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> str | None:
    """A parameter that is not floating, or a floating tensor of another dtype than the node computes in."""
    for k, t in state.items():
        if k in params and not t.is_floating_point():
            return f"parameter {k!r} is {str(t.dtype).removeprefix('torch.')}, not a floating type"
        if dtype is not None and dtype.is_floating_point and t.is_floating_point() and t.dtype != dtype:
            return f"{k!r} is {str(t.dtype).removeprefix('torch.')} but the node computes in {dtype}"
    return None


def check_shapes(gm: fx.GraphModule, metas: dict[str, Any], where: str) -> None:
    """Every module that owns tensors, run on meta tensors of its inputs' recorded shapes, reads its weights
    and gives its recorded output shape; its floating tensors have the dtype it computes in (memoized per
    signature: repeated layers cost one run)."""
    seen: set[Any] = set()
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        mod = gm.get_submodule(n.target)
        params = dict(mod.named_parameters())
        state = {**params, **dict(mod.named_buffers())}
        m = metas[n.name]
        if not state:
            continue
        bad = _dtype_problem(set(params), state, _dtype(m.out_dtype))
        if bad:
            raise LoadCheckError(f"{where}: node {n.name!r} ({type(mod).__name__}): {bad}")
        fake = _fake_args(n, metas, where)
        if fake is None or m.out_shape is None:
            continue
        args, kwargs = fake
        sig = (type(mod), tuple((k, t.dtype, t.shape) for k, t in state.items()), _signature((args, kwargs)))
        if sig in seen:
            continue
        _run_on_meta(mod, state, args, kwargs, n.name, m, where)
        seen.add(sig)


def _signature(v: Any) -> Any:
    """A hashable summary of arguments: tensors by shape and dtype, containers by their items."""
    if isinstance(v, torch.Tensor):
        return ("T", v.shape, v.dtype)
    if isinstance(v, (list, tuple)):
        return tuple(_signature(x) for x in v)
    if isinstance(v, dict):
        return tuple((k, _signature(x)) for k, x in v.items())
    return repr(v)


def _fake_args(n: fx.Node, metas: dict[str, Any], where: str) -> tuple[Any, Any] | None:
    """The node's arguments with every node replaced by a meta tensor of its recorded shape and dtype
    (None when a producer's record is not one tensor shape)."""
    missing: list[str] = []

    def fake(a: fx.Node) -> Any:
        try:
            t = _meta_tensor(metas[a.name].out_shape, metas[a.name].out_dtype)
        except LoadCheckError as e:
            raise LoadCheckError(f"{where}: node {a.name!r}: recorded {e}") from None
        if t is None:
            missing.append(a.name)
        return t

    args, kwargs = fx.node.map_arg((n.args, n.kwargs), fake)
    return None if missing else (args, kwargs)


def _run_on_meta(mod: nn.Module, state: dict[str, torch.Tensor], args: Any, kwargs: Any, name: str, m: Any,
                 where: str) -> None:  # fmt: skip
    from torch.func import functional_call

    fake = {k: torch.empty(t.shape, dtype=t.dtype, device="meta") for k, t in state.items()}
    cache = mod.__dict__.get("_cache", None)
    try:
        with torch.no_grad():
            out = functional_call(mod, fake, tuple(args), dict(kwargs))
    except Exception as e:  # noqa: BLE001 - any failure on meta tensors is a shape or dtype mismatch
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in state.items())
        raise LoadCheckError(
            f"{where}: node {name!r} ({type(mod).__name__}) cannot run its tensors ({shapes}) on its recorded "
            f"input {list(m.in_shapes)}: {str(e).splitlines()[0][:160]}"
        ) from None
    finally:
        if "_cache" in mod.__dict__:
            mod.__dict__["_cache"] = cache
    if isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(m.out_shape):
        raise LoadCheckError(
            f"{where}: node {name!r} ({type(mod).__name__}) gives shape {tuple(out.shape)} from its tensors, "
            f"but its record says {m.out_shape}"
        )


def check_inputs(path: Path, inputs: tuple[Any, ...], gm: fx.GraphModule, metas: dict[str, Any]) -> None:
    """Example inputs are tensors of the placeholders' recorded shapes and dtypes, each backed by its own
    storage (no stride-0 expansion of a few bytes into a huge tensor)."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, (x, n) in enumerate(zip(inputs, phs, strict=False)):
        if not isinstance(x, torch.Tensor):
            continue
        rec = metas[n.name].out_shape
        if rec is not None and tuple(x.shape) != tuple(rec):
            raise LoadCheckError(f"{path}: input {i} has shape {tuple(x.shape)}; placeholder {n.name!r} records {rec}")
        if x.numel() > MAX_NUMEL or (x.numel() and x.untyped_storage().nbytes() < x.numel() * x.element_size()):
            raise LoadCheckError(f"{path}: input {i} of shape {tuple(x.shape)} is not backed by its own data")
        dt = _dtype(metas[n.name].out_dtype)
        if dt is not None and x.dtype != dt:
            raise LoadCheckError(f"{path}: input {i} is {x.dtype}; placeholder {n.name!r} records {dt}")
        if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
            raise LoadCheckError(f"{path}: input {i} holds NaN or infinite values")
