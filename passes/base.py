"""Pass protocol and Pipeline: typed passes that declare what they require and provide."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qfx.graph.trace import QGraph


class PassError(RuntimeError):
    """A pass cannot run: missing prerequisite or invalid input."""


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph, whether anything changed, and info."""

    graph: QGraph
    modified: bool
    info: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    """One step of a pipeline.

    ``requires``: analyses that must have run on the input graph.
    ``provides``: analyses this pass adds to ``graph.analyses``.
    ``in_place``: True when the pass annotates the input graph's metadata
    (analysis passes); transform passes return a new graph and leave the input alone.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    in_place: ClassVar[bool] = True

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
