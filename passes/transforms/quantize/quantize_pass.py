"""The quantize transform pass: returns a new graph with quantized replacements, per call site.

``QUANT_RULES`` maps an op target to a :class:`QuantRule` (op type, tensor roles, float
class, output signedness, builder). Everything else — the quantizable op types and their
roles (``quant_types()``), the nodes a graph can quantize, restoring float ops — is derived
from it through the one registry lookup (``QUANT_RULES.lookup(node, modules)``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import torch.fx as fx
import torch.nn as nn

from qfx.graph.meta import TensorPrecision, get_meta, update_meta
from qfx.graph.registry import OP_TYPES, OpKey, OpRegistry, inplace_call, target_name
from qfx.graph.trace import QGraph, copy_graph, no_gc, private_root, referenced
from qfx.passes.base import Pass, PassError, PassResult
from qfx.passes.transforms.quantize.config import NoQuant, QuantizeConfig
from qfx.passes.transforms.quantize.formats import AUTO_FRAC, unsigned_variant
from qfx.passes.transforms.quantize.modules import (
    QBatchNorm1d,
    QBatchNorm2d,
    QConv1d,
    QConv2d,
    QFunction,
    QLinear,
    QReLU,
)

log = logging.getLogger(__name__)

PARAM_ROLES = ("data_in", "weight", "bias")


@dataclass(frozen=True)
class QuantRule:
    """How one op target is quantized.

    ``op_type``: canonical op type (config key); ``qtype``: name of the quantized form;
    ``roles``: tensor roles it quantizes; ``float_cls``: the float module class (module ops)
    or ``None`` (function/method calls, wrapped in :class:`QFunction`); ``arg_roles``: role
    of each positional argument of a function form; ``unsigned_out``: the output is
    non-negative and quantized with the unsigned variant (ReLU).
    """

    op_type: str
    qtype: str
    roles: tuple[str, ...]
    float_cls: type[nn.Module] | None = None
    qcls: Any = None
    arg_roles: tuple[str | None, ...] = ()
    unsigned_out: bool = False

    def build(self, source: nn.Module | OpKey, node: fx.Node, roles: dict[str, TensorPrecision]) -> nn.Module:
        roles = self.precision(roles)  # the unsigned variant where the output is non-negative
        if self.float_cls is not None:
            return self.qcls.from_float(source, roles)
        op = node.op if node.op != "call_module" else source.node_op  # type: ignore[union-attr]
        target = node.target if node.op != "call_module" else source.target  # type: ignore[union-attr]
        return QFunction(
            target, op, self.arg_roles, roles, self.unsigned_out, inplace=inplace_call(target, node.kwargs)
        )

    def precision(self, roles: dict[str, TensorPrecision]) -> dict[str, TensorPrecision]:
        """What the node's metadata records: unsigned integer where the output is unsigned."""
        if not self.unsigned_out:
            return roles
        return {r: unsigned_variant(p) for r, p in roles.items()}


QUANT_RULES: OpRegistry[QuantRule] = OpRegistry("quantize")


def register_module_rule(
    op_type: str, qcls: Any, unsigned_out: bool = False, roles: tuple[str, ...] = PARAM_ROLES
) -> None:
    """A float module class replaced by ``qcls`` (a subclass with ``from_float``/``to_float``)."""
    QUANT_RULES.register(qcls.float_cls)(
        QuantRule(op_type, qcls.__name__, roles, qcls.float_cls, qcls, unsigned_out=unsigned_out)
    )


def register_function_rule(
    op_type: str, qtype: str, arg_roles: tuple[str | None, ...], unsigned_out: bool = False, keys: tuple = ()
) -> None:
    """Function/method forms of ``op_type`` (default: every non-class alias in ``OP_TYPES``). Module classes
    are refused: they need a quantized module class (:func:`register_module_rule`)."""
    classes = [k for k in keys if isinstance(k, type)]
    if classes:
        raise TypeError(
            f"register_function_rule({op_type!r}): {classes} are module classes; register them with "
            "register_module_rule(op_type, QuantizedClass)"
        )
    keys = keys or tuple(k for k in OP_TYPES[op_type] if not isinstance(k, type))
    roles = tuple(dict.fromkeys(r for r in arg_roles if r)) or ("data_in",)
    QUANT_RULES.register(*keys)(QuantRule(op_type, qtype, roles, None, None, arg_roles, unsigned_out))


