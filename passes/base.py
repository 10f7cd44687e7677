"""Pass protocol and Pipeline: typed passes that declare what they require and provide."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from qfx.graph.meta import get_meta
from qfx.graph.trace import QGraph


class PassError(RuntimeError):
    """A pass cannot run: missing prerequisite or invalid input."""


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph, whether anything changed, and info."""

    graph: QGraph
    modified: bool
    info: dict[str, Any] = field(default_factory=dict)


def _check_option(owner: str, name: str, hint: Any, value: Any) -> None:
    """Simple typed options (bool/int/float/str/Literal and their Optional forms) are checked at construction."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        if value is None and type(None) in args:
            return
        simple = [a for a in args if a is not type(None)]
        if len(simple) == 1:
            _check_option(owner, name, simple[0], value)
        return
    if origin is Literal:
        if value not in args:
            raise TypeError(f"{owner}({name}={value!r}): allowed values are {', '.join(map(repr, args))}")
    elif hint in (bool, str) or (hint in (int, float) and not isinstance(value, bool)):
        ok = isinstance(value, (int, float)) if hint is float else isinstance(value, hint)
        if not ok:
            raise TypeError(f"{owner}({name}={value!r}): expected {hint.__name__}, got {type(value).__name__}")
    elif hint in (int, float):
        raise TypeError(f"{owner}({name}={value!r}): expected {hint.__name__}, got bool")


@functools.cache
def _options(cls: type) -> tuple[tuple[str, Any], ...]:
    """A pass class's init fields and their resolved types (resolved once per class: passes are built per trial)."""
    hints = get_type_hints(cls)
    return tuple((f.name, hints.get(f.name, Any)) for f in fields(cls) if f.init)


@dataclass(frozen=True)
class Pass(ABC):
    """One step of a pipeline: a frozen dataclass whose fields are its typed options.

    ``requires``: analyses that must have run on the input graph.
    ``provides``: analyses this pass adds; checked after it runs (every node's record must list them
    in ``analyses``, see :func:`qfx.graph.meta.annotate`), like torch.fx's ``ensures``.
    ``in_place``: True when the pass annotates the input graph's metadata and returns that graph
    (analysis passes); False for transforms, which return a new graph and leave the input alone.
    Both are enforced by ``__call__``.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    in_place: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name, hint in _options(type(self)):
            _check_option(type(self).__name__, name, hint, getattr(self, name))

    def check(self, available: Iterable[str]) -> None:
        missing = [r for r in self.requires if r not in set(available)]
        if missing:
            raise PassError(
                f"pass {self.name!r} requires {missing} but the graph only has "
                f"{sorted(available) or 'no analyses'}; run {', '.join(missing)} first"
            )

    def __call__(self, graph: QGraph) -> PassResult:
        self.check(graph.analyses)
        res = self.run(graph)
        if (res.graph is graph) != self.in_place:
            said = "annotates its input" if self.in_place else "returns a new graph"
            raise PassError(f"pass {self.name!r} says it {said} but did not")
        for a in self.provides:
            missing = [n.name for n in res.graph.gm.graph.nodes if a not in get_meta(n).analyses]
            if missing:
                raise PassError(f"pass {self.name!r} provides {a!r} but left {len(missing)} node(s) unannotated: "
                                f"{', '.join(missing[:5])}")  # fmt: skip
        res.graph.analyses.update(self.provides)
        return res

    @abstractmethod
    def run(self, graph: QGraph) -> PassResult:
        """Do the work; callers use ``__call__`` which checks requirements first."""


class Pipeline:
    """Chain passes: ``Pipeline([ShapePass(), FlopsPass()])(graph)``.

    Requirements are checked for the whole chain before anything runs. The
    result's ``info`` maps each pass name to its info dict.
    """

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def __call__(self, graph: QGraph) -> PassResult:
        avail = set(graph.analyses)
        for p in self.passes:
            p.check(avail)
            avail.update(p.provides)
        info: dict[str, Any] = {}
        modified = False
        for i, p in enumerate(self.passes):
            try:
                res = p(graph)
            except PassError:
                raise
            except Exception as e:
                before = ", ".join(q.name for q in self.passes[:i]) or "none"
                raise PassError(
                    f"pass {p.name!r} (step {i + 1} of {len(self.passes)}; ran before it: {before}) failed: "
                    f"{type(e).__name__}: {e}"
                ) from e
            graph = res.graph
            modified |= res.modified
            key = p.name if p.name not in info else f"{p.name}#{sum(k.split('#')[0] == p.name for k in info) + 1}"
            info[key] = res.info  # a pass that appears twice keeps both infos (name, name#2, ...)
        return PassResult(graph, modified, info)
