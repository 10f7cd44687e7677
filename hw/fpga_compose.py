"""The whole network's da4ml figures composed from per-layer traces, cached per layer (the search's FPGA metrics).

A search rebuilds the graph every trial, and a whole-network da4ml trace costs 0.2-0.5 s for jsc-s even with every
CMVM solution cached (Python objects per adder). But the traced logic of one deployment-IR layer depends only on
the layer itself (op, constants, precisions) and on the exact intervals, scale factors and constants of its input
elements; and da4ml's latency of an operation is the latest of its operands' plus a delay that depends on its own
intervals only. So each layer is traced once per (layer, input intervals) into arrays (operands, delay, LUT cost,
register bits per operation; :class:`LayerLogic`), and a configuration is composed from them with numpy:

- latency: a forward pass level by level (absolute latency = latest operand + the operation's own delay);
- the logic the whole trace keeps: a backward pass from the network's outputs (da4ml drops dead statements: an
  output of a layer that no later layer reads costs nothing);
- LUTs: the sum of the kept operations' costs; adder depth: the latest output;
- at a clock, da4ml's ``to_pipeline`` rules: an operation sits in stage ``floor(latency / cutoff)``, a value is
  registered once per stage boundary between its definition and its last use, every output once more, the input
  once (``Pipeline.reg_bits``), stages = the last output's stage + 1.

The result is da4ml's own figure for the whole trace, not a model of it (tests/test_fpga.py compares them on random
configurations of jsc-tiny, jsc-s and a CNN at several clocks), da4ml's retiming included (its bisection over
cutoffs when the stages leave more than one adder level of slack: the forward pass is redone at each cutoff with
da4ml's rule that an adder straddling a stage boundary starts at it). Where a layer cannot be traced alone the
caller falls back to the whole trace (:func:`composed_timing` returns None).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qfx.graph.cache import LockedLRU
from qfx.passes.export.ir import Layer

LAYER_MEMO = 2048  # traced layers kept (1,270 jsc-s layers: 21 MB of arrays)


@dataclass(frozen=True)
class LayerLogic:
    """One IR layer's da4ml logic as arrays, traced with its inputs at latency 0 (see the module docstring)."""

    in_elem: np.ndarray  # per comb input: the flat index of the layer's (concatenated) input element it reads
    opcode: np.ndarray
    cost: np.ndarray
    bits: np.ndarray  # register bits of the value (da4ml's minimal_kif of its interval)
    plan: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per dependency level >= 1: (ops, their operands
    # with the sentinel index len(ops) for none, their delays); views of who / whop
    ins: np.ndarray  # the comb input ops, in the order of in_elem
    who: np.ndarray  # every op with operands, by level
    whop: np.ndarray  # their operands (sentinel: len(ops))
    bump: np.ndarray  # per op: an adder whose latency da4ml pushes to a stage boundary it would straddle (retiming)
    const_user: np.ndarray  # per op: the op a constant feeds (its latency is its user's), else -1
    out_op: np.ndarray  # per flat output element: the op computing it; -1: a constant
    out_alias: np.ndarray  # per flat output element: the op the next layer's input stands for (a constant add's
    # operand: the next layer re-creates the add)
    out_bits: np.ndarray  # per flat output element: its register bits as a network output (shift and sign applied)
    out_spec: tuple[Any, ...]  # per flat output element, how the next layer sees it (:func:`_spec`)
    digest: str  # of out_spec: the identity of this layer's outputs as the next layer's input
    shape: tuple[int, ...]  # per-sample output shape


def _bits(qint: Any) -> int:
    from da4ml.types import minimal_kif

    return int(sum(minimal_kif(qint)))


def _inputs(specs: list[tuple[Any, ...]], shapes: list[tuple[int, ...]], hwconf: Any) -> tuple[list[Any], list[Any]]:
    """Fresh da4ml variables reproducing producers' outputs: ``(arrays per input, comb inputs with their flat
    element index)``. A relabelling by a power of two keeps a variable's id, so the comb input is the unscaled one."""
    from da4ml.trace import FixedVariable, FixedVariableArray

    arrays, comb_in, flat = [], [], 0
    for spec, shape in zip(specs, shapes, strict=True):
        vs = []
        for s in spec:
            if s[0] == "c":
                vs.append(FixedVariable.from_const(s[1], hwconf=hwconf))
                continue
            lo, hi, step, factor = s[1:5]
            v0 = FixedVariable(lo, hi, step, hwconf=hwconf, opr="new")
            comb_in.append((v0, flat + len(vs)))
            v = v0 * factor if factor != 1 else v0  # a power-of-two relabelling keeps the id: v0 is the comb input
            if s[0] == "a":  # a constant add the next operation may fold its own constant into (da4ml does)
                data, own = s[5:]
                v = v + data * factor
                v = v * (own / factor) if own != factor else v
            vs.append(v)
        flat += len(vs)
        arrays.append(FixedVariableArray(np.array(vs, dtype=object).reshape(shape), hwconf=hwconf))
    return arrays, comb_in


def _logic(comb: Any, out_vars: list[Any], in_elem: list[int], shape: tuple[int, ...]) -> LayerLogic:
    """The arrays of one layer's comb logic (traced with its inputs at latency 0)."""
    ops = comb.ops
    n = len(ops)
    opcode = np.array([op.opcode for op in ops], dtype=np.int16)
    operands = np.full((n, 3), -1, dtype=np.int32)
    for i, op in enumerate(ops):
        if op.opcode in (-1, 5):  # an input, a constant
            continue
        operands[i, 0] = op.id0
        operands[i, 1] = op.id1
        if abs(op.opcode) == 6:  # a multiplexer's key
            operands[i, 2] = op.data & 0xFFFFFFFF
    is_const = opcode == 5
    lat = np.array([op.latency for op in ops], dtype=np.float64)
    base = np.zeros(n)
    level = np.zeros(n, dtype=np.int64)
    const_user = np.full(n, -1, dtype=np.int32)
    for i in range(n):
        for j in operands[i]:
            if j < 0:
                continue
            if is_const[j]:  # da4ml gives a constant its user's latency: it does not delay the user
                const_user[j] = i
                continue
            base[i] = max(base[i], lat[j])
            level[i] = max(level[i], level[j] + 1)
    delay = np.where((opcode == -1) | is_const, 0.0, lat - base)
    who = np.argsort(level, kind="stable").astype(np.int32)
    cuts = np.searchsorted(level[who], np.arange(1, int(level.max(initial=0)) + 2))
    who = who[cuts[0] :] if len(cuts) else who[:0]
    whop = np.where(operands >= 0, operands, n).astype(np.int32)[who]
    dl = delay[who]
    cuts = cuts - (cuts[0] if len(cuts) else 0)
    plan = tuple((who[a:b], whop[a:b], dl[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    out_op = np.array([idx if v.low != v.high else -1 for idx, v in zip(comb.out_idxs, out_vars, strict=True)],
                      dtype=np.int32)  # fmt: skip
    spec = tuple(_spec(v) for v in out_vars)
    alias = np.array([operands[i, 0] if s[0] == "a" else i for i, s in zip(out_op, spec, strict=True)],
                     dtype=np.int32)  # fmt: skip
    return LayerLogic(
        in_elem=np.array([in_elem[op.id0] for op in ops if op.opcode == -1], dtype=np.int32),
        opcode=opcode,
        cost=np.array([op.cost for op in ops], dtype=np.float64),
        bits=np.array([_bits(op.qint) for op in ops], dtype=np.int64),
        plan=plan,
        ins=np.flatnonzero(opcode == -1).astype(np.int32),
        who=who,
        whop=whop,
        bump=np.isin(opcode, (0, 1, 7)),  # vadd, vsub, vmul: da4ml's cost_add latency, moved at a stage boundary
        const_user=const_user,
        out_op=out_op,
        out_alias=alias,
        out_bits=np.array([_bits(q) for q in comb.out_qint], dtype=np.int64),
        out_spec=spec,
        digest=hashlib.blake2b(repr(spec).encode(), digest_size=16).hexdigest(),
        shape=shape,
    )


def _spec(v: Any) -> tuple[Any, ...]:
    """How the next layer sees output variable ``v``: a constant; a value (its unscaled interval and its
    power-of-two factor); or a constant add on a value, which da4ml folds into a following constant add (the
    value's unscaled interval and factor, the constant in its units, the sum's factor). The factor is part of it:
    da4ml counts a constant's bits in its value's units (a normalized factor made jsc-s 0.2% off)."""
    if v.low == v.high:
        return ("c", _n(v.low))
    if v.opr == "cadd":
        p = v._from[0]
        u = p.unscaled
        return ("a", _n(u.low), _n(u.high), _n(u.step), _n(p._factor), _n(v._data), _n(v._factor))
    u = v.unscaled
    return ("v", _n(u.low), _n(u.high), _n(u.step), _n(v._factor))


def _n(d: Any) -> Any:
    return d.normalize()  # one spelling per value (0E-7 and 0.00 are the same zero): the key's digest


# ---------------------------------------------------------------- composition


@dataclass(frozen=True)
class Composed:
    """The whole network's figures, and per IR layer ``(name, LUTs, register bits, latest output latency)``: the
    layer's share of the logic the whole trace keeps and the register bits of the values it defines (the input
    register is the input layer's, the output register the last layer's); the shares sum to the totals."""

    luts: float
    depth: float
    ffs: int
    stages: int
    layers: tuple[tuple[str, float, int, float], ...] = ()


_LAYERS: LockedLRU[LayerLogic] = LockedLRU(LAYER_MEMO)


def layer_key(lay: Layer, in_shape: Any) -> tuple[Any, ...]:
    """A layer's identity for a memo: op, attributes, precisions, shape and a digest of its constants."""
    h = hashlib.blake2b(digest_size=16)
    for role in sorted(lay.params):
        h.update(role.encode())
        h.update(lay.params[role].detach().double().numpy().tobytes())
    prec = tuple(sorted((r, p.key()) for r, p in lay.precision.items()))
    return lay.op, json.dumps(lay.attrs, sort_keys=True, default=str), prec, tuple(in_shape), h.hexdigest()


def _layer_key(lay: Layer) -> tuple[Any, ...]:
    maps = tuple((r, _token(q)) for r, q in sorted(lay.quantizers.items()) if getattr(q, "widths", None) is not None)
    scalars = tuple(i for i in lay.inputs if not isinstance(i, str))
    return (*layer_key(lay, lay.out_shape or ()), maps, scalars)


def composed_timing(layers: list[Layer], levels: int | None) -> Composed | None:
    """The whole network's LUTs, adder depth, register bits and stages at ``levels`` adder levels per stage (None:
    combinational), composed from cached per-layer traces: exactly what ``trace_graph`` + ``to_pipeline`` give.
    None where the graph is not one the RTL back end takes (the whole trace then raises naming why) or a layer
    cannot be traced alone; ExportError naming a layer da4ml cannot express (as the whole trace does)."""
    from qfx.passes.export.da4ml_backend import DA4ML_OPS, _input_precision, exact_decimals

    ends = [lay for lay in layers if lay.op in ("input", "output")]
    if [lay.op for lay in ends] != ["input", "output"] or layers[0].op != "input" or len(ends[1].inputs) != 1:
        return None
    if any(lay.op not in DA4ML_OPS for lay in layers if lay.op not in ("input", "output")):
        return None
    p_in, q_in = _input_precision(layers)
    logic: dict[str, LayerLogic] = {}
    order: list[Layer] = []
    for lay in layers:
        if lay.op == "output":
            continue
        srcs = [i for i in lay.inputs if isinstance(i, str)]
        if lay.op == "input":
            maps = None if q_in is None or getattr(q_in, "widths", None) is None else _token(q_in)
            key: tuple[Any, ...] = ("input", tuple(lay.out_shape or ()), p_in.key(), maps)
        else:
            key = (_layer_key(lay), tuple(logic[s].digest for s in srcs))
        trace = exact_decimals(lambda lay=lay: _trace_one(lay, logic, p_in, q_in))  # type: ignore[misc]
        try:
            logic[lay.name] = _LAYERS.get_or(key, trace)
        except (AssertionError, ValueError, NotImplementedError, AttributeError):
            return None  # da4ml refuses this layer alone (e.g. no variable input): the whole trace decides
        order.append(lay)
    out_name = ends[1].inputs[0]
    if not isinstance(out_name, str) or logic.get(out_name) is None:
        return None
    return _compose(order, logic, out_name, levels)


def _token(q: Any) -> str:
    return hashlib.blake2b(q.widths.numpy().tobytes() + q.fracs.numpy().tobytes() + bytes([bool(q.signed)]),
                           digest_size=8).hexdigest()  # fmt: skip


def _trace_one(lay: Layer, logic: dict[str, LayerLogic], p_in: Any, q_in: Any) -> LayerLogic:
    from da4ml.trace import FixedVariableArrayInput, comb_trace

    from qfx.passes.export.da4ml_backend import DA4ML_OPS, _kif_maps

    shape = tuple(lay.out_shape[1:])  # type: ignore[index]
    if lay.op == "input":
        inp = FixedVariableArrayInput(shape)
        out = inp.quantize(*_kif_maps(p_in, q_in, shape), "WRAP", "TRN")
        comb = comb_trace(inp, out, keep_dead_inputs=True)
        return _logic(comb, list(np.ravel(out._vars)), list(range(math.prod(shape))), shape)
    srcs = [i for i in lay.inputs if isinstance(i, str)]
    hw = _hwconf()
    arrays, comb_in = _inputs([logic[s].out_spec for s in srcs], [logic[s].shape for s in srcs], hw)
    it = iter(arrays)
    ins = [next(it) if isinstance(i, str) else i for i in lay.inputs]
    out = DA4ML_OPS[lay.op](lay, ins, {})
    outs = list(np.ravel(out._vars))
    comb = comb_trace([v for v, _ in comb_in], outs, keep_dead_inputs=True)
    return _logic(comb, outs, [e for _, e in comb_in], shape)


def _hwconf() -> Any:
    from da4ml.trace import FixedVariableArrayInput

    return FixedVariableArrayInput((1,))._vars[0].hwconf


@dataclass
class _Wiring:
    """The layers of one configuration and how their input ops stand for ops of earlier layers."""

    lgs: list[LayerLogic]
    roots: list[tuple[np.ndarray, np.ndarray]]  # per layer, per input op: (root layer, root op)
    groups: list[list[tuple[int, np.ndarray]]]  # per layer: (root layer, positions among its input ops)
    kout: int  # the layer the network's output reads

    @property
    def last(self) -> LayerLogic:
        return self.lgs[self.kout]


def _wire(order: list[Layer], lgs: list[LayerLogic], out_name: str) -> _Wiring:
    """Resolve every layer's input ops to the earlier ops they stand for, through pass-through layers (a reshape's
    outputs are its input ops)."""
    pos = {lay.name: k for k, lay in enumerate(order)}
    roots: list[tuple[np.ndarray, np.ndarray]] = []
    groups: list[list[tuple[int, np.ndarray]]] = []
    for k, lay in enumerate(order):
        lg = lgs[k]
        if k == 0 or lay.op == "input":
            roots.append((np.full(len(lg.ins), -1), lg.ins))
            groups.append([])
            continue
        srcs = [pos[i] for i in lay.inputs if isinstance(i, str)]
        rl = np.concatenate([np.full(len(lgs[j].out_alias), j) for j in srcs])[lg.in_elem]
        ro = np.concatenate([lgs[j].out_alias for j in srcs])[lg.in_elem]
        for j in set(srcs):
            if order[j].op == "input":
                continue
            m = np.flatnonzero(rl == j)
            m = m[lgs[j].opcode[ro[m]] == -1]
            if len(m):
                at = np.searchsorted(lgs[j].ins, ro[m])
                rl[m], ro[m] = roots[j][0][at], roots[j][1][at]
        roots.append((rl, ro))
        groups.append([(int(j), np.flatnonzero(rl == j)) for j in np.unique(rl)])
    return _Wiring(lgs, roots, groups, pos[out_name])


def _forward(w: _Wiring, cut: float | None) -> list[np.ndarray] | None:
    """Every op's latency (latest operand + own delay), level by level; with ``cut`` (retiming) an adder that would
    straddle a multiple of it starts there, as da4ml traces it (None: da4ml refuses this cutoff)."""
    lats: list[np.ndarray] = []
    for k, lg in enumerate(w.lgs):
        lat = np.zeros(len(lg.opcode) + 1)
        ro = w.roots[k][1]
        for j, at in w.groups[k]:
            lat[lg.ins[at]] = lats[j][ro[at]]
        for idx, opnds, d in lg.plan:
            base = lat[opnds].max(1)
            v = base + d
            if cut is not None:
                hi = np.ceil(base / cut)
                cross = lg.bump[idx] & (np.ceil(v / cut) > hi)
                if cross.any():
                    if (d[cross] > cut).any():
                        return None  # da4ml asserts here: this cutoff is refused
                    v = np.where(cross, hi * cut + d, v)
            lat[idx] = v
        cu = np.flatnonzero(lg.const_user >= 0)
        lat[cu] = lat[lg.const_user[cu]]
        lat[-1] = 0.0
        lats.append(lat)
    return lats


def _liveness(w: _Wiring) -> list[np.ndarray]:
    """The logic the whole trace keeps: backward from the outputs, through input ops to their roots."""
    lives = [np.zeros(len(lg.opcode) + 1, dtype=bool) for lg in w.lgs]
    lives[w.kout][w.last.out_op[w.last.out_op >= 0]] = True
    for k in range(len(w.lgs) - 1, -1, -1):
        lg, live = w.lgs[k], lives[k]
        for idx, opnds, _ in reversed(lg.plan):
            live[opnds[live[idx]].ravel()] = True
        live[-1] = False
        ro = w.roots[k][1]
        for j, at in w.groups[k]:
            lives[j][ro[at[live[lg.ins[at]]]]] = True
    return lives


def _compose(order: list[Layer], logic: dict[str, LayerLogic], out_name: str, levels: int | None) -> Composed:
    names = [lay.name for lay in order]
    w = _wire(order, [logic[nm] for nm in names], out_name)
    lats = _forward(w, None)
    assert lats is not None
    lives = _liveness(w)
    per_luts = [float(lg.cost[live[:-1]].sum()) for lg, live in zip(w.lgs, lives, strict=True)]
    per_lat = [float(lat[lg.out_op[lg.out_op >= 0]].max(initial=0.0)) for lg, lat in zip(w.lgs, lats, strict=True)]
    outs = w.last.out_op >= 0
    depth = float(np.where(outs, lats[w.kout][np.maximum(w.last.out_op, 0)], 0.0).max(initial=0.0))
    luts = float(sum(per_luts))
    if levels is None:
        return Composed(luts, depth, 0, 0, tuple(zip(names, per_luts, [0] * len(names), per_lat, strict=True)))
    reg, n_stages, high, low, per_reg = _registers(w, lives, lats, levels)
    while high - low > 1:  # da4ml's retiming: the lowest cutoff that keeps the stage count, found by bisection
        cut = (high + low) // 2
        re = _forward(w, cut)
        if re is None:
            low = cut
            continue
        r2 = _registers(w, lives, re, cut)
        if r2[1] > n_stages:
            low = cut
        else:
            high = cut
            reg, per_reg = r2[0], r2[4]
    return Composed(luts, depth, reg, n_stages, tuple(zip(names, per_luts, per_reg, per_lat, strict=True)))


def _registers(w: _Wiring, lives: list[np.ndarray], lats: list[np.ndarray], cut: float) -> tuple[Any, ...]:
    """da4ml's ``to_pipeline`` at cutoff ``cut`` on the composed logic: (register bits, stages, and the bounds of
    its retiming bisection, register bits per layer)."""  # fmt: skip
    lgs, roots, groups, kout, last = w.lgs, w.roots, w.groups, w.kout, w.last
    c = cut + 1e-9
    outs = last.out_op >= 0
    out_lat = np.where(outs, lats[kout][np.maximum(last.out_op, 0)], 0.0)
    s_last = int(math.floor(float(out_lat.max(initial=0.0)) / c))
    stages = [np.floor(lat / c).astype(np.int64) for lat in lats]
    uses = [st.copy() for st in stages]
    for k in range(len(lgs) - 1, -1, -1):  # last use of every value, a later layer's use included
        lg, live, st, use = lgs[k], lives[k], stages[k], uses[k]
        if k == kout:
            o = last.out_op[outs]
            use[o] = np.maximum(use[o], s_last)
        m = live[lg.who]
        np.maximum.at(use, lg.whop[m].ravel(), np.repeat(st[lg.who[m]], 3))
        use[-1] = 0
        ro = roots[k][1]
        for j, at in groups[k]:
            at = at[live[lg.ins[at]]]
            np.maximum.at(uses[j], ro[at], use[lg.ins[at]])
    per = [0] * len(lgs)
    out_stage = np.zeros(s_last + 1)
    cover = np.zeros(s_last + 2, dtype=np.int64)
    for k, lg in enumerate(lgs):
        live = lives[k][:-1].copy()
        if k:
            live[lg.ins] = False  # an input op is its root's value
        else:
            per[k] += int(lg.bits[lg.ins][live[lg.ins]].sum())  # the pipeline's input register
        st, use, lat = stages[k][:-1], uses[k][:-1], lats[k][:-1]
        cross = np.flatnonzero(live & (use > st))
        per[k] += int((lg.bits[cross] * (use[cross] - st[cross])).sum())
        np.maximum.at(out_stage, st[cross], lat[cross])
        far = cross[use[cross] - st[cross] >= 2]
        np.add.at(cover, st[far] + 1, 1)
        np.add.at(cover, use[far], -1)
    per[kout] += int(last.out_bits.sum() + (last.out_bits * s_last)[~outs].sum())  # outputs (a constant: stage 0)
    copied = np.cumsum(cover)[: s_last + 1] > 0
    out_stage = np.maximum(out_stage, np.where(copied, cut * np.arange(s_last + 1), 0.0))
    st_out = np.floor(out_lat / c).astype(np.int64)
    final = np.where(st_out == s_last, out_lat, cut * s_last)
    out_stage[s_last] = final.max(initial=0.0)
    high = float((out_stage / np.arange(1, s_last + 2)).max())
    low = float(final.max(initial=0.0)) / (s_last + 1)
    return sum(per), s_last + 1, high, low, per
