"""Fast private copies of module trees (parameters and buffers cloned, sharing kept).

``copy.deepcopy`` of a large GraphModule walks every Python object generically; this
copies only what a module owns: its attribute dict, parameters, buffers, children and the
mutable containers (hooks) in its dict. Tied parameters stay tied (one memo per copy).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def _tensor(t: torch.Tensor | None, memo: dict[int, Any]) -> Any:
    if t is None:
        return None
    if id(t) not in memo:
        if issubclass(type(t), nn.Parameter):
            memo[id(t)] = nn.Parameter(t.detach().clone(), t.requires_grad)
        else:
            memo[id(t)] = t.detach().clone()
    return memo[id(t)]


_IMMUTABLE = {int, float, bool, str, tuple, type(None), bytes}
_OWN = {"_parameters", "_buffers", "_modules"}


def copy_module(m: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A private copy of ``m``; modules and tensors reached twice are copied once."""
    memo = {} if memo is None else memo
    if id(m) in memo:
        return memo[id(m)]
    q = m.__class__.__new__(m.__class__)
    memo[id(m)] = q
    d = {}
    for k, v in m.__dict__.items():
        t = type(v)
        if t in _IMMUTABLE or k in _OWN:
            pass
        elif issubclass(t, torch.Tensor):
            v = _tensor(v, memo)
        elif issubclass(t, (dict, list, set)):
            v = v.copy()  # hook dicts and other containers: not shared with the original
        d[k] = v
    d["_parameters"] = {k: _tensor(p, memo) for k, p in m._parameters.items()}
    d["_buffers"] = {k: _tensor(b, memo) for k, b in m._buffers.items()}
    d["_modules"] = {k: None if c is None else copy_module(c, memo) for k, c in m._modules.items()}
    q.__dict__.update(d)
    return q


def copy_value(v: Any, memo: dict[int, Any]) -> Any:
    """Copy a module or tensor (as referenced by a GraphModule target); other values as they are."""
    if isinstance(v, nn.Module):
        return copy_module(v, memo)
    if isinstance(v, torch.Tensor):
        return _tensor(v, memo)
    return v
