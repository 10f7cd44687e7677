"""The quantize transform pass: returns a new graph with quantized replacements."""

from __future__ import annotations

import copy
import logging
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from graph.meta import META_KEY, TensorPrecision, get_meta
from graph.registry import OpRegistry
from graph.trace import QGraph, copy_graph, private_root, referenced
from passes.base import Pass, PassError, PassResult
from passes.transforms.quantize.config import IntegerQ, NoQuant, QuantizeConfig
from passes.transforms.quantize.modules import QConv1d, QConv2d, QFunction, QLinear, clone_as, quantized_module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantRule:
    """How to replace one op: ``build(module_or_fn, roles) -> nn.Module`` (sharing the source's parameters)``."""

    kind: str  # "module" or "function"
    qtype: str
    roles: tuple[str, ...]
    build: Callable[..., nn.Module]


QUANT_RULES: OpRegistry[QuantRule] = OpRegistry("quantize")
_P = ("data_in", "weight", "bias")
QUANT_RULES.register(nn.Linear)(QuantRule("module", "QLinear", _P, quantized_module(QLinear)))
QUANT_RULES.register(nn.Conv1d)(QuantRule("module", "QConv1d", _P, quantized_module(QConv1d)))
QUANT_RULES.register(nn.Conv2d)(QuantRule("module", "QConv2d", _P, quantized_module(QConv2d)))


def _fn_rule(qtype: str, unsigned_out: bool = False) -> QuantRule:
    return QuantRule(
        "function",
        qtype,
        ("data_in",),
        lambda fn, roles: QFunction(fn, {"data_in": roles["data_in"]}, unsigned_out),
    )


QUANT_RULES.register(F.relu, torch.relu, "relu")(_fn_rule("QReLU", unsigned_out=True))
QUANT_RULES.register(nn.ReLU)(
    QuantRule("module", "QReLU", ("data_in",), lambda m, roles: QFunction(F.relu, roles, True))
)
QUANT_RULES.register(operator.add, torch.add, "add")(_fn_rule("QAdd"))
QUANT_RULES.register(operator.sub, torch.sub, "sub")(_fn_rule("QSub"))
QUANT_RULES.register(operator.mul, torch.mul, "mul")(_fn_rule("QMul"))
QUANT_RULES.register(operator.matmul, torch.matmul, "matmul")(_fn_rule("QMatmul"))
QUANT_RULES.register(torch.bmm, "bmm")(_fn_rule("QBmm"))

# op type -> tensor roles its quantized form has
TYPE_ROLES: dict[str, tuple[str, ...]] = {
    **{t: _P for t in ("linear", "conv1d", "conv2d")},
    **{t: ("data_in",) for t in ("relu", "add", "sub", "mul", "matmul", "bmm")},
}
QUANTIZABLE_TYPES = set(TYPE_ROLES)


def _rule_key(n: fx.Node, modules: dict[str, nn.Module]) -> Any:
    """Target to look up, seeing through replacements made by an earlier run."""
    if n.op == "call_module":
        m = modules[n.target]
        if isinstance(m, QFunction):
            return m.fn
        for cls in type(m).__mro__:
            if cls in QUANT_RULES:
                return cls
        return type(m)
    if n.op == "call_function":
        return n.target
    if n.op == "call_method":
        return n.target
    return None


def quantizable_nodes(graph: QGraph) -> dict[str, str]:
    """``{node name: op type}`` for every node that has a quantized replacement."""
    modules = graph.modules
    out = {}
    for n in graph.gm.graph.nodes:
        key = _rule_key(n, modules)
        if key is not None and QUANT_RULES.get(key) is not None:
            out[n.name] = get_meta(n).op_type
    return out


