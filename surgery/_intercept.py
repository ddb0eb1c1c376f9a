"""Controlling functional dropout calls at run time, for owners that do not trace.

While an owner's forward runs, a ``TorchFunctionMode`` sees each dropout
function it calls (``F.dropout``, ``torch.dropout_``, ``scaled_dot_product_attention``
...), counts them by name, and rewrites the arguments of the calls that are
gated or stripped. Calls made inside the owner's children are theirs, not the
owner's: each child suspends the owner's interception while it runs.

The settings live in a record on the owner, outside ``state_dict``, keyed by
the call's name and index (``"dropout#0"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from ._calls import SDPA, call_name, read_probability, read_training, with_arguments
from ._site import Mode, State

__all__ = [
    "CallState",
    "InterceptRecord",
    "ensure_record",
    "record_of",
    "uninstall_if_idle",
]

_RECORD = "_surgery_calls"
_SUSPENDS = "_surgery_suspends"


@dataclass
class CallState:
    """What surgery does to one functional call."""

    state: State
    mode: Mode | None
    rate: float
    original_p: float


@dataclass
class InterceptRecord:
    """The calls of one owner under control, and the live counters of a forward."""

    owner: nn.Module
    states: dict[str, CallState] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    suspended: int = 0
    active: list[TorchFunctionMode] = field(default_factory=list)


# The records of the owners whose forward is running, innermost last. A module
# that starts running inside one of them suspends every record but its own.
_RUNNING: list[InterceptRecord] = []


class _Interceptor(TorchFunctionMode):
    def __init__(self, record: InterceptRecord) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = call_name(func)
        record = self.record
        if name is None or record.suspended:
            return func(*args, **kwargs)
        index = record.counts.get(name, 0)
        record.counts[name] = index + 1
        state = record.states.get(f"{name}#{index}")
        if state is None or state.state == "original":
            return func(*args, **kwargs)
        return _call_under(state, name, func, args, kwargs)


def _call_under(
    state: CallState,
    name: str,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Make the call the way its state says."""
    silent = state.state == "stripped" or state.mode == "off"
    passed = float(read_probability(name, args, kwargs))
    # A rate that was never observed (NaN) means: whatever the call passes.
    rate = passed if math.isnan(state.rate) else state.rate
    if name == SDPA:
        p = 0.0 if silent or (state.mode == "train" and passed == 0.0) else rate
        args, kwargs = with_arguments(name, args, kwargs, p=p)
        return func(*args, **kwargs)
    if silent:
        return args[0] if args else kwargs["input"]
    training = True if state.mode == "on" else bool(read_training(name, args, kwargs))
    args, kwargs = with_arguments(name, args, kwargs, p=rate, training=training)
    return func(*args, **kwargs)


def _owner_pre_hook(module: nn.Module, args: Any) -> None:
    record: InterceptRecord | None = module.__dict__.get(_RECORD)
    if record is None:
        return
    record.counts.clear()
    record.suspended = 0
    mode = _Interceptor(record)
    mode.__enter__()
    record.active.append(mode)
    _RUNNING.append(record)


def _owner_post_hook(module: nn.Module, args: Any, output: Any) -> None:
    record: InterceptRecord | None = module.__dict__.get(_RECORD)
    if record is not None and record.active:
        record.active.pop().__exit__(None, None, None)
        if record in _RUNNING:
            _RUNNING.remove(record)


def _child_pre_hook(module: nn.Module, args: Any) -> None:
    for record in _RUNNING:
        if record.owner is not module:
            record.suspended += 1


def _child_post_hook(module: nn.Module, args: Any, output: Any) -> None:
    for record in _RUNNING:
        if record.owner is not module:
            record.suspended -= 1


def record_of(owner: nn.Module) -> InterceptRecord | None:
    """The owner's record, if its calls are intercepted."""
    record: InterceptRecord | None = owner.__dict__.get(_RECORD)
    return record


def ensure_record(owner: nn.Module) -> InterceptRecord:
    """The owner's record, installing the interception on first use."""
    record = record_of(owner)
    if record is not None:
        return record
    record = InterceptRecord(owner)
    owner.__dict__[_RECORD] = record
    owner.register_forward_pre_hook(_owner_pre_hook)
    owner.register_forward_hook(_owner_post_hook, always_call=True)
    for child in owner.children():
        # Counted so a child shared by two owners keeps its hooks until both
        # are done. The hooks travel with the child's hook dicts when surgery
        # replaces it.
        users = child.__dict__.get(_SUSPENDS, 0)
        if not users:
            child.register_forward_pre_hook(_child_pre_hook)
            child.register_forward_hook(_child_post_hook, always_call=True)
        child.__dict__[_SUSPENDS] = users + 1
    return record


def uninstall_if_idle(owner: nn.Module) -> None:
    """Remove the interception once no call of the owner is under control."""
    record: InterceptRecord | None = owner.__dict__.get(_RECORD)
    if record is None or any(s.state != "original" for s in record.states.values()):
        return
    del owner.__dict__[_RECORD]
    _remove_hooks(owner, _owner_pre_hook, _owner_post_hook)
    for child in owner.children():
        users = child.__dict__.pop(_SUSPENDS, 1) - 1
        if users > 0:
            child.__dict__[_SUSPENDS] = users
        else:
            _remove_hooks(child, _child_pre_hook, _child_post_hook)


def _remove_hooks(module: nn.Module, pre: object, post: object) -> None:
    for hooks, fn in ((module._forward_pre_hooks, pre), (module._forward_hooks, post)):
        for key in [k for k, v in hooks.items() if v is fn]:
            del hooks[key]
            module._forward_hooks_always_called.pop(key, None)
