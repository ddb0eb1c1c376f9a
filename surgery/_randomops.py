"""Counting random operations as they run: the ground truth for "nothing drops".

Reading module types proves nothing about what a forward pass executes.
:class:`RandomOpCounter` is a ``TorchDispatchMode`` that sees every ATen op a
forward runs and records the ones that draw random numbers, with the path of
the module that was running when it did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

__all__ = ["RandomEvent", "RandomOpCounter", "count_random_ops", "is_random_op"]

_aten = torch.ops.aten

_RANDOM_PACKETS = {
    _aten.bernoulli,
    _aten.bernoulli_,
    _aten.native_dropout,
    _aten.rand,
    _aten.rand_like,
    _aten.randn,
    _aten.randn_like,
    _aten.randint,
    _aten.randint_like,
    _aten.randperm,
    _aten.normal,
    _aten.normal_,
    _aten.uniform_,
    _aten.exponential_,
    _aten.cauchy_,
    _aten.geometric_,
    _aten.log_normal_,
    _aten.multinomial,
    _aten.random_,
    _aten.poisson,
    _aten.binomial,
    _aten.rrelu_with_noise,
    _aten._standard_gamma,
    _aten._fused_dropout,
}
_RANDOM_NAMES = {str(packet) for packet in _RANDOM_PACKETS}


@dataclass(frozen=True)
class RandomEvent:
    """One random op executed: which op, and inside which module path."""

    op: str
    module: str


def is_random_op(
    func: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
) -> bool:
    """True if calling ``func`` with these arguments draws random numbers.

    Attention kernels count when their ``dropout_p`` is non-zero: on CPU they
    draw internally and no separate random op is dispatched.
    """
    packet = getattr(func, "overloadpacket", func)
    if packet in _RANDOM_PACKETS or str(packet) in _RANDOM_NAMES:
        return True
    schema = getattr(func, "_schema", None)
    if schema is None:
        return False
    for position, argument in enumerate(schema.arguments):
        if argument.name != "dropout_p":
            continue
        if kwargs and "dropout_p" in kwargs:
            value = kwargs["dropout_p"]
        elif position < len(args):
            value = args[position]
        else:
            value = argument.default_value
        return bool(value)
    return False


class RandomOpCounter(TorchDispatchMode):
    """Record every random ATen op executed inside the ``with`` block.

    Args:
        model: If given, each event is attributed to the innermost module of
            ``model`` that was running (its path; ``""`` is the root).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
        >>> x = torch.randn(2, 4)  # drawn outside: it would count too
        >>> with RandomOpCounter(model) as counter:
        ...     _ = model(x)
        >>> counter.count, counter.by_module()
        (1, {'1': 1})
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.events: list[RandomEvent] = []
        self._model = model
        self._stack: list[str] = []
        self._handles: list[RemovableHandle] = []

    @property
    def current_module(self) -> str:
        """Path of the innermost module of ``model`` running now (``""`` if none)."""
        return self._stack[-1] if self._stack else ""

    @property
    def count(self) -> int:
        """How many random ops ran."""
        return len(self.events)

    def by_module(self) -> dict[str, int]:
        """Random op count per module path."""
        return dict(Counter(event.module for event in self.events))

    def by_op(self) -> dict[str, int]:
        """Random op count per op name."""
        return dict(Counter(event.op for event in self.events))

    def __enter__(self) -> RandomOpCounter:
        if self._model is not None:
            self._track(self._model)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if is_random_op(func, args, kwargs):
            self.events.append(
                RandomEvent(str(func.overloadpacket), self.current_module)
            )
        return func(*args, **kwargs)

    def _track(self, model: nn.Module) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            return  # compiled code runs no Python hooks: ops count at the root
        for path, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(path)))
            self._handles.append(
                module.register_forward_hook(self._leave, always_call=True)
            )

    def _enter(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append(path)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()


@contextmanager
def _noop() -> Iterator[None]:
    yield


def count_random_ops(model: nn.Module, *args: Any, **kwargs: Any) -> RandomOpCounter:
    """Run ``model(*args, **kwargs)`` once and return what it drew at random.

    The model runs in whatever mode it is in; nothing about it is changed.

    Example:
        >>> model = nn.Sequential(nn.Dropout(0.5)).train()
        >>> count_random_ops(model, torch.ones(3)).count
        1
    """
    with RandomOpCounter(model) as counter:
        model(*args, **kwargs)
    return counter