register_module_rule("linear", QLinear)
register_module_rule("conv1d", QConv1d)
register_module_rule("conv2d", QConv2d)
register_module_rule("batch_norm1d", QBatchNorm1d)
register_module_rule("batch_norm2d", QBatchNorm2d)
register_module_rule("relu", QReLU, unsigned_out=True, roles=("data_in",))
register_function_rule("linear", "QLinear", ("data_in", "weight", "bias"), keys=(OP_TYPES["linear"][1],))
register_function_rule("linear", "QLinear", ("bias", "data_in", "weight"), keys=OP_TYPES["linear"][2:])
register_function_rule("relu", "QReLU", ("data_in",), unsigned_out=True)
register_function_rule("add", "QAdd", ("data_in", "data_in"))
register_function_rule("sub", "QSub", ("data_in", "data_in"))
register_function_rule("mul", "QMul", ("data_in", "data_in"))
register_function_rule("matmul", "QMatmul", ("data_in", "data_in"))
register_function_rule("bmm", "QBmm", ("data_in", "data_in"))


def quant_types() -> dict[str, tuple[str, ...]]:
    """Quantizable op type -> the tensor roles its quantized forms have (derived from QUANT_RULES)."""
    out: dict[str, tuple[str, ...]] = {}
    for k in QUANT_RULES.keys():
        r = QUANT_RULES.get(k)
        assert r is not None
        out[r.op_type] = tuple(dict.fromkeys(out.get(r.op_type, ()) + r.roles))
    return out


def quantizable_nodes(graph: QGraph) -> dict[str, str]:
    """``{node name: op type}`` for every node that has a quantized replacement."""
    modules = graph.modules
    out = {}
    for n in graph.gm.graph.nodes:
        rule = QUANT_RULES.lookup(n, modules)
        if rule is not None:
            out[n.name] = rule.op_type
    return out


def resolve(graph: QGraph, cfg: QuantizeConfig) -> tuple[dict[str, Any], list[str]]:
    """Per-node config by priority name > regex > type > default; validates names and types.

    Returns (plan, notes). Unknown node names / unsupported op types raise ``PassError``.
    """
    qn = quantizable_nodes(graph)
    types = quant_types()
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
    bad = [k for k in cfg.by_type if k not in types]
    if bad:
        raise PassError(f"quantize config has unsupported op type(s) {bad}; supported: {', '.join(sorted(types))}")
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


def _site_target(node: fx.Node, uses: Counter[str], root: dict[str, Any]) -> str:
    """The module path this call site owns: its own target, or a fresh one when the module is shared."""
    if uses[node.target] == 1:
        return node.target
    t = f"{node.target}__{node.name}"
    while t in root:
        t += "_"
    return t


def _resolve_auto(node: fx.Node, roles: dict[str, TensorPrecision]) -> dict[str, TensorPrecision]:
    """Replace "auto" fracs by the node's calibrated frac at that width (CalibrationPass)."""
    if all(p.frac != AUTO_FRAC for p in roles.values()):
        return roles
    calib = get_meta(node).calibration or {}
    out = {}
    for r, p in roles.items():
        if p.frac == AUTO_FRAC:
            if r not in calib:
                raise PassError(
                    f"node {node.name!r}: {r}_frac_width = 'auto' needs calibration; run CalibrationPass(inputs) "
                    "on the graph first (the search and transform commands do), or give a number"
                )
            p = replace(p, frac=calib[r][p.width])
        out[r] = p
    return out


