"""Rebuilds for a search: a quantized graph per configuration at the cost of what the configuration changes.

A search quantizes one pristine graph hundreds of times. ``QuantizePass`` copies the graph, builds every
quantized module and generates and compiles the forward code each time; most of that repeats. A
:class:`Rebuilder` keeps, for one pristine graph:

- a **template** per structure (the set of nodes a configuration quantizes): the ``QuantizePass`` result,
  built and compiled the first time the structure is seen;
- a **quantized module** per node and precisions, holding its quantized weights once computed (the first
  inference forward caches them).

A rebuild resolves the configuration exactly as ``QuantizePass`` does (same checks, same errors), swaps the
configuration's modules into its structure's template (a dict write per node) and writes the quantized nodes'
records. The result equals ``QuantizePass(config, copy_weights=False)`` output for output and record for
record (``tests/test_quantize.py``), in eval mode.

A graph is lent, with an explicit lifetime: ``with rebuilder.lease(config) as q:`` gives a new ``QGraph`` around a
template's GraphModule that nobody else fills until the block exits (a template in use is never handed out
again: a second lease of the same structure, from any thread or nested in the first, gets another template);
its float parameters are the pristine graph's, read-only, and its quantized modules are shared. Use it inside
the block to evaluate, not to keep or train (``QuantizePass`` makes a graph to keep).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.fx as fx
import torch.nn as nn

from qfx.graph.meta import update_meta
from qfx.graph.registry import target_name
from qfx.graph.trace import QGraph, no_gc
from qfx.passes.transforms.quantize.config import QuantizeConfig
from qfx.passes.transforms.quantize.quantize_pass import QUANT_RULES, QuantizePass, QuantRule, node_roles, resolve

Slot = tuple[nn.Module, str, fx.Node]


class Rebuilder:
    """``rebuild(config) -> QGraph`` for one pristine graph (see the module docstring). Reads: the pristine
    graph's op types and "auto" calibration. Keeps at most ``templates`` structures, and quantized modules up to
    ``modules`` of them and ``cache_bytes`` of the quantized weights they may hold (a float copy of each
    parameter they own), least recently used dropped first."""

    def __init__(
        self, pristine: QGraph, templates: int = 16, modules: int = 4096, cache_bytes: int = 512 << 20
    ) -> None:
        self.pristine = pristine
        self._nodes = {n.name: n for n in pristine.gm.graph.nodes}
        self._float = dict(pristine.gm.named_modules())
        # quantized nodes -> the templates of that structure not lent now (graph, node -> (parent, attr, node))
        self._templates: OrderedDict[frozenset[str], list[tuple[QGraph, dict[str, Slot]]]] = OrderedDict()
        self._modules: OrderedDict[tuple[Any, ...], tuple[nn.Module, int]] = OrderedDict()  # with its bytes
        self._bytes = 0
        self._limits = (templates, modules, cache_bytes)
        self._lock = threading.Lock()  # the caches (threads share them; builds run outside the lock)

    @contextmanager
    def lease(self, config: QuantizeConfig | dict[str, Any]) -> Iterator[QGraph]:
        """The pristine graph quantized with ``config`` (eval mode), the caller's alone until the block exits."""
        cfg = config if isinstance(config, QuantizeConfig) else QuantizeConfig.model_validate(config)
        with no_gc():
            plan, _ = resolve(self.pristine, cfg)
            key = frozenset(plan)
            q, slots = t = self._take(key, cfg)
            try:
                for name, c in plan.items():
                    on = self._nodes[name]
                    rule = QUANT_RULES.lookup(on, self._float)
                    assert rule is not None
                    roles = node_roles(on, rule, c)
                    m = self._module(on, rule, roles)
                    parent, leaf, n = slots[name]
                    parent._modules[leaf] = m
                    update_meta(n, precision=rule.precision(roles), quantized=rule.qtype,
                                target=target_name(n, {n.target: m}))  # fmt: skip
            except BaseException:
                self._give(key, t)
                raise
        try:
            yield QGraph(q.gm, q.example_inputs, q.analyses)  # a new wrapper: memos keyed by graph stay exact
        finally:
            self._give(key, t)

    def _take(self, key: frozenset[str], cfg: QuantizeConfig) -> tuple[QGraph, dict[str, Slot]]:
        """A template of this structure that is not lent (built when every one is)."""
        with self._lock:
            free = self._templates.get(key)
            if free:
                self._templates.move_to_end(key)
                return free.pop()
        q = QuantizePass(cfg, copy_weights=False)(self.pristine).graph
        q.gm.eval()
        slots = {}
        for n in q.gm.graph.nodes:
            if n.name in key:
                path, _, leaf = n.target.rpartition(".")
                slots[n.name] = (q.gm.get_submodule(path), leaf, n)
        return q, slots

    def _give(self, key: frozenset[str], t: tuple[QGraph, dict[str, Slot]]) -> None:
        """A template back from its lease; at most ``templates`` structures are kept (least recently used go)."""
        with self._lock:
            self._templates.setdefault(key, []).append(t)
            self._templates.move_to_end(key)
            while len(self._templates) > self._limits[0]:
                self._templates.popitem(last=False)

    def _module(self, on: fx.Node, rule: QuantRule, roles: dict[str, Any]) -> nn.Module:
        key = (on.name, tuple(sorted(roles.items())))
        with self._lock:
            hit = self._modules.get(key)
            if hit is not None:
                self._modules.move_to_end(key)
                return hit[0]
        source = self._float[on.target] if on.op == "call_module" else on.target
        m = rule.build(source, on, roles)
        m.train(False)
        size = 4 * sum(p.numel() for p in m.parameters())
        with self._lock:
            if key in self._modules:  # a thread that built it first wins: one module per key
                return self._modules[key][0]
            self._modules[key] = (m, size)
            self._bytes += size
            while len(self._modules) > 1 and (len(self._modules) > self._limits[1] or self._bytes > self._limits[2]):
                self._bytes -= self._modules.popitem(last=False)[1][1]
        return m
