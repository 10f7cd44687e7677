"""FX tracing into a :class:`QGraph`: a GraphModule plus typed node metadata."""

from __future__ import annotations

import contextlib
import copy
import gc
import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydantic_core
import torch
import torch.fx as fx
import torch.nn as nn

from qfx.graph.background import Beside, beside
from qfx.graph.copying import copy_value
from qfx.graph.dump import to_dict, to_networkx, to_table
from qfx.graph.loadcheck import check_inputs
from qfx.graph.meta import NodeMeta, get_meta, set_meta
from qfx.graph.registry import op_type, registered_ops, target_name
from qfx.graph.safeio import check_out_dir, inside
from qfx.graph.serialize import SerializationError, dump_graph_module, load_graph_dir, save_tensors


class TracingError(RuntimeError):
    """The model is not symbolically traceable; the message says where and what to mark as leaf."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Sequence[type] = (), leaf_functions: Sequence[Callable] = ()) -> None:
        ext = registered_ops()  # op types added with register_op_type: their classes and functions are leaves
        funcs = [k for k in ext if callable(k) and not isinstance(k, type) and k not in leaf_functions]
        super().__init__(autowrap_functions=(*leaf_functions, *funcs))
        self._leaf_types = (*leaf_modules, *(k for k in ext if isinstance(k, type)))
        self._where: list[tuple[str, str]] = []
        self.failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable, args: Any, kwargs: Any) -> Any:
        self._where.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # innermost module where tracing broke
                self.failed_in = self._where[-1]
            raise
        finally:
            self._where.pop()


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch and this package: ``file:line: code``."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        f = fr.filename.replace("\\", "/")
        if "/torch/" in f or f.endswith("graph/trace.py"):
            continue
        return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}"
    return "<unknown location>"


SAVE_HOOKS: list[Callable[[QGraph, Path], None]] = []
"""Extra writers run by :meth:`QGraph.save` (the export package adds the portable checkpoint)."""
FORK_NODES = 2000
"""Graphs of at least this many nodes run :data:`SAVE_HOOKS` in a worker thread while the rest is written
(:func:`qfx.graph.background.beside`); smaller ones run them in turn, where a thread would cost more than it saves."""


class QGraph:
    """A traced model: ``gm`` (torch.fx.GraphModule), its example inputs and per-node metadata.

    ``analyses`` names the analysis passes that have annotated the metadata;
    passes use it to check their requirements.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: tuple[Any, ...], analyses: Iterable[str] = ()) -> None:
        self.gm = gm
        self.example_inputs = tuple(example_inputs)
        self.analyses: set[str] = set(analyses)

    # ---- access -------------------------------------------------------------
    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.gm.graph.nodes)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.gm.named_modules())

    def meta(self, node: fx.Node | str) -> NodeMeta:
        if isinstance(node, str):
            node = self.node(node)
        return get_meta(node)

    def node(self, name: str) -> fx.Node:
        for n in self.gm.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")

    def metas(self) -> Iterator[NodeMeta]:
        for n in self.gm.graph.nodes:
            yield get_meta(n)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.gm(*args, **kwargs)

    def __str__(self) -> str:

        return to_table(self)

    # ---- copies and persistence ----------------------------------------------
    def copy(self) -> QGraph:
        """Deep copy: module state and graph are independent; the immutable records are shared."""
        new_g, val_map = copy_graph(self.gm.graph)
        for old, new in val_map.items():
            new.meta = dict(old.meta)
        gm = fx.GraphModule(private_root(self.gm, self.gm.graph), new_g, self.gm.__class__.__name__)
        gm.train(self.gm.training)
        return QGraph(gm, self.example_inputs, self.analyses)

    def save(self, directory: str | Path) -> Path:
        """Write ``graph.json`` + ``weights.safetensors`` (no pickle, see :mod:`graph.serialize`),
        ``inputs.pt`` (plain tensors, ``weights_only``) and ``meta.json``. Refuses to write through a
        symlink that leads out of ``directory``."""

        with no_gc():
            return self._save(Path(directory), dump_graph_module, to_dict, check_out_dir, save_tensors)

    def _save(self, directory: Path, dump: Any, to_dict: Any, check_out_dir: Any, save_tensors: Any) -> Path:
        d = check_out_dir(directory)
        d.mkdir(parents=True, exist_ok=True)

        def hooks() -> None:
            for hook in SAVE_HOOKS:
                hook(self, d)

        big = SAVE_HOOKS and len(self.gm.graph.nodes) >= FORK_NODES
        with beside(hooks) if big else Beside(hooks, thread=False):  # in a worker thread meanwhile
            spec, tensors = dump(self.gm)
            (d / "graph.json").write_bytes(compact_json(spec))
            save_tensors(tensors, d / "weights.safetensors")
            (d / "weights.pt").unlink(missing_ok=True)  # an older save's table would be ambiguous
            torch.save(self.example_inputs, d / "inputs.pt")
            (d / "meta.json").write_bytes(compact_json(to_dict(self)))
        return d

    @classmethod
    def load(cls, directory: str | Path, trust: bool = False) -> QGraph:
        """Rebuild a saved graph, validating every file first; no code from the files runs.

        ``trust=True`` also accepts module classes outside the allowlist (user leaf modules, any
        importable ``nn.Module`` subclass) and reads a legacy pickled ``model.pt``; only use it for files
        you trust. It never widens the functions, methods, values or paths a file may name.
        Raises :class:`~qfx.graph.serialize.SerializationError` naming the file and what is wrong.
        """

        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: missing: no such directory (a graph directory written by QGraph.save)")
        if not (d / "graph.json").is_file() and (d / "model.pt").is_file():
            if not trust:
                raise SerializationError(
                    f"{d / 'model.pt'} is a pickled GraphModule (old format): loading it could run arbitrary code; "
                    "re-save it, or load with trust=True (--trust-checkpoint) if you trust its origin"
                )
            gm = torch.load(d / "model.pt", weights_only=False)
            return cls(gm, _load_inputs(d), ())
        with no_gc():
            gm, metas, analyses = load_graph_dir(d, trust)
            for n in gm.graph.nodes:
                set_meta(n, metas[n.name])
        inputs = _load_inputs(d)
        check_inputs(d / "inputs.pt", inputs, gm, metas)
        return cls(gm, inputs, analyses)

    def to_networkx(self) -> Any:

        return to_networkx(self)