def node_roles(node: fx.Node, rule: QuantRule, c: Any) -> dict[str, TensorPrecision]:
    """The precisions node config ``c`` gives the roles ``rule`` quantizes, "auto" fracs resolved."""
    return _resolve_auto(node, {r: p for r, p in c.roles().items() if r in rule.roles})


@dataclass(frozen=True)
class QuantizePass(Pass):
    """Reads: op types (from trace). Writes: a NEW graph with quantized modules and node precision.

    Works per call site: a module called at several nodes gets one quantized module per
    quantized node (sharing the float parameters), so quantizing one call leaves the others'
    outputs bit-identical. In-place float ops keep their semantics. The input graph, its
    modules, its metadata and the config are never modified. ``copy_weights=False`` shares
    the float parameters of the input graph read-only (fast rebuilds for PTQ search); keep
    the default when the result will be trained.
    Info: ``quantized`` (node -> qtype), ``notes``, ``plan`` (node -> config dict).
    """

    name = "quantize"
    in_place = False

    config: QuantizeConfig | dict[str, Any]
    copy_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.config, QuantizeConfig):  # validated once; the caller's dict is not kept
            object.__setattr__(self, "config", QuantizeConfig.model_validate(self.config))

    def run(self, graph: QGraph) -> PassResult:
        with no_gc():  # a rebuild allocates many small cyclic objects: full collections would double its time
            return self._run(graph)

    def _run(self, graph: QGraph) -> PassResult:
        plan, notes = resolve(graph, self.config)
        for n in notes:
            log.info("quantize: %s", n)
        old = graph.gm
        new_g, val_map = copy_graph(old.graph)
        root = private_root(old, old.graph) if self.copy_weights else referenced(old, old.graph)
        modules = dict(old.named_modules())
        uses = Counter(n.target for n in old.graph.nodes if n.op == "call_module")
        done: dict[str, str] = {}
        changed: dict[fx.Node, dict[str, Any]] = {}  # node -> record changes, written once the module exists
        for on in old.graph.nodes:
            new = val_map[on]
            new.meta = dict(on.meta)  # records are immutable: sharing them shares no state
            c = plan.get(on.name)
            if c is None:
                if get_meta(on).quantized:  # previously quantized node now left in float: restore the float op
                    self._restore(new, on, modules, root)
                    changed[new] = {"quantized": None, "precision": {}}
                continue
            rule = QUANT_RULES.lookup(on, modules)
            assert rule is not None
            roles = node_roles(on, rule, c)
            source = root[on.target] if on.op == "call_module" else on.target  # root: private when copying
            if rule.float_cls is not None or on.op == "call_module":  # module op, or a QFunction from a prior run
                tgt = _site_target(on, uses, root)
            else:
                tgt = f"q__{on.name}"
                while tgt in root:
                    tgt += "_"
            root[tgt] = rule.build(source, on, roles)
            new.op, new.target = "call_module", tgt
            changed[new] = {"precision": rule.precision(roles), "quantized": rule.qtype}
            done[on.name] = rule.qtype
        new_g.lint()
        gm = fx.GraphModule(root, new_g, old.__class__.__name__)
        gm.train(old.training)
        new_modules = dict(gm.named_modules())
        for n, ch in changed.items():  # the record describes what runs now; op_type stays the float op's
            update_meta(n, op=n.op, target=target_name(n, new_modules), **ch)
        res = QGraph(gm, graph.example_inputs, graph.analyses)
        info = {"quantized": done, "notes": notes, "plan": {k: v.model_dump() for k, v in plan.items()}}
        return PassResult(res, modified=bool(done) or bool(changed), info=info)

    @staticmethod
    def _restore(new: fx.Node, old: fx.Node, modules: dict[str, nn.Module], root: dict[str, Any]) -> None:
        m = modules[old.target]
        if isinstance(m, QFunction):
            new.op, new.target = m.node_op, m.target
            root.pop(old.target, None)
        else:
            root[old.target] = m.to_float()
