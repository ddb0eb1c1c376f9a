"""Discovery that proves itself: one train-mode forward, every random op accounted for.

:func:`observe` runs the model once on example inputs, in train mode, and
records each dropout function called (by the innermost module running) and
each random ATen op executed. Afterwards the model is exactly as it was:
training flags, parameters, buffers (batch-norm statistics too) and the
global RNG state are put back.

A random op is *dropout* when it ran inside a dropout function call or inside
a module that is itself a site; anything else (LayerDrop's ``torch.rand``,
noise layers) is reported as unclassified randomness, never as dropout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._calls import call_name, read_probability
from ._randomops import RandomOpCounter

__all__ = ["Observation", "call_model", "observe"]


@dataclass(frozen=True)
class ObservedCall:
    """A function that dropped, called by a module's own code during the forward.

    ``own`` is true for a dropout function (a call site of its own); false for
    a kernel that drops with its module's float attribute (``torch.lstm``,
    ``multi_head_attention_forward``).
    """

    module: str
    call: str  # "dropout#0", or the kernel's name
    p: float
    random_ops: int
    own: bool = True


@dataclass(frozen=True)
class UnclassifiedRandomness:
    """A random op that no dropout site explains."""

    module: str
    op: str
    count: int


@dataclass
class Observation:
    calls: list[ObservedCall] = field(default_factory=list)
    unclassified: list[UnclassifiedRandomness] = field(default_factory=list)
    random_ops: int = 0
    in_site_modules: dict[str, int] = field(default_factory=dict)


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` with a tensor, a tuple/list of positional arguments, or a dict."""
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


class _CallRecorder(TorchFunctionMode):
    """Notes each dropout function call, and which random ops ran inside one."""

    def __init__(self, counter: RandomOpCounter) -> None:
        super().__init__()
        self.counter = counter
        self.calls: list[ObservedCall] = []
        self.inside: set[int] = set()  # indices of counter.events inside a call
        self._counts: dict[tuple[str, str], int] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        module = self.counter.current_module
        name = call_name(func)
        if name is not None:
            index = self._counts.get((module, name), 0)
            self._counts[(module, name)] = index + 1
            p = _as_float(read_probability(name, args, kwargs))
            return self._run(func, args, kwargs, module, f"{name}#{index}", p, own=True)
        if _drops_inside(func, kwargs):
            p = _as_float(kwargs.get("dropout_p", kwargs.get("dropout", float("nan"))))
            kernel = str(getattr(func, "__name__", func))
            return self._run(func, args, kwargs, module, kernel, p, own=False)
        return func(*args, **kwargs)

    def _run(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        module: str,
        call: str,
        p: float,
        *,
        own: bool,
    ) -> Any:
        """Run ``func``; the random ops it runs are dropout, and its own."""
        before = len(self.counter.events)
        try:
            return func(*args, **kwargs)
        finally:
            after = len(self.counter.events)
            self.inside.update(range(before, after))
            self.calls.append(ObservedCall(module, call, p, after - before, own))


# Functions that apply dropout inside, with the probability of a float
# attribute site (nn.LSTM.dropout, nn.MultiheadAttention.dropout): their random
# ops are dropout, though they are no call site of their own.
_DROPPING_FUNCTIONS = frozenset(
    {"lstm", "gru", "rnn_tanh", "rnn_relu", "multi_head_attention_forward"}
)


def _drops_inside(func: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    if getattr(func, "__name__", "") in _DROPPING_FUNCTIONS:
        return True
    return bool(kwargs.get("dropout_p") or kwargs.get("dropout"))


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def observe(
    model: nn.Module, example_inputs: Any, *, site_modules: Sequence[str]
) -> Observation:
    """Run one train-mode forward and account for every random op it executes.

    Args:
        model: Left exactly as it was found.
        example_inputs: What to call it with (see :func:`call_model`).
        site_modules: Paths of modules that are sites themselves: random ops
            inside them are dropout.
    """
    with _untouched(model), torch.no_grad():
        model.train()
        with RandomOpCounter(model) as counter, _CallRecorder(counter) as recorder:
            call_model(model, example_inputs)

    sites = tuple(site_modules)
    unexplained: dict[tuple[str, str], int] = {}
    in_sites: dict[str, int] = {}
    for position, event in enumerate(counter.events):
        site = next((s for s in sites if _within(event.module, (s,))), None)
        if site is not None:
            in_sites[site] = in_sites.get(site, 0) + 1
        elif position not in recorder.inside:
            key = (event.module, event.op)
            unexplained[key] = unexplained.get(key, 0) + 1
    return Observation(
        calls=recorder.calls,
        unclassified=[
            UnclassifiedRandomness(module, op, count)
            for (module, op), count in unexplained.items()
        ],
        random_ops=counter.count,
        in_site_modules=in_sites,
    )


def _within(module: str, sites: tuple[str, ...]) -> bool:
    return any(module == site or module.startswith(f"{site}.") for site in sites)


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Put back training flags, buffers and the global RNG state afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