def resolve(graph: QGraph, cfg: QuantizeConfig) -> tuple[dict[str, Any], list[str]]:
    """Per-node config by priority name > regex > type > default; validates names and types.

    Returns (plan, notes). Unknown node names / unsupported op types raise ``PassError``.
    """
    qn = quantizable_nodes(graph)
    all_names = {n.name for n in graph.gm.graph.nodes}
    notes: list[str] = []
    bad = [k for k in cfg.by_name if k not in all_names]
    if bad:
        raise PassError(f"quantize config names unknown node(s) {bad}; quantizable nodes: {', '.join(qn) or 'none'}")
    nq = [k for k in cfg.by_name if k not in qn and not isinstance(cfg.by_name[k], NoQuant)]
    if nq:
        raise PassError(
            f"node(s) {nq} have no quantized form (op types {sorted({get_meta(graph.node(k)).op_type for k in nq})});"
            f" quantizable nodes: {', '.join(qn)}"
        )
    bad = [k for k in cfg.by_type if k not in QUANTIZABLE_TYPES]
    if bad:
        raise PassError(
            f"quantize config has unsupported op type(s) {bad}; supported: {', '.join(sorted(QUANTIZABLE_TYPES))}"
        )
    present = set(qn.values())
    notes += [f"no node of type {t!r} in this graph" for t in cfg.by_type if t not in present]
    regexes = [(re.compile(p), c) for p, c in cfg.by_regex.items()]
    for p, _ in regexes:
        if not any(p.fullmatch(n) for n in qn):
            notes.append(f"regex {p.pattern!r} matches no quantizable node")
    plan: dict[str, Any] = {}
    for name, t in qn.items():
        c = cfg.by_name.get(name)
        if c is None:
            c = next((c for p, c in regexes if p.fullmatch(name)), None)
        if c is None:
            c = cfg.by_type.get(t, cfg.default)
        if not isinstance(c, NoQuant) and not getattr(c, "bypass", False):
            plan[name] = c
    if not plan:
        notes.append("this config quantizes nothing: every quantizable node resolves to 'NA' or bypass")
    return plan, notes


class QuantizePass(Pass):
    """Reads: op types (from trace). Writes: a NEW graph with quantized modules and node precision.

    The input graph, its modules and the config are never modified. ``copy_weights=False``
    shares the float parameters of the input graph read-only (fast rebuilds for PTQ search);
    keep the default when the result will be trained.
    Info: ``quantized`` (node -> qtype), ``notes``, ``plan`` (node -> config dict).
    """

    name = "quantize"
    in_place = False

    def __init__(self, config: QuantizeConfig | dict[str, Any], copy_weights: bool = True) -> None:
        self.config = config if isinstance(config, QuantizeConfig) else QuantizeConfig.model_validate(config)
        self.copy_weights = copy_weights

    def run(self, graph: QGraph) -> PassResult:
        plan, notes = resolve(graph, self.config)
        for n in notes:
            log.info("quantize: %s", n)
        old = graph.gm
        new_g, val_map = copy_graph(old.graph)
        root = private_root(old, old.graph) if self.copy_weights else referenced(old, old.graph)
        modules = dict(old.named_modules())
        done: dict[str, str] = {}
        for on in old.graph.nodes:
            nn_ = val_map.get(on)
            if nn_ is None:
                continue
            m = copy.copy(get_meta(on))
            nn_.meta[META_KEY] = m
            c = plan.get(on.name)
            if c is None:
                if m.quantized:  # previously quantized node now left in float: restore the float op
                    self._restore(nn_, on, modules, root)
                    m.quantized, m.precision = None, {}
                continue
            key = _rule_key(on, modules)
            rule = QUANT_RULES.get(key)
            assert rule is not None
            roles = {r: p for r, p in c.roles().items() if r in rule.roles}
            if rule.kind == "module":  # Linear / Conv / ReLU module: same target, new module
                root[on.target] = rule.build(root[on.target], roles)  # root is already private when copying
            else:  # function, method, or a QFunction made by an earlier run
                fn = getattr(torch.Tensor, key) if on.op == "call_method" else key
                tgt = on.target if on.op == "call_module" else f"q__{on.name}"
                root[tgt] = rule.build(fn, roles)
                nn_.op, nn_.target = "call_module", tgt
            if isinstance(c, IntegerQ) and rule.qtype == "QReLU":
                roles = {"data_in": TensorPrecision("uinteger", roles["data_in"].width, roles["data_in"].frac)}
            m.precision = roles
            m.quantized = rule.qtype
            done[on.name] = rule.qtype
        new_g.lint()
        gm = fx.GraphModule(root, new_g, old.__class__.__name__)
        gm.train(old.training)
        res = QGraph(gm, graph.example_inputs, graph.analyses)
        info = {"quantized": done, "notes": notes, "plan": {k: v.model_dump() for k, v in plan.items()}}
        return PassResult(res, modified=bool(done), info=info)

    @staticmethod
    def _restore(new: fx.Node, old: fx.Node, modules: dict[str, nn.Module], root: dict[str, Any]) -> None:
        m = modules[old.target]
        if isinstance(m, QFunction) and str(old.target).startswith("q__"):
            new.op, new.target = "call_function", m.fn
            root.pop(old.target, None)
        elif isinstance(m, QFunction):  # was an nn.ReLU module
            root[old.target] = nn.ReLU()
        else:
            base = next(c for c in type(m).__mro__[1:] if c in (nn.Linear, nn.Conv1d, nn.Conv2d))
            f = clone_as(base, m)
            for k in ("qx", "qw", "qb", "_cache"):
                f.__dict__.pop(k, None)
            root[old.target] = f