def _load_inputs(d: Path) -> tuple[Any, ...]:
    """``inputs.pt``: a tuple of plain tensors/values (``weights_only``), inside ``d``."""

    p = inside(d, "inputs.pt")
    try:
        inputs = torch.load(p, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as e:
        raise SerializationError(f"{p}: not plain tensors/values ({str(e).splitlines()[0] if str(e) else e!r})") from e
    if not isinstance(inputs, tuple):
        raise SerializationError(f"{p}: holds a {type(inputs).__name__}, not a tuple of example inputs")
    return inputs


def target_value(gm: nn.Module, n: fx.Node) -> Any:
    """The module (call_module) or attribute (get_attr) a node refers to; None for other nodes."""
    if n.op == "call_module":
        return gm.get_submodule(n.target)
    if n.op == "get_attr":
        obj: Any = gm
        for part in n.target.split("."):
            obj = getattr(obj, part)
        return obj
    return None


def node_parameters(gm: nn.Module, n: fx.Node) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs a node owns: its module's parameters, or a get_attr parameter."""
    v = target_value(gm, n)
    if isinstance(v, nn.Module):
        return list(v.named_parameters())
    if isinstance(v, nn.Parameter):
        return [("param", v)]
    return []


def referenced(gm: nn.Module, graph: fx.Graph) -> dict[str, Any]:
    """``{target: module or tensor}`` for every call_module / get_attr target of ``graph``."""
    return {n.target: target_value(gm, n) for n in graph.nodes if n.op in ("call_module", "get_attr")}


def copy_graph(graph: fx.Graph) -> tuple[fx.Graph, dict[fx.Node, fx.Node]]:
    """A new Graph with the same nodes (and codegen); returns it and the old->new node map."""
    new_g = fx.Graph()
    new_g._codegen = copy.copy(graph._codegen)
    val_map: dict[fx.Node, fx.Node] = {}
    out = new_g.graph_copy(graph, val_map)
    val_map[next(iter(reversed(graph.nodes)))] = new_g.output(out)
    return new_g, val_map


def private_root(gm: nn.Module, graph: fx.Graph) -> dict[str, Any]:
    """Private copies of every module/tensor ``graph`` refers to (tied parameters stay tied)."""
    memo: dict[int, Any] = {}
    return {k: copy_value(v, memo) for k, v in referenced(gm, graph).items()}


def init_meta(gm: fx.GraphModule) -> None:
    """Give every node of ``gm`` a fresh :class:`NodeMeta` (name, op, target, op_type)."""
    modules = dict(gm.named_modules())
    for n in gm.graph.nodes:
        set_meta(n, NodeMeta(name=n.name, op=n.op, target=target_name(n, modules), op_type=op_type(n, modules)))


def compact_json(obj: Any) -> bytes:
    """``json.dumps(obj, separators=(",", ":"))`` as UTF-8 (the same bytes, NaN/Infinity included, except that
    non-ASCII text stays UTF-8 instead of ``\\u`` escapes) in half the time: pydantic-core's serializer
    (json.dumps was a third of saving a big graph)."""
    return pydantic_core.to_json(obj, inf_nan_mode="constants")


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building 10^4 FX nodes otherwise triggers repeated
    full collections whose cost grows with the heap (superlinear tracing time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def trace(
    model: nn.Module,
    example_inputs: Sequence[Any] | torch.Tensor,
    leaf_modules: Sequence[type] = (),
    leaf_functions: Sequence[Callable] = (),
    concrete_args: dict[str, Any] | None = None,
) -> QGraph:
    """Symbolically trace ``model`` into a :class:`QGraph` without touching the caller's model.

    ``leaf_modules`` (classes) are kept as single ``call_module`` nodes;
    ``leaf_functions`` (module-level functions whose name does not start with
    ``_``, as torch.fx requires) are kept as single ``call_function`` nodes. A model that
    cannot be traced raises :class:`TracingError` naming the module and source
    line, and what to mark as leaf.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    with no_gc():
        return _trace(model, example_inputs, leaf_modules, leaf_functions, concrete_args)


def _trace(
    model: nn.Module,
    example_inputs: Sequence[Any],
    leaf_modules: Sequence[type],
    leaf_functions: Sequence[Callable],
    concrete_args: dict[str, Any] | None,
) -> QGraph:
    tracer = _Tracer(leaf_modules, leaf_functions)
    try:
        g = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        path, cls = tracer.failed_in or ("", type(model).__name__)
        inside = f"module {path!r} ({cls})" if path else f"the top-level forward of {cls}"
        hint = (
            f"mark it as a leaf: trace(model, x, leaf_modules=[{cls}])"
            if path
            else "move the untraceable code into a submodule or function and pass it as "
            "leaf_modules=[...] / leaf_functions=[...], or fix inputs with concrete_args={...}"
        )
        raise TracingError(
            f"cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}\n"
            f"  failed inside {inside} at {_user_frame(exc)}\n  hint: {hint}"
        ) from exc
    for n in g.nodes:  # annotations make torch 2.13 GraphModules unpicklable
        n.type = None
    # the graph gets private copies of the modules it uses: the caller's model is never shared
    gm = fx.GraphModule(private_root(tracer.root, g), g, type(model).__name__)
    gm.train(model.training)
    init_meta(gm)
    return QGraph(gm, tuple(example_inputs))
